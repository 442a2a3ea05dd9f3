//! What a request body says about its call: the model and whether the answer is streamed.
//!
//! Runs on the proxy's copy of the body after the body has gone upstream, so it never delays the
//! request. A body that is not JSON (or not an object) simply yields nothing.

use simd_json::prelude::*;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub stream: bool,
}

/// Parses the body in place (simd-json unescapes into the buffer, so the caller's copy is used
/// up). Only top-level `model` and `stream` are read.
pub fn inspect_request(body: &mut [u8]) -> RequestInfo {
    if body.is_empty() {
        return RequestInfo::default();
    }
    let Ok(value) = simd_json::to_borrowed_value(body) else {
        return RequestInfo::default();
    };
    RequestInfo {
        model: value.get("model").and_then(|m| m.as_str()).map(str::to_owned),
        stream: value.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(body: &str) -> RequestInfo {
        inspect_request(&mut body.as_bytes().to_vec())
    }

    #[test]
    fn reads_model_and_stream_wherever_they_are() {
        assert_eq!(
            info(r#"{"model":"gpt-4o","stream":true}"#),
            RequestInfo { model: Some("gpt-4o".into()), stream: true }
        );
        let late = r#"{"messages":[{"role":"user","content":"say \"model\": x"}], "stream" : false, "model" : "claude-sonnet-4-5"}"#;
        assert_eq!(info(late), RequestInfo { model: Some("claude-sonnet-4-5".into()), stream: false });
        assert_eq!(info(r#"{"messages":[{"model":"nested"}]}"#), RequestInfo::default());
    }

    #[test]
    fn non_json_yields_nothing() {
        for body in ["", "not json", "[1,2]", r#"{"model":5}"#, "{\"model\":\"x\""] {
            assert_eq!(info(body).model, None, "{body}");
        }
    }
}
