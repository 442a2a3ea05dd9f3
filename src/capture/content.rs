//! What a record keeps of a call's content, by its retention level.
//!
//! - `none`: no content at all (`request`, `response` and `tools` are null).
//! - `metadata`: short summaries: the start of the last user message and of the answer, tool
//!   names, tool call arguments and tool results cut to `SUMMARY_BYTES`.
//! - `full`: the request body and the response body as the client received it, each up to the
//!   content cap (`capture.max_content_bytes`) and marked `truncated` past it, and tools whole
//!   (schemas included).
//!
//! Provider credentials travel in headers and the query (`Authorization`, `x-api-key`,
//! `x-goog-api-key`, `?key=`), which no record holds at any level: only bodies are kept.

use serde::Serialize;
use serde_json::{json, Value};

use crate::inspect::{RequestInfo, ToolDefinition, ToolResult};
use crate::scan::Redactor;
use crate::usage::{Caps, ResponseFacts, ToolCall};

use super::Retention;

/// Length of a summary under `metadata`.
pub const SUMMARY_BYTES: usize = 256;

/// How much of the content the response inspector and the request inspection must read: what
/// this retention level keeps, or, when the call is scanned for security findings, everything
/// up to the content cap (summaries are then cut here, after secrets were replaced, so a cut
/// never leaves part of a secret behind).
pub fn caps(retention: Retention, max_content: usize, scan: bool) -> Caps {
    match (retention, scan) {
        (_, true) => Caps { content: true, text: max_content, arguments: max_content, scan: true },
        (Retention::None, false) => Caps::USAGE_ONLY,
        (Retention::Metadata, false) => {
            Caps { content: true, text: SUMMARY_BYTES, arguments: SUMMARY_BYTES, scan: false }
        }
        (Retention::Full, false) => Caps { content: true, text: max_content, arguments: max_content, scan: false },
    }
}

/// A body kept up to the content cap, while it passes.
#[derive(Debug, Default)]
pub struct BodyCopy {
    bytes: Vec<u8>,
    cap: usize,
    pub truncated: bool,
}

impl BodyCopy {
    pub fn new(cap: usize) -> BodyCopy {
        BodyCopy { bytes: Vec::new(), cap, truncated: false }
    }

    pub fn push(&mut self, piece: &[u8]) {
        let room = self.cap - self.bytes.len();
        if piece.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&piece[..piece.len().min(room)]);
    }

    /// The body, detected secrets replaced; withheld when one of `expected` (the secrets found
    /// in this body's text) could not be located in it (split across stream events).
    fn to_value(&self, secrets: &Redactor, expected: &[&str]) -> Value {
        if secrets.is_empty() {
            return json!({ "body": String::from_utf8_lossy(&self.bytes), "truncated": self.truncated });
        }
        match secrets.body(&self.bytes, expected) {
            (clean, true) => json!({ "body": String::from_utf8_lossy(&clean), "truncated": self.truncated }),
            (_, false) => json!({
                "body": null,
                "truncated": self.truncated,
                "withheld": "a detected secret could not be replaced in the stored body",
            }),
        }
    }
}

/// The secrets the scanner found: all of them, and which are in the request's and the
/// response's text.
pub struct Secrets<'a> {
    pub all: &'a Redactor,
    pub in_request: Vec<&'a str>,
    pub in_response: Vec<&'a str>,
}

/// The record's `tools`.
#[derive(Debug, Serialize)]
struct Tools<'a> {
    defined: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schemas: Option<&'a [ToolDefinition]>,
    calls: Vec<ToolCall>,
    results: Vec<ToolResult>,
}

/// The record's `request`, `response` and `tools`.
pub struct Content {
    pub request: Option<Value>,
    pub response: Option<Value>,
    pub tools: Option<Value>,
}

/// `text` with secrets replaced, then cut to `cap` bytes (at a character boundary).
fn kept(secrets: &Redactor, text: &str, cap: usize) -> (String, bool) {
    let clean = secrets.text(text);
    if clean.len() <= cap {
        return (clean.into_owned(), false);
    }
    let mut end = cap;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    (clean[..end].to_string(), true)
}

