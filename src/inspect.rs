//! What a request body says about its call: the model, whether the answer is streamed, the last
//! user message, the tools it defines and the tool results it carries back.
//!
//! Runs on the proxy's copy of the body after the body has gone upstream, so it never delays the
//! request. A body that is not JSON (or not an object) yields only what the path said. Tool
//! results are the ones this request adds to the conversation (after the model's last turn), so
//! a long conversation does not record every earlier result again on every call.

use serde::{Deserialize, Serialize};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::scan::units::{request_units, Unit};
use crate::usage::{Caps, Shape};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub stream: bool,
    /// Messages (or contents, or input items) in the request.
    pub messages: usize,
    /// The start of the last user message's text.
    pub last_user_text: Option<String>,
    pub tools: Vec<ToolDefinition>,
    pub tool_results: Vec<ToolResult>,
    /// Every text of the request with where it was, for security scanning (`caps.scan`).
    pub units: Vec<Unit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    /// The tool's parameter schema, kept only when content is kept whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// `tool_call_id` (OpenAI chat), `call_id` (Responses), `tool_use_id` (Anthropic), the
    /// function response's id or, lacking one, its name (Gemini).
    pub tool_call_id: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Parses the body in place (simd-json unescapes into the buffer, so the caller's copy is used
/// up). `caps` bounds the text kept; without content only the model and stream are read.
pub fn inspect_request(body: &mut [u8], shape: Shape, caps: Caps) -> RequestInfo {
    if body.is_empty() {
        return RequestInfo::default();
    }
    if !caps.content && !caps.scan {
        // Only two top-level fields are wanted: read their spans rather than build the body's DOM.
        if let Some(info) = model_and_stream(body) {
            return info;
        }
    }
    let Ok(value) = crate::dom::parse(body) else {
        return RequestInfo::default();
    };
    let mut info = RequestInfo {
        model: str_at(&value, "model").map(str::to_owned),
        stream: value.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
        ..RequestInfo::default()
    };
    if caps.scan {
        info.units = request_units(&value, shape);
    }
    if !caps.content || !value.is_object() {
        return info;
    }
    match shape {
        Shape::Chat => chat(&value, &mut info, caps),
        Shape::Responses => responses(&value, &mut info, caps),
        Shape::Messages => messages(&value, &mut info, caps),
        Shape::Gemini => gemini(&value, &mut info, caps),
        Shape::Opaque => {}
    }
    info
}

/// `model` and `stream` from the top-level members' bytes; None when the body is not one object
/// or the model is written with escapes (the full parse then reads it).
fn model_and_stream(body: &[u8]) -> Option<RequestInfo> {
    let (_, members) = crate::usage::json::object_members(body)?;
    let value = |name: &str| <[_]>::iter(&members).rev().find(|m| m.is(body, name)).map(|m| &body[m.value.clone()]);
    let model = match value("model") {
        Some([b'"', inner @ .., b'"']) if !inner.contains(&b'\\') => Some(String::from_utf8(inner.to_vec()).ok()?),
        Some([b'"', ..]) => return None,
        _ => None,
    };
    Some(RequestInfo { model, stream: value("stream") == Some(b"true"), ..RequestInfo::default() })
}

fn str_at<'v>(v: &'v BorrowedValue<'v>, key: &str) -> Option<&'v str> {
    v.get(key).and_then(|x| x.as_str())
}

fn array<'v>(v: &'v BorrowedValue<'v>, key: &str) -> &'v [BorrowedValue<'v>] {
    v.get(key).and_then(|x| x.as_array()).map_or(&[], |a| a.as_slice())
}

/// Text of a content field: a string, or the text of its parts (`text` / `input_text` parts).
fn text_of(content: &BorrowedValue<'_>) -> String {
    if let Some(s) = content.as_str() {
        return s.to_string();
    }
    let mut out = String::new();
    for part in content.as_array().into_iter().flatten() {
        if let Some(t) = part.get("text").and_then(|t| t.as_str()) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(t);
        }
    }
    out
}

