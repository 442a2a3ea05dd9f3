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
use crate::usage::{Caps, ResponseFacts, ToolCall};

use super::Retention;

/// Length of a summary under `metadata`.
pub const SUMMARY_BYTES: usize = 256;

/// How much of the content the scanner must read for this retention level.
pub fn caps(retention: Retention, max_content: usize) -> Caps {
    match retention {
        Retention::None => Caps::USAGE_ONLY,
        Retention::Metadata => Caps { content: true, text: SUMMARY_BYTES, arguments: SUMMARY_BYTES },
        Retention::Full => Caps { content: true, text: max_content, arguments: max_content },
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

    fn to_value(&self) -> Value {
        json!({ "body": String::from_utf8_lossy(&self.bytes), "truncated": self.truncated })
    }
}

/// The record's `tools`.
#[derive(Debug, Serialize)]
struct Tools<'a> {
    defined: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schemas: Option<&'a [ToolDefinition]>,
    calls: &'a [ToolCall],
    results: &'a [ToolResult],
}

/// The record's `request`, `response` and `tools`.
pub struct Content {
    pub request: Option<Value>,
    pub response: Option<Value>,
    pub tools: Option<Value>,
}

pub fn build(
    retention: Retention,
    request: &RequestInfo,
    request_body: Option<&BodyCopy>,
    response: &ResponseFacts,
    response_body: Option<&BodyCopy>,
) -> Content {
    let tools = || {
        let t = Tools {
            defined: request.tools.iter().map(|t| t.name.as_str()).collect(),
            schemas: (retention == Retention::Full).then_some(request.tools.as_slice()),
            calls: &response.tool_calls,
            results: &request.tool_results,
        };
        let empty = t.defined.is_empty() && t.calls.is_empty() && t.results.is_empty();
        (!empty).then(|| serde_json::to_value(t).unwrap_or(Value::Null))
    };
    match retention {
        Retention::None => Content { request: None, response: None, tools: None },
        Retention::Metadata => Content {
            request: Some(json!({
                "summary": request.last_user_text,
                "messages": request.messages,
            })),
            response: Some(json!({
                "summary": response.text,
                "truncated": response.text_truncated,
            })),
            tools: tools(),
        },
        Retention::Full => Content {
            request: request_body.map(BodyCopy::to_value),
            response: response_body.map(BodyCopy::to_value),
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
        assert_eq!(b.to_value(), json!({"body": "abcde", "truncated": true}));
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
        let none = build(Retention::None, &request, Some(&body), &response, Some(&body));
        assert!(none.request.is_none() && none.response.is_none() && none.tools.is_none());
        let meta = build(Retention::Metadata, &request, Some(&body), &response, Some(&body));
        assert_eq!(meta.request.unwrap()["summary"], "hello");
        assert_eq!(meta.response.unwrap()["summary"], "hi");
        let tools = meta.tools.unwrap();
        assert_eq!(tools["defined"], json!(["w"]));
        assert!(tools.get("schemas").is_none());
        let full = build(Retention::Full, &request, Some(&body), &response, Some(&body));
        assert_eq!(full.request.unwrap()["body"], "{\"x\":1}");
        assert_eq!(full.tools.unwrap()["schemas"][0]["schema"]["type"], "object");
    }
}
