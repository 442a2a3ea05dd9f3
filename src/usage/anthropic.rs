//! Anthropic Messages.
//!
//! Usage: `input_tokens` counts only uncached prompt tokens; `cache_creation_input_tokens` (split
//! into `cache_creation.ephemeral_5m_input_tokens` and `ephemeral_1h_input_tokens`) and
//! `cache_read_input_tokens` are counted apart, so the normalized input is their sum.
//! Streamed, `message_start` carries `message.usage` and `message_delta` a `usage` whose counts
//! are cumulative (latest wins, never added); it may restate or first give the input and cache
//! counts. Tool calls stream as a `tool_use` block followed by `input_json_delta` pieces.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::{count, Caps, ResponseFacts, Usage};

pub(super) fn usage(raw: &serde_json::Value) -> Usage {
    let uncached = count(raw, "/input_tokens");
    let read = count(raw, "/cache_read_input_tokens");
    let write_5m = count(raw, "/cache_creation/ephemeral_5m_input_tokens");
    let write_1h = count(raw, "/cache_creation/ephemeral_1h_input_tokens");
    let write = count(raw, "/cache_creation_input_tokens").or(match (write_5m, write_1h) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    });
    let input = match (uncached, read, write) {
        (None, None, None) => None,
        (a, b, c) => Some(a.unwrap_or(0) + b.unwrap_or(0) + c.unwrap_or(0)),
    };
    Usage {
        input_tokens: input,
        output_tokens: count(raw, "/output_tokens"),
        cache_read_tokens: read,
        cache_write_tokens: write,
        cache_write_1h_tokens: write_1h,
        ..Usage::default()
    }
    .with_total(None)
}

/// One stream event.
pub(super) fn event(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    match v.get("type").and_then(|t| t.as_str()) {
        Some("message_start") => {
            if let Some(message) = v.get("message") {
                if let Some(u) = message.get("usage").filter(|u| u.is_object()) {
                    facts.merge_usage(u);
                }
                facts.note_model(message.get("model"));
            }
        }
        Some("message_delta") => {
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                facts.merge_usage(u);
            }
        }
        Some("content_block_start") if caps.content => {
            let index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
            let Some(block) = v.get("content_block") else { return };
            match block.get("type").and_then(|t| t.as_str()) {
                Some("tool_use") | Some("server_tool_use") => {
                    let name = block.get("name").and_then(|n| n.as_str()).unwrap_or("");
                    facts.open_tool(index, block.get("id").and_then(|i| i.as_str()), name, caps);
                }
                Some("text") => {
                    if let Some(text) = block.get("text").and_then(|t| t.as_str()) {
                        facts.push_text(text, caps);
                    }
                }
                _ => {}
            }
        }
        Some("content_block_delta") if caps.content => {
            let index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
            let Some(delta) = v.get("delta") else { return };
            match delta.get("type").and_then(|t| t.as_str()) {
                Some("text_delta") => {
                    if let Some(text) = delta.get("text").and_then(|t| t.as_str()) {
                        facts.push_text(text, caps);
                    }
                }
                Some("input_json_delta") => {
                    if let Some(piece) = delta.get("partial_json").and_then(|p| p.as_str()) {
                        facts.tool_fragment(index, piece, caps);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// A non-streamed message.
pub(super) fn message(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        facts.replace_usage(u);
    }
    facts.note_model(v.get("model"));
    if !caps.content {
        return;
    }
    for block in v.get("content").and_then(|c| c.as_array()).into_iter().flatten() {
        match block.get("type").and_then(|t| t.as_str()) {
            Some("text") => {
                if let Some(text) = block.get("text").and_then(|t| t.as_str()) {
                    facts.push_text(text, caps);
                }
            }
            Some("tool_use") | Some("server_tool_use") => {
                let name = block.get("name").and_then(|n| n.as_str()).unwrap_or("");
                let input = block.get("input").map(|i| i.encode()).unwrap_or_default();
                facts.add_tool(block.get("id").and_then(|i| i.as_str()), name, &input, caps);
            }
            _ => {}
        }
    }
}