/// Text of a tool result's content, whatever its form (string, parts, or any JSON).
fn result_text(content: Option<&BorrowedValue<'_>>) -> String {
    match content {
        None => String::new(),
        Some(c) if c.as_str().is_some() => c.as_str().unwrap_or_default().to_string(),
        Some(c) if c.as_array().is_some_and(|a| a.iter().all(|p| p.get("text").is_some())) => text_of(c),
        Some(c) => c.encode(),
    }
}

fn capped(mut s: String, cap: usize) -> (String, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    (s, true)
}

impl RequestInfo {
    fn user_text(&mut self, text: String, caps: Caps) {
        self.last_user_text = Some(capped(text, caps.text).0);
    }

    fn tool(&mut self, name: Option<&str>, schema: Option<&BorrowedValue<'_>>, caps: Caps) {
        if let Some(name) = name {
            // A schema is kept only when whole content is (its cap is then the content cap).
            let schema = schema.filter(|_| caps.text > crate::capture::content::SUMMARY_BYTES);
            self.tools.push(ToolDefinition {
                name: name.to_string(),
                schema: schema.and_then(|s| serde_json::to_value(s).ok()),
            });
        }
    }

    fn result(&mut self, id: &str, content: String, caps: Caps) {
        let (content, truncated) = capped(content, caps.arguments);
        self.tool_results.push(ToolResult { tool_call_id: id.to_string(), content, truncated });
    }
}

fn chat(v: &BorrowedValue<'_>, info: &mut RequestInfo, caps: Caps) {
    let messages = array(v, "messages");
    info.messages = messages.len();
    if let Some(m) = messages.iter().rev().find(|m| str_at(m, "role") == Some("user")) {
        info.user_text(m.get("content").map(text_of).unwrap_or_default(), caps);
    }
    for t in array(v, "tools") {
        // `{"type":"function","function":{"name","parameters"}}`; custom tools carry `custom`.
        let f = t.get("function").or_else(|| t.get("custom"));
        info.tool(f.and_then(|f| str_at(f, "name")), f.and_then(|f| f.get("parameters")), caps);
    }
    let last_assistant = messages.iter().rposition(|m| str_at(m, "role") == Some("assistant"));
    for m in &messages[last_assistant.map_or(0, |i| i + 1)..] {
        if str_at(m, "role") == Some("tool") {
            let id = str_at(m, "tool_call_id").unwrap_or("");
            info.result(id, m.get("content").map(text_of).unwrap_or_default(), caps);
        }
    }
}

fn responses(v: &BorrowedValue<'_>, info: &mut RequestInfo, caps: Caps) {
    match v.get("input") {
        Some(s) if s.as_str().is_some() => {
            info.messages = 1;
            info.user_text(s.as_str().unwrap_or_default().to_string(), caps);
        }
        Some(items) => {
            let items = items.as_array().map_or(&[][..], |a| a.as_slice());
            info.messages = items.len();
            let is_user = |i: &BorrowedValue<'_>| str_at(i, "role") == Some("user");
            if let Some(m) = items.iter().rev().find(|i| is_user(i)) {
                info.user_text(m.get("content").map(text_of).unwrap_or_default(), caps);
            }
            // Results after the model's last turn (its function calls or its message).
            let model_turn = |i: &BorrowedValue<'_>| {
                str_at(i, "type") == Some("function_call") || str_at(i, "role") == Some("assistant")
            };
            let from = items.iter().rposition(model_turn).map_or(0, |i| i + 1);
            for item in &items[from..] {
                if str_at(item, "type") == Some("function_call_output") {
                    let id = str_at(item, "call_id").unwrap_or("");
                    info.result(id, result_text(item.get("output")), caps);
                }
            }
        }
        None => {}
    }
    for t in array(v, "tools") {
        let name = str_at(t, "name").or_else(|| str_at(t, "type"));
        info.tool(name, t.get("parameters"), caps);
    }
}

