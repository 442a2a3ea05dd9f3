//! The texts of a call, each with where it was.
//!
//! A request is walked generically: every string value under the conversation (`messages`,
//! `input`, `contents`, and `prompt` of the legacy completions API), the system prompt
//! (`system`, `instructions`, `systemInstruction`) and the tool definitions (`tools`) is one unit, whatever the content part's type, so text in a
//! part the proxy does not know is still scanned. A message's tool results (OpenAI `tool`
//! messages, Responses `function_call_output` items, Anthropic `tool_result` blocks, Gemini
//! `functionResponse` parts) are `tool_result` units; the rest of a message is
//! `request_message`.
//!
//! A unit is `new` when this call adds it: after the model's last turn in the conversation (or
//! everything, system prompt and tools included, when the model has not spoken yet). Findings are
//! reported for new units only, so a conversation does not report the same secret on every call
//! that resends it; old units are still scanned, so that a record never keeps their secrets.

use serde::{Deserialize, Serialize};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::usage::{ResponseFacts, Shape};

/// Where a text was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    System,
    ToolDefinition,
    RequestMessage,
    ToolResult,
    Answer,
    ToolCall,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Place::System => "system",
            Place::ToolDefinition => "tool_definition",
            Place::RequestMessage => "request_message",
            Place::ToolResult => "tool_result",
            Place::Answer => "answer",
            Place::ToolCall => "tool_call",
        }
    }
}

/// One text to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub place: Place,
    pub index: Option<u32>,
    pub text: String,
    /// Added by this call (see the module documentation).
    pub new: bool,
}

/// The units of a parsed request body (none when it is not a JSON object).
pub fn request_units(value: &BorrowedValue<'_>, shape: Shape) -> Vec<Unit> {
    let mut units = Vec::new();
    let Some(object) = value.as_object() else { return units };
    let conversation = ["messages", "input", "contents", "prompt"].iter().find_map(|k| object.get(*k));
    let items: &[BorrowedValue<'_>] = match conversation {
        Some(v) => v.as_array().map_or(&[], |a| a.as_slice()),
        None => &[],
    };
    let model_turn = items.iter().rposition(is_model_turn);
    let first_call = model_turn.is_none();
    for key in ["system", "instructions", "systemInstruction", "system_instruction"] {
        if let Some(v) = object.get(key) {
            strings(v, &mut |s| push(&mut units, Place::System, None, s, first_call));
        }
    }
    for (i, tool) in object.get("tools").and_then(|t| t.as_array()).into_iter().flatten().enumerate() {
        strings(tool, &mut |s| push(&mut units, Place::ToolDefinition, Some(i as u32), s, first_call));
    }
    // The Responses API's `input` (and the embeddings and completions APIs' `input` and
    // `prompt`) may be one string.
    if let Some(s) = conversation.and_then(|c| c.as_str()) {
        push(&mut units, Place::RequestMessage, Some(0), s, true);
    }
    let from = model_turn.map_or(0, |i| i + 1);
    for (i, item) in items.iter().enumerate() {
        let new = i >= from;
        let index = Some(i as u32);
        if is_tool_result(item, shape) {
            strings(item, &mut |s| push(&mut units, Place::ToolResult, index, s, new));
            continue;
        }
        // Tool results inside a message: Anthropic blocks, Gemini parts; the rest is message text.
        let parts = item.get("content").or_else(|| item.get("parts"));
        match parts.and_then(|p| p.as_array()) {
            Some(parts) => {
                for part in parts {
                    let place = if is_tool_result(part, shape) { Place::ToolResult } else { Place::RequestMessage };
                    strings(part, &mut |s| push(&mut units, place, index, s, new));
                }
                for (key, v) in item.as_object().into_iter().flatten() {
                    if key != "content" && key != "parts" {
                        strings(v, &mut |s| push(&mut units, Place::RequestMessage, index, s, new));
                    }
                }
            }
            None => strings(item, &mut |s| push(&mut units, Place::RequestMessage, index, s, new)),
        }
    }
    units
}

/// The units of a response: the answer's text, and each tool call's arguments.
pub fn response_units(facts: &ResponseFacts) -> Vec<Unit> {
    let mut units = Vec::new();
    push(&mut units, Place::Answer, None, &facts.text, true);
    for (i, call) in facts.tool_calls.iter().enumerate() {
        let index = Some(i as u32);
        // Arguments are JSON text: scan their string values unescaped, or the text when it is not
        // JSON (a cut stream).
        let mut bytes = call.arguments.as_bytes().to_vec();
        let parsed = crate::dom::parse(&mut bytes);
        match &parsed {
            Ok(v) => strings(v, &mut |s| push(&mut units, Place::ToolCall, index, s, true)),
            Err(_) => push(&mut units, Place::ToolCall, index, &call.arguments, true),
        }
    }
    units
}

fn push(units: &mut Vec<Unit>, place: Place, index: Option<u32>, text: &str, new: bool) {
    // Role names, ids and types are short; nothing a detector finds is under 6 bytes.
    if text.len() >= 6 && !is_encoded_blob(text) {
        units.push(Unit { place, index, text: text.to_string(), new });
    }
}

