//! OpenAI: Chat Completions and Responses.
//!
//! Chat usage: `prompt_tokens` (cached ones included, `prompt_tokens_details.cached_tokens`),
//! `completion_tokens` (reasoning included, `completion_tokens_details.reasoning_tokens`). A
//! stream carries it only in its last chunk (`"choices": []`), and only when asked for
//! (see `include_usage`). Tool calls stream as `delta.tool_calls[]` fragments keyed by `index`.
//!
//! Responses usage: `input_tokens` (`input_tokens_details.cached_tokens`), `output_tokens`
//! (`output_tokens_details.reasoning_tokens`), inside the `response` of the terminal event
//! (`response.completed`, `.incomplete` or `.failed`), which also repeats the whole output.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::{count, Caps, ResponseFacts, Usage};

pub(super) fn chat_usage(raw: &serde_json::Value) -> Usage {
    let provider_total = count(raw, "/total_tokens");
    Usage {
        input_tokens: count(raw, "/prompt_tokens"),
        output_tokens: count(raw, "/completion_tokens"),
        cache_read_tokens: count(raw, "/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: count(raw, "/completion_tokens_details/reasoning_tokens"),
        ..Usage::default()
    }
    .with_total(provider_total)
}

pub(super) fn responses_usage(raw: &serde_json::Value) -> Usage {
    let provider_total = count(raw, "/total_tokens");
    Usage {
        input_tokens: count(raw, "/input_tokens"),
        output_tokens: count(raw, "/output_tokens"),
        cache_read_tokens: count(raw, "/input_tokens_details/cached_tokens"),
        reasoning_tokens: count(raw, "/output_tokens_details/reasoning_tokens"),
        ..Usage::default()
    }
    .with_total(provider_total)
}

fn take_usage(v: &BorrowedValue<'_>, facts: &mut ResponseFacts) {
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        facts.replace_usage(u);
    }
}

/// One streamed chat chunk.
pub(super) fn chat_chunk(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    take_usage(v, facts);
    facts.note_model(v.get("model"));
    if !caps.content {
        return;
    }
    let Some(delta) = first_choice(v).and_then(|c| c.get("delta")) else { return };
    if let Some(text) = delta.get("content").and_then(|t| t.as_str()) {
        facts.push_text(text, caps);
    }
    for call in delta.get("tool_calls").and_then(|c| c.as_array()).into_iter().flatten() {
        let index = call.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(|n| n.as_str());
        let id = call.get("id").and_then(|i| i.as_str());
        // A fragment with an id or a name starts a call; the rest extend it.
        if id.is_some() || name.is_some() {
            match facts.tool_at(index) {
                Some(open) if open.id.as_deref() == id || id.is_none() => {
                    if let (true, Some(name)) = (open.name.is_empty(), name) {
                        open.name = name.to_string();
                    }
                }
                _ => facts.open_tool(index, id, name.unwrap_or(""), caps),
            }
        }
        if let Some(args) = function.and_then(|f| f.get("arguments")).and_then(|a| a.as_str()) {
            facts.tool_fragment(index, args, caps);
        }
    }
}

fn first_choice<'v>(v: &'v BorrowedValue<'v>) -> Option<&'v BorrowedValue<'v>> {
    v.get("choices").and_then(|c| c.as_array()).and_then(|c| c.first())
}

/// A non-streamed chat completion.
pub(super) fn chat_body(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    take_usage(v, facts);
    facts.note_model(v.get("model"));
    if !caps.content {
        return;
    }
    let Some(message) = first_choice(v).and_then(|c| c.get("message")) else { return };
    if let Some(text) = message.get("content").and_then(|t| t.as_str()) {
        facts.push_text(text, caps);
    }
    for call in message.get("tool_calls").and_then(|c| c.as_array()).into_iter().flatten() {
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(|n| n.as_str()).unwrap_or("");
        let args = function.and_then(|f| f.get("arguments")).and_then(|a| a.as_str()).unwrap_or("");
        facts.add_tool(call.get("id").and_then(|i| i.as_str()), name, args, caps);
    }
}

/// One Responses stream event.
pub(super) fn responses_event(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "response.completed" | "response.incomplete" | "response.failed" => {
            if let Some(response) = v.get("response") {
                // The terminal event repeats the whole output: it replaces what the deltas built
                // (unless it has none, as a failed response may).
                let has_output = response.get("output").and_then(|o| o.as_array()).is_some_and(|o| !o.is_empty());
                if caps.content && has_output {
                    facts.text.clear();
                    facts.text_truncated = false;
                    facts.tool_calls.clear();
                }
                responses_object(response, facts, caps);
            }
        }
        "response.output_text.delta" if caps.content => {
            if let Some(d) = v.get("delta").and_then(|d| d.as_str()) {
                facts.push_text(d, caps);
            }
        }
        "response.output_item.done" if caps.content => {
            if let Some(item) = v.get("item") {
                function_call(item, facts, caps);
            }
        }
        _ => {}
    }
}

/// A Responses `response` object: the non-streamed body, or the terminal event's.
pub(super) fn responses_object(v: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    take_usage(v, facts);
    facts.note_model(v.get("model"));
    if !caps.content {
        return;
    }
    for item in v.get("output").and_then(|o| o.as_array()).into_iter().flatten() {
        match item.get("type").and_then(|t| t.as_str()) {
            Some("message") => {
                for part in item.get("content").and_then(|c| c.as_array()).into_iter().flatten() {
                    if let Some(text) = part.get("text").and_then(|t| t.as_str()) {
                        facts.push_text(text, caps);
                    }
                }
            }
            Some("function_call") => function_call(item, facts, caps),
            _ => {}
        }
    }
}

fn function_call(item: &BorrowedValue<'_>, facts: &mut ResponseFacts, caps: Caps) {
    if item.get("type").and_then(|t| t.as_str()) != Some("function_call") {
        return;
    }
    let name = item.get("name").and_then(|n| n.as_str()).unwrap_or("");
    let args = item.get("arguments").and_then(|a| a.as_str()).unwrap_or("");
    facts.add_tool(item.get("call_id").and_then(|i| i.as_str()), name, args, caps);
}
