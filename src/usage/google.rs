//! Gemini: `generateContent` and `streamGenerateContent` (SSE with `alt=sse`, else a JSON array
//! of the same chunks delivered progressively).
//!
//! `usageMetadata`: `promptTokenCount` already includes `cachedContentTokenCount`;
//! `toolUsePromptTokenCount` (tool results fed back) is billed as input; `candidatesTokenCount`
//! (may be absent) and `thoughtsTokenCount` (thinking, counted apart from candidates) are both
//! billed as output. Every streamed chunk carries the usage so far: the last one wins, whole.
//! Tool calls are whole `functionCall` parts (`name`, `args`, sometimes `id`).

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::{count, Caps, ResponseFacts, Usage};

pub(super) fn usage(raw: &serde_json::Value) -> Usage {
    let prompt = count(raw, "/promptTokenCount");
    let tool_prompt = count(raw, "/toolUsePromptTokenCount");
    let candidates = count(raw, "/candidatesTokenCount");
    let thoughts = count(raw, "/thoughtsTokenCount");
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    Usage {
        input_tokens: sum(prompt, tool_prompt),
        output_tokens: sum(candidates, thoughts),
        cache_read_tokens: count(raw, "/cachedContentTokenCount"),
        reasoning_tokens: thoughts,
        ..Usage::default()
    }
    .with_total(count(raw, "/totalTokenCount"))
}

/// A chunk's usage so far, which replaces any earlier one whole.
pub(super) fn chunk_usage(v: &BorrowedValue<'_>, facts: &mut ResponseFacts) {
    if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
        facts.replace_usage(u);
    }
    facts.note_model(v.get("modelVersion"));
}

/// One response chunk (or the whole non-streamed response); `usage`: read its usage too (event
/// streams read only their last chunk's, once, at the end).
pub(super) fn chunk(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps, usage: bool) {
    if usage {
        chunk_usage(v, facts);
    }
    facts.note_model(v.get("modelVersion"));
    if !caps.content {
        return;
    }
    let candidate = v.get("candidates").and_then(|c| c.as_array()).and_then(|c| c.first());
    let parts = candidate.and_then(|c| c.get("content")).and_then(|c| c.get("parts")).and_then(|p| p.as_array());
    for part in parts.into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            let name = call.get("name").and_then(|n| n.as_str()).unwrap_or("");
            let args = call.get("args").map(|a| a.encode()).unwrap_or_default();
            facts.add_tool(call.get("id").and_then(|i| i.as_str()), name, &args, caps);
        } else if part.get("thought").and_then(|t| t.as_bool()) == Some(true) {
            // Thought summaries are not the answer.
        } else if let Some(text) = part.get("text").and_then(|t| t.as_str()) {
            facts.push_text(text, caps);
        }
    }
}