fn messages(v: &BorrowedValue<'_>, info: &mut RequestInfo, caps: Caps) {
    let messages = array(v, "messages");
    info.messages = messages.len();
    let last_user = messages.iter().rev().find(|m| str_at(m, "role") == Some("user"));
    if let Some(m) = last_user {
        info.user_text(m.get("content").map(text_of).unwrap_or_default(), caps);
        // Tool results come back as `tool_result` blocks of the next user turn.
        if messages.last().is_some_and(|l| std::ptr::eq(l, m)) {
            for block in m.get("content").and_then(|c| c.as_array()).into_iter().flatten() {
                if str_at(block, "type") == Some("tool_result") {
                    let id = str_at(block, "tool_use_id").unwrap_or("");
                    info.result(id, result_text(block.get("content")), caps);
                }
            }
        }
    }
    for t in array(v, "tools") {
        info.tool(str_at(t, "name"), t.get("input_schema"), caps);
    }
}

fn gemini(v: &BorrowedValue<'_>, info: &mut RequestInfo, caps: Caps) {
    let contents = array(v, "contents");
    info.messages = contents.len();
    let is_model = |c: &BorrowedValue<'_>| str_at(c, "role") == Some("model");
    if let Some(c) = contents.iter().rev().find(|c| !is_model(c)) {
        let parts = c.get("parts");
        info.user_text(parts.map(text_of).unwrap_or_default(), caps);
    }
    let from = contents.iter().rposition(is_model).map_or(0, |i| i + 1);
    for c in &contents[from..] {
        for part in array(c, "parts") {
            if let Some(r) = part.get("functionResponse").or_else(|| part.get("function_response")) {
                let id = str_at(r, "id").or_else(|| str_at(r, "name")).unwrap_or("");
                info.result(id, result_text(r.get("response")), caps);
            }
        }
    }
    for t in array(v, "tools") {
        let decls = t.get("functionDeclarations").or_else(|| t.get("function_declarations"));
        for d in decls.and_then(|d| d.as_array()).into_iter().flatten() {
            let schema = d.get("parameters").or_else(|| d.get("parametersJsonSchema"));
            info.tool(str_at(d, "name"), schema, caps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps { content: true, text: 100, arguments: 100, scan: false };

    fn info(body: &str, shape: Shape) -> RequestInfo {
        inspect_request(&mut body.as_bytes().to_vec(), shape, CAPS)
    }

    #[test]
    fn reads_model_and_stream_wherever_they_are() {
        let i = info(r#"{"model":"gpt-4o","stream":true}"#, Shape::Chat);
        assert_eq!((i.model.as_deref(), i.stream), (Some("gpt-4o"), true));
        let late = r#"{"messages":[{"role":"user","content":"say \"model\": x"}], "stream" : false, "model" : "claude-sonnet-4-5"}"#;
        let i = info(late, Shape::Messages);
        assert_eq!((i.model.as_deref(), i.stream), (Some("claude-sonnet-4-5"), false));
        assert_eq!(i.last_user_text.as_deref(), Some("say \"model\": x"));
        assert_eq!(info(r#"{"messages":[{"model":"nested"}]}"#, Shape::Chat).model, None);
    }

    #[test]
    fn a_key_given_twice_is_read_as_its_last_value_with_or_without_content() {
        // Providers' JSON parsers keep the last value of a repeated key; so does the proxy, on
        // the full parse (content or scanning on) as on the span read (usage only).
        let body = r#"{"model":"gpt-4o-mini","stream":false,"messages":[],"model":"gpt-4o","stream":true}"#;
        for caps in [CAPS, Caps::USAGE_ONLY, Caps { scan: true, ..Caps::USAGE_ONLY }] {
            let i = inspect_request(&mut body.as_bytes().to_vec(), Shape::Chat, caps);
            assert_eq!((i.model.as_deref(), i.stream), (Some("gpt-4o"), true), "{caps:?}");
        }
    }

    #[test]
    fn without_content_the_fields_are_read_from_their_spans() {
        let read = |body: &str| inspect_request(&mut body.as_bytes().to_vec(), Shape::Chat, Caps::USAGE_ONLY);
        for body in [
            r#"{"messages":[{"role":"user","content":"say \"model\": x"}], "stream" : true, "model" : "gpt-4o"}"#,
            r#"{"model":"gpt-\u0034o","stream":true}"#,
            r#"{"model":5,"stream":false}"#,
            "not json",
        ] {
            let full = inspect_request(&mut body.as_bytes().to_vec(), Shape::Chat, CAPS);
            let fast = read(body);
            assert_eq!((fast.model, fast.stream), (full.model, full.stream), "{body}");
        }
    }

    #[test]
    fn non_json_yields_nothing() {
        for body in ["", "not json", "[1,2]", r#"{"model":5}"#, "{\"model\":\"x\""] {
            assert_eq!(info(body, Shape::Chat).model, None, "{body}");
        }
    }

    #[test]
    fn openai_chat_tools_and_the_new_results() {
        let body = r#"{"model":"gpt-4o","messages":[
            {"role":"user","content":"weather?"},
            {"role":"assistant","tool_calls":[{"id":"call_0","type":"function","function":{"name":"w","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_0","content":"old"},
            {"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"w","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":[{"type":"text","text":"sunny"}]}],
            "tools":[{"type":"function","function":{"name":"w","parameters":{"type":"object"}}}]}"#;
        let i = info(body, Shape::Chat);
        assert_eq!(i.messages, 5);
        assert_eq!(i.last_user_text.as_deref(), Some("weather?"));
        assert_eq!(i.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["w"]);
        assert_eq!(
            i.tool_results,
            vec![ToolResult { tool_call_id: "call_1".into(), content: "sunny".into(), truncated: false }]
        );
    }

    #[test]
    fn responses_input_forms() {
        let i = info(r#"{"model":"gpt-5","input":"hi there"}"#, Shape::Responses);
        assert_eq!(i.last_user_text.as_deref(), Some("hi there"));
        let body = r#"{"input":[{"role":"user","content":[{"type":"input_text","text":"q"}]},
            {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
            {"type":"function_call_output","call_id":"c1","output":"42"}],
            "tools":[{"type":"function","name":"f","parameters":{}},{"type":"web_search"}]}"#;
        let i = info(body, Shape::Responses);
        assert_eq!(i.last_user_text.as_deref(), Some("q"));
        assert_eq!(i.tool_results[0].tool_call_id, "c1");
        assert_eq!(i.tool_results[0].content, "42");
        assert_eq!(i.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["f", "web_search"]);
    }

    #[test]
    fn anthropic_tool_results_in_the_last_user_turn() {
        let body = r#"{"model":"claude-sonnet-4-5","messages":[
            {"role":"user","content":"go"},
            {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"w","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"done"}]},{"type":"text","text":"and?"}]}],
            "tools":[{"name":"w","input_schema":{"type":"object"}}]}"#;
        let i = info(body, Shape::Messages);
        assert_eq!(i.last_user_text.as_deref(), Some("and?"));
        assert_eq!(i.tool_results[0].tool_call_id, "toolu_1");
        assert_eq!(i.tool_results[0].content, "done");
        assert_eq!(i.tools[0].name, "w");
        assert!(i.tools[0].schema.is_none(), "schemas are kept only with whole content");
    }

    #[test]
    fn gemini_function_responses_and_declarations() {
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"weather"}]},
            {"role":"model","parts":[{"functionCall":{"name":"w","args":{}}}]},
            {"role":"user","parts":[{"functionResponse":{"name":"w","response":{"t":21}}}]}],
            "tools":[{"functionDeclarations":[{"name":"w","parameters":{"type":"OBJECT"}}]}]}"#;
        let i = info(body, Shape::Gemini);
        assert_eq!(i.tool_results[0].tool_call_id, "w");
        assert_eq!(i.tool_results[0].content, r#"{"t":21}"#);
        assert_eq!(i.tools[0].name, "w");
    }

    #[test]
    fn text_is_capped_at_a_character_boundary() {
        let long = format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "é".repeat(80));
        let t = info(&long, Shape::Chat).last_user_text.unwrap();
        assert!(t.len() <= 100 && t.chars().all(|c| c == 'é'));
    }
}
