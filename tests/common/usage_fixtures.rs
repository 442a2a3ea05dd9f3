//! The usage fixtures (`tests/fixtures/usage/`) and their expectations (`expected.json`), shared
//! by the scanner conformance suite and the end-to-end replay through the proxy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kurral_proxy::provider::Provider;
use kurral_proxy::usage::{Shape, Usage};
use serde_json::Value;

pub const EXPECTATIONS: &str = "expected.json";
pub const USAGE_FIELDS: [&str; 7] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
];

/// One fixture and what the scanner must read from it.
pub struct Case {
    pub file: String,
    pub quirk: String,
    pub provider: Provider,
    pub shape: Shape,
    pub event_stream: bool,
    pub body: Vec<u8>,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    pub text: String,
    /// (id, name, arguments)
    pub tool_calls: Vec<(Option<String>, String, String)>,
    /// The exact total in USD, and how it was computed.
    pub cost: Option<(String, String)>,
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/usage")
}

fn string(v: &Value, key: &str, file: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("{file}: `{key}` must be a string")).to_string()
}

fn optional_string(v: &Value, key: &str, file: &str) -> Option<String> {
    match v.get(key) {
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        _ => panic!("{file}: `{key}` must be a string or null"),
    }
}

fn shape_named(name: &str, file: &str) -> Shape {
    match name {
        "chat" => Shape::Chat,
        "responses" => Shape::Responses,
        "messages" => Shape::Messages,
        "gemini" => Shape::Gemini,
        other => panic!("{file}: unknown shape {other:?}"),
    }
}

fn expected_usage(v: &Value, file: &str) -> Option<Usage> {
    match v {
        Value::Null => None,
        Value::Object(fields) => {
            let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                USAGE_FIELDS.into_iter().collect(),
                "{file}: usage must list every field (null where absent)"
            );
            Some(serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: usage: {e}")))
        }
        _ => panic!("{file}: usage must be an object or null"),
    }
}

pub fn load_cases() -> Vec<Case> {
    let dir = fixtures_dir();
    let text = std::fs::read_to_string(dir.join(EXPECTATIONS)).expect("tests/fixtures/usage/expected.json");
    let doc: Value = serde_json::from_str(&text).expect("expected.json is JSON");
    let cases = doc["cases"].as_array().expect("expected.json: `cases` is an array");
    cases
        .iter()
        .map(|c| {
            let file = string(c, "file", "expected.json");
            let provider = Provider::from_name(&string(c, "provider", &file))
                .unwrap_or_else(|| panic!("{file}: unknown provider"));
            let tool_calls = c["tool_calls"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: `tool_calls` must be an array"))
                .iter()
                .map(|t| (optional_string(t, "id", &file), string(t, "name", &file), string(t, "arguments", &file)))
                .collect();
            let cost = match &c["cost"] {
                Value::Null => None,
                cost => Some((string(cost, "total_usd", &file), string(cost, "by_hand", &file))),
            };
            Case {
                body: std::fs::read(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}")),
                quirk: string(c, "quirk", &file),
                provider,
                shape: shape_named(&string(c, "shape", &file), &file),
                event_stream: c["event_stream"].as_bool().unwrap_or_else(|| panic!("{file}: `event_stream` is a bool")),
                usage: expected_usage(&c["usage"], &file),
                model: optional_string(c, "model", &file),
                text: string(c, "text", &file),
                tool_calls,
                cost,
                file,
            }
        })
        .collect()
}