pub fn build(
    retention: Retention,
    request: &RequestInfo,
    request_body: Option<&BodyCopy>,
    response: &ResponseFacts,
    response_body: Option<&BodyCopy>,
    secrets: &Secrets<'_>,
) -> Content {
    let cap = if retention == Retention::Metadata { SUMMARY_BYTES } else { usize::MAX };
    let redactor = secrets.all;
    let tools = || {
        let calls = response.tool_calls.iter().map(|c| {
            let (arguments, cut) = kept(redactor, &c.arguments, cap);
            ToolCall { arguments, truncated: c.truncated || cut, ..c.clone() }
        });
        let results = request.tool_results.iter().map(|r| {
            let (content, cut) = kept(redactor, &r.content, cap);
            ToolResult { content, truncated: r.truncated || cut, ..r.clone() }
        });
        let t = Tools {
            defined: request.tools.iter().map(|t| t.name.as_str()).collect(),
            schemas: (retention == Retention::Full).then_some(request.tools.as_slice()),
            calls: calls.collect(),
            results: results.collect(),
        };
        let empty = t.defined.is_empty() && t.calls.is_empty() && t.results.is_empty();
        (!empty).then(|| serde_json::to_value(t).unwrap_or(Value::Null))
    };
    match retention {
        Retention::None => Content { request: None, response: None, tools: None },
        Retention::Metadata => {
            let user_text = request.last_user_text.as_deref().map(|t| kept(redactor, t, cap).0);
            let (text, cut) = kept(redactor, &response.text, cap);
            Content {
                request: Some(json!({ "summary": user_text, "messages": request.messages })),
                response: Some(json!({ "summary": text, "truncated": response.text_truncated || cut })),
                tools: tools(),
            }
        }
        Retention::Full => Content {
            request: request_body.map(|b| b.to_value(redactor, &secrets.in_request)),
            response: response_body.map(|b| b.to_value(redactor, &secrets.in_response)),
            tools: tools(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_copy_marks_truncation() {
        let mut b = BodyCopy::new(5);
        b.push(b"abc");
        b.push(b"def");
        assert!(b.truncated);
        assert_eq!(b.to_value(&Redactor::default(), &[]), json!({"body": "abcde", "truncated": true}));
    }

    #[test]
    fn each_level_keeps_what_it_says() {
        let request = RequestInfo {
            last_user_text: Some("hello".into()),
            messages: 1,
            tools: vec![ToolDefinition { name: "w".into(), schema: Some(json!({"type":"object"})) }],
            ..RequestInfo::default()
        };
        let response = ResponseFacts { text: "hi".into(), ..ResponseFacts::default() };
        let mut body = BodyCopy::new(100);
        body.push(b"{\"x\":1}");
        let none_found = Redactor::default();
        let secrets = Secrets { all: &none_found, in_request: vec![], in_response: vec![] };
        let none = build(Retention::None, &request, Some(&body), &response, Some(&body), &secrets);
        assert!(none.request.is_none() && none.response.is_none() && none.tools.is_none());
        let meta = build(Retention::Metadata, &request, Some(&body), &response, Some(&body), &secrets);
        assert_eq!(meta.request.unwrap()["summary"], "hello");
        assert_eq!(meta.response.unwrap()["summary"], "hi");
        let tools = meta.tools.unwrap();
        assert_eq!(tools["defined"], json!(["w"]));
        assert!(tools.get("schemas").is_none());
        let full = build(Retention::Full, &request, Some(&body), &response, Some(&body), &secrets);
        assert_eq!(full.request.unwrap()["body"], "{\"x\":1}");
        assert_eq!(full.tools.unwrap()["schemas"][0]["schema"]["type"], "object");
    }

    #[test]
    fn summaries_are_cut_after_secrets_are_replaced() {
        let key = "sk-proj-Xk29fLq8ZpR3vN7wT1yB6cM4hJ0dS5gA2eK9uQ";
        let mut found = Redactor::default();
        found.add(crate::scan::Kind::OpenaiApiKey, key);
        // The key straddles the summary's end: cut first, its first part would be kept.
        let text = format!("{}{key}", "a".repeat(SUMMARY_BYTES - 10));
        let request = RequestInfo { last_user_text: Some(text.clone()), ..RequestInfo::default() };
        let response = ResponseFacts { text, ..ResponseFacts::default() };
        let secrets = Secrets { all: &found, in_request: vec![key], in_response: vec![key] };
        let meta = build(Retention::Metadata, &request, None, &response, None, &secrets);
        let stored = serde_json::to_string(&(meta.request, meta.response)).unwrap();
        assert!(!stored.contains("sk-proj-Xk"), "{stored}");
        let mut body = BodyCopy::new(1000);
        body.push(format!(r#"{{"text":"{key}"}}"#).as_bytes());
        let full = build(Retention::Full, &request, Some(&body), &response, Some(&body), &secrets);
        assert_eq!(full.request.unwrap()["body"], r#"{"text":"[REDACTED:openai_api_key]"}"#);
        // A body that does not hold the secret whole (a split stream) is withheld.
        let mut split = BodyCopy::new(1000);
        split.push(b"data: sk-proj-Xk29\n\ndata: fLq8ZpR3vN7wT1yB6cM4hJ0dS5gA2eK9uQ");
        let full = build(Retention::Full, &request, Some(&body), &response, Some(&split), &secrets);
        assert!(full.response.unwrap()["body"].is_null());
    }
}