/// An image, audio clip or file sent inline (base64, or a `data:` URL): not text a person or a
/// model reads, and often megabytes long.
fn is_encoded_blob(text: &str) -> bool {
    let b = text.as_bytes();
    if b.starts_with(b"data:") && memchr::memmem::find(&b[..b.len().min(100)], b";base64,").is_some() {
        return true;
    }
    b.len() >= 1024
        && b[..1024].iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// Members whose values are protocol, not content: roles, types, ids.
const NOT_CONTENT: [&str; 8] = ["role", "type", "id", "tool_call_id", "call_id", "tool_use_id", "status", "model"];

/// Every string value under `v` (object keys, and the values of `NOT_CONTENT` members, excluded).
fn strings<'v>(v: &'v BorrowedValue<'v>, f: &mut dyn FnMut(&'v str)) {
    if let Some(s) = v.as_str() {
        f(s);
    } else if let Some(a) = v.as_array() {
        a.iter().for_each(|x| strings(x, f));
    } else if let Some(o) = v.as_object() {
        for (key, x) in o.iter() {
            if !NOT_CONTENT.contains(&key.as_ref()) {
                strings(x, f);
            }
        }
    }
}

fn str_at<'v>(v: &'v BorrowedValue<'v>, key: &str) -> Option<&'v str> {
    v.get(key).and_then(|x| x.as_str())
}

/// A turn the model wrote: an assistant message, a Responses function call, a Gemini model turn.
fn is_model_turn(item: &BorrowedValue<'_>) -> bool {
    matches!(str_at(item, "role"), Some("assistant" | "model")) || str_at(item, "type") == Some("function_call")
}

fn is_tool_result(v: &BorrowedValue<'_>, shape: Shape) -> bool {
    match shape {
        Shape::Chat => str_at(v, "role") == Some("tool"),
        Shape::Responses => str_at(v, "type") == Some("function_call_output"),
        Shape::Messages => str_at(v, "type") == Some("tool_result"),
        Shape::Gemini => v.get("functionResponse").or_else(|| v.get("function_response")).is_some(),
        Shape::Opaque => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(body: &str, shape: Shape) -> Vec<(Place, Option<u32>, String, bool)> {
        let mut bytes = body.as_bytes().to_vec();
        let v = crate::dom::parse(&mut bytes).unwrap();
        request_units(&v, shape).into_iter().map(|u| (u.place, u.index, u.text, u.new)).collect()
    }

    #[test]
    fn chat_history_is_old_and_the_new_turn_is_new() {
        let body = r#"{"model":"gpt-4o","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":"first question"},
            {"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"fetch","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"page says hello"}],
            "tools":[{"type":"function","function":{"name":"fetch","description":"Fetches a page"}}]}"#;
        let u = units(body, Shape::Chat);
        assert!(u.contains(&(Place::RequestMessage, Some(1), "first question".into(), false)));
        assert!(u.contains(&(Place::ToolResult, Some(3), "page says hello".into(), true)));
        assert!(u.contains(&(Place::ToolDefinition, Some(0), "Fetches a page".into(), false)));
    }

    #[test]
    fn anthropic_blocks_and_gemini_parts() {
        let body = r#"{"system":"Be kind always","messages":[
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"the result text"}]},
                                      {"type":"text","text":"and a question"}]}]}"#;
        let u = units(body, Shape::Messages);
        assert!(u.contains(&(Place::System, None, "Be kind always".into(), true)));
        assert!(u.contains(&(Place::ToolResult, Some(0), "the result text".into(), true)));
        assert!(u.contains(&(Place::RequestMessage, Some(0), "and a question".into(), true)));
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"weather please"}]},
            {"role":"model","parts":[{"functionCall":{"name":"w","args":{}}}]},
            {"role":"user","parts":[{"functionResponse":{"name":"w","response":{"text":"sunny and warm"}}}]}]}"#;
        let u = units(body, Shape::Gemini);
        assert!(u.contains(&(Place::RequestMessage, Some(0), "weather please".into(), false)));
        assert!(u.contains(&(Place::ToolResult, Some(2), "sunny and warm".into(), true)));
    }

    #[test]
    fn responses_input_string_and_items() {
        assert_eq!(
            units(r#"{"input":"hello there"}"#, Shape::Responses),
            [(Place::RequestMessage, Some(0), "hello there".into(), true)]
        );
        let body = r#"{"input":[{"role":"user","content":"look it up"},
            {"type":"function_call","call_id":"c","name":"f","arguments":"{}"},
            {"type":"function_call_output","call_id":"c","output":"the output"}]}"#;
        let u = units(body, Shape::Responses);
        assert!(u.contains(&(Place::ToolResult, Some(2), "the output".into(), true)));
        assert!(u.contains(&(Place::RequestMessage, Some(0), "look it up".into(), false)));
    }

    #[test]
    fn inline_files_are_not_text() {
        let image = format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(200));
        let raw = "QUJD".repeat(400);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{image}"}}}},{{"type":"text","text":"what is this?"}}]}},{{"role":"user","content":"{raw}"}}]}}"#
        );
        let u = units(&body, Shape::Chat);
        assert_eq!(u, [(Place::RequestMessage, Some(0), "what is this?".to_string(), true)]);
    }

    #[test]
    fn response_tool_arguments_are_unescaped() {
        let facts = ResponseFacts {
            text: "done".into(),
            tool_calls: vec![crate::usage::ToolCall {
                id: None,
                name: "sh".into(),
                arguments: r#"{"command":"rm -rf \/ --no-preserve-root"}"#.into(),
                truncated: false,
            }],
            ..ResponseFacts::default()
        };
        let u = response_units(&facts);
        assert_eq!(u[0].place, Place::ToolCall);
        assert_eq!(u[0].text, "rm -rf / --no-preserve-root");
    }
}
