//! Usage and answer content, read from a response on the side of the relay.
//!
//! The relay writes each piece of a response to the client first and then hands it to a
//! [`ResponseInspector`], which never delays a byte. Event streams are split into events
//! (`sse`); a cheap prefilter (`json::Needle`) lets only the events that can carry
//! usage, or content the record keeps, be parsed (simd-json). Other bodies are kept (bounded)
//! and parsed once at their end. Each provider's file says where its wire format puts usage,
//! text and tool calls, and how streamed usage merges: the result never depends on how the
//! bytes were split.
//!
//! - `sse`: event framing. `json`: byte-level members and the prefilter.
//! - `openai`, `anthropic`, `google`: the wire formats.
//! - `include_usage`: the OpenAI stream-usage request rewrite and its response filter.
//!
//! Token usage: the normalized counts every record carries, whatever the provider.
//!
//! Semantics (the read API's): `input_tokens` counts every prompt token, cached ones included;
//! `cache_read_tokens` and `cache_write_tokens` are parts of it. `output_tokens` counts every
//! generated token, reasoning included; `reasoning_tokens` is a part of it. `total_tokens` is
//! input + output. A field the provider did not send is `None`, never a made-up 0.

use serde::{Deserialize, Serialize};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::provider::{Endpoint, Provider};

mod anthropic;
mod google;
pub mod include_usage;
pub mod json;
mod openai;
pub mod sse;

use json::Needle;
use sse::{parse_event, SseSplitter};

/// Largest non-event-stream response body kept for parsing. Answers are far smaller; past this
/// the body is relayed but not read (usage unknown, recorded as such).
pub const MAX_WHOLE_BODY: usize = 16 * 1024 * 1024;
/// Tool calls kept per response.
const MAX_TOOL_CALLS: usize = 128;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    /// Prompt tokens served from the provider's cache (part of `input_tokens`).
    pub cache_read_tokens: Option<u64>,
    /// Prompt tokens written to the provider's cache (part of `input_tokens`): Anthropic's
    /// 5-minute and 1-hour writes together.
    pub cache_write_tokens: Option<u64>,
    /// The 1-hour part of `cache_write_tokens` (Anthropic prices it apart from 5-minute writes).
    pub cache_write_1h_tokens: Option<u64>,
    /// Thinking tokens (part of `output_tokens`).
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// `total_tokens` as the read API defines it: input + output, when both are known.
    fn with_total(mut self, provider_total: Option<u64>) -> Usage {
        self.total_tokens = match (self.input_tokens, self.output_tokens) {
            (Some(i), Some(o)) => Some(i + o),
            _ => provider_total,
        };
        self
    }

    fn is_empty(&self) -> bool {
        self.input_tokens.is_none() && self.output_tokens.is_none() && self.total_tokens.is_none()
    }
}

/// How to read a response: which wire format, by provider and endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Responses,
    Messages,
    Gemini,
    /// An endpoint the proxy relays without reading (`endpoint: "other"`).
    Opaque,
}

impl Shape {
    pub fn of(provider: Provider, endpoint: Endpoint) -> Shape {
        match (provider, endpoint) {
            (Provider::OpenAi, Endpoint::ChatCompletions) => Shape::Chat,
            (Provider::OpenAi, Endpoint::Responses) => Shape::Responses,
            (Provider::Anthropic, Endpoint::Messages) => Shape::Messages,
            (Provider::Google, Endpoint::GenerateContent | Endpoint::StreamGenerateContent) => Shape::Gemini,
            _ => Shape::Opaque,
        }
    }

    /// The provider's usage object, normalized.
    pub fn normalize(self, raw: &serde_json::Value) -> Option<Usage> {
        let usage = match self {
            Shape::Chat => openai::chat_usage(raw),
            Shape::Responses => openai::responses_usage(raw),
            Shape::Messages => anthropic::usage(raw),
            Shape::Gemini => google::usage(raw),
            Shape::Opaque => return None,
        };
        (!usage.is_empty()).then_some(usage)
    }
}

/// How much content the record keeps, which decides how much the scanner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Read answer text and tool calls at all (retention `metadata` or `full`).
    pub content: bool,
    /// Bytes of answer text kept.
    pub text: usize,
    /// Bytes of each tool call's arguments kept.
    pub arguments: usize,
    /// Collect the request's texts for security scanning (`inspect::RequestInfo::units`).
    pub scan: bool,
}

impl Caps {
    pub const USAGE_ONLY: Caps = Caps { content: false, text: 0, arguments: 0, scan: false };
}

/// A tool call the model made, assembled from streamed fragments where it was streamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: String,
    /// The arguments as JSON text, as the model produced them.
    pub arguments: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// What the scanner read from one response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResponseFacts {
    /// The provider's usage object, verbatim; for streams, the provider's objects merged by its
    /// rule (latest value wins; Anthropic's `message_start` and `message_delta` merged by field).
    pub usage_raw: Option<serde_json::Value>,
    /// The model the provider says answered (often a dated snapshot of the one asked for).
    pub model: Option<String>,
    /// The start of the answer text.
    pub text: String,
    pub text_truncated: bool,
    pub tool_calls: Vec<ToolCall>,
    /// Events too large to inspect, and whole bodies over `MAX_WHOLE_BODY`.
    pub skipped: u64,
    /// Streamed tool blocks still open: the provider's index, and the call's position.
    pub(crate) open_tools: Vec<(u64, usize)>,
}

impl ResponseFacts {
    /// Replaces the usage (OpenAI, Gemini: every usage object is complete and the last wins).
    fn replace_usage(&mut self, v: &BorrowedValue<'_>) {
        self.usage_raw = serde_json::to_value(v).ok();
    }

    /// Merges field by field, later values winning (Anthropic: `message_delta` restates or adds
    /// to `message_start`; its counts are cumulative, so nothing is ever added up).
    fn merge_usage(&mut self, v: &BorrowedValue<'_>) {
        let Ok(new) = serde_json::to_value(v) else { return };
        match &mut self.usage_raw {
            Some(old) => merge_json(old, new),
            None => self.usage_raw = Some(new),
        }
    }

    fn note_model(&mut self, v: Option<&BorrowedValue<'_>>) {
        if self.model.is_none() {
            if let Some(m) = v.and_then(|m| m.as_str()).filter(|m| !m.is_empty()) {
                self.model = Some(m.to_string());
            }
        }
    }

    fn push_text(&mut self, text: &str, caps: Caps) {
        push_capped(&mut self.text, &mut self.text_truncated, text, caps.text);
    }

    fn text_full(&self, caps: Caps) -> bool {
        self.text_truncated || self.text.len() >= caps.text
    }

    /// A complete tool call (non-streamed, or streamed whole).
    fn add_tool(&mut self, id: Option<&str>, name: &str, arguments: &str, caps: Caps) {
        if self.tool_calls.len() < MAX_TOOL_CALLS {
            let mut call = ToolCall {
                id: id.map(str::to_string),
                name: name.to_string(),
                arguments: String::new(),
                truncated: false,
            };
            push_capped(&mut call.arguments, &mut call.truncated, arguments, caps.arguments);
            self.tool_calls.push(call);
        }
    }

    /// A streamed tool call starts at the provider's `index`.
    fn open_tool(&mut self, index: u64, id: Option<&str>, name: &str, caps: Caps) {
        if self.tool_calls.len() < MAX_TOOL_CALLS {
            self.open_tools.retain(|(i, _)| *i != index);
            self.open_tools.push((index, self.tool_calls.len()));
            self.add_tool(id, name, "", caps);
        }
    }

    /// The next fragment of the streamed tool call at `index`.
    fn tool_fragment(&mut self, index: u64, piece: &str, caps: Caps) {
        if let Some(&(_, at)) = self.open_tools.iter().find(|(i, _)| *i == index) {
            let call = &mut self.tool_calls[at];
            push_capped(&mut call.arguments, &mut call.truncated, piece, caps.arguments);
        }
    }

    fn tool_at(&mut self, index: u64) -> Option<&mut ToolCall> {
        let at = self.open_tools.iter().find(|(i, _)| *i == index)?.1;
        self.tool_calls.get_mut(at)
    }
}

/// Appends up to `cap` bytes in all, cut at a character boundary.
fn push_capped(dst: &mut String, truncated: &mut bool, text: &str, cap: usize) {
    if *truncated {
        return;
    }
    let room = cap.saturating_sub(dst.len());
    if text.len() <= room {
        dst.push_str(text);
    } else {
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        dst.push_str(&text[..end]);
        *truncated = true;
    }
}

fn merge_json(old: &mut serde_json::Value, new: serde_json::Value) {
    match (old, new) {
        (serde_json::Value::Object(o), serde_json::Value::Object(n)) => {
            for (k, v) in n {
                if v.is_null() {
                    continue;
                }
                match o.get_mut(&k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        o.insert(k, v);
                    }
                }
            }
        }
        (old, new) => *old = new,
    }
}

/// Reads usage and content from a response as its body passes, piece by piece.
pub struct ResponseInspector {
    shape: Shape,
    caps: Caps,
    reader: Reader,
    facts: ResponseFacts,
    /// simd-json parses in place: an event's data is copied here first.
    scratch: Vec<u8>,
    /// Gemini: the last event that carried usage, parsed once at the end (every chunk carries
    /// the usage so far, and only the last counts).
    last_usage_event: Vec<u8>,
}

enum Reader {
    Events(SseSplitter),
    Whole { body: Vec<u8>, over: bool },
}

impl ResponseInspector {
    /// `event_stream`: the response's content type is `text/event-stream`.
    pub fn new(shape: Shape, event_stream: bool, caps: Caps) -> ResponseInspector {
        let reader = if event_stream {
            Reader::Events(SseSplitter::default())
        } else {
            Reader::Whole { body: Vec::new(), over: false }
        };
        ResponseInspector {
            shape,
            caps,
            reader,
            facts: ResponseFacts::default(),
            scratch: Vec::new(),
            last_usage_event: Vec::new(),
        }
    }

    /// The next piece of the response body as the client received it.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.shape == Shape::Opaque {
            return;
        }
        let ResponseInspector { shape, caps, reader, facts, scratch, last_usage_event } = self;
        match reader {
            Reader::Events(splitter) => {
                splitter.feed(piece, &mut |raw| on_event(*shape, *caps, facts, scratch, last_usage_event, raw))
            }
            Reader::Whole { body, over } => {
                if *over || body.len() + piece.len() > MAX_WHOLE_BODY {
                    *over = true;
                    body.clear();
                } else {
                    body.extend_from_slice(piece);
                }
            }
        }
    }

    /// The body ended (completely or not): what was read.
    pub fn finish(mut self) -> ResponseFacts {
        let ResponseInspector { shape, caps, reader, facts, scratch, last_usage_event } = &mut self;
        match reader {
            Reader::Events(splitter) => {
                splitter.finish(&mut |raw| on_event(*shape, *caps, facts, scratch, last_usage_event, raw));
                facts.skipped += splitter.oversized;
                if !last_usage_event.is_empty() {
                    scratch.clear();
                    scratch.extend_from_slice(&parse_event(last_usage_event).data);
                    if let Ok(value) = crate::dom::parse(scratch) {
                        google::chunk_usage(&value, facts);
                    }
                }
            }
            Reader::Whole { body, over } => {
                if *over {
                    facts.skipped += 1;
                } else if !body.is_empty() {
                    read_whole(*shape, *caps, facts, body);
                }
            }
        }
        self.facts
    }
}

fn on_event(
    shape: Shape,
    caps: Caps,
    facts: &mut ResponseFacts,
    scratch: &mut Vec<u8>,
    last_usage_event: &mut Vec<u8>,
    raw: &[u8],
) {
    if shape == Shape::Gemini && USAGE_METADATA.in_(raw) {
        last_usage_event.clear();
        last_usage_event.extend_from_slice(raw);
    }
    // The prefilter looks for quoted JSON keys and values, which only the data can hold: it runs
    // on the raw event, before the fields are even split.
    if !worth_parsing(shape, caps, facts, raw) {
        return;
    }
    let event = parse_event(raw);
    let data = &*event.data;
    if data.is_empty() || data == b"[DONE]" {
        return;
    }
    scratch.clear();
    scratch.extend_from_slice(data);
    let Ok(value) = crate::dom::parse(scratch) else { return };
    match shape {
        Shape::Chat => openai::chat_chunk(&value, facts, caps),
        Shape::Responses => openai::responses_event(&value, facts, caps),
        Shape::Messages => anthropic::event(&value, facts, caps),
        Shape::Gemini => google::chunk(&value, facts, caps, false),
        Shape::Opaque => {}
    }
}

static USAGE: Needle = Needle::new(b"\"usage\"");
static TOOL_CALLS: Needle = Needle::new(b"\"tool_calls\"");
static CONTENT: Needle = Needle::new(b"\"content\"");
static OUTPUT_ITEM_DONE: Needle = Needle::new(b"\"response.output_item.done\"");
static OUTPUT_TEXT_DELTA: Needle = Needle::new(b"\"response.output_text.delta\"");
static MESSAGE_START: Needle = Needle::new(b"\"message_start\"");
static BLOCK_START: Needle = Needle::new(b"\"content_block_start\"");
static INPUT_JSON_DELTA: Needle = Needle::new(b"\"input_json_delta\"");
static TEXT_DELTA: Needle = Needle::new(b"\"text_delta\"");
static USAGE_METADATA: Needle = Needle::new(b"\"usageMetadata\"");
static TEXT: Needle = Needle::new(b"\"text\"");
static FUNCTION_CALL: Needle = Needle::new(b"\"functionCall\"");

/// The prefilter: whether an event can carry usage, the model, or content the record keeps.
/// It may let through an event that holds nothing of use, never hold back one that does.
fn worth_parsing(shape: Shape, caps: Caps, facts: &ResponseFacts, raw: &[u8]) -> bool {
    let want_text = caps.content && !facts.text_full(caps);
    match shape {
        Shape::Chat => {
            USAGE.with_object(raw)
                || facts.model.is_none()
                || (want_text && CONTENT.in_(raw))
                || (caps.content && TOOL_CALLS.in_(raw))
        }
        Shape::Responses => {
            USAGE.with_object(raw)
                || (caps.content && OUTPUT_ITEM_DONE.in_(raw))
                || (want_text && OUTPUT_TEXT_DELTA.in_(raw))
        }
        // `message_start` names the model (and may carry no usage at all).
        Shape::Messages => {
            USAGE.with_object(raw)
                || MESSAGE_START.in_(raw)
                || (caps.content && (BLOCK_START.in_(raw) || INPUT_JSON_DELTA.in_(raw)))
                || (want_text && TEXT_DELTA.in_(raw))
        }
        // Usage: see `last_usage_event`. The first chunk names the model.
        Shape::Gemini => {
            facts.model.is_none() || (want_text && TEXT.in_(raw)) || (caps.content && FUNCTION_CALL.in_(raw))
        }
        Shape::Opaque => false,
    }
}

fn read_whole(shape: Shape, caps: Caps, facts: &mut ResponseFacts, body: &mut [u8]) {
    // simd-json parses in place and a failed parse may leave the buffer changed: a Gemini body,
    // which may be a cut array worth reading item by item, is parsed from a copy.
    if shape == Shape::Gemini {
        let mut copy = body.to_vec();
        let whole = match crate::dom::parse(&mut copy) {
            Ok(value) => {
                read_value(shape, caps, facts, &value);
                true
            }
            Err(_) => false,
        };
        if !whole {
            read_cut(shape, caps, facts, body);
        }
    } else if let Ok(value) = crate::dom::parse(body) {
        read_value(shape, caps, facts, &value);
    }
}

fn read_value(shape: Shape, caps: Caps, facts: &mut ResponseFacts, value: &BorrowedValue<'_>) {
    match shape {
        Shape::Chat => openai::chat_body(value, facts, caps),
        Shape::Responses => openai::responses_object(value, facts, caps),
        Shape::Messages => anthropic::message(value, facts, caps),
        // generateContent answers one object; streamGenerateContent without `alt=sse` answers a
        // JSON array of the same chunks.
        Shape::Gemini => match value.as_array() {
            Some(chunks) => chunks.iter().for_each(|c| google::chunk(c, facts, caps, true)),
            None => google::chunk(value, facts, caps, true),
        },
        Shape::Opaque => {}
    }
}

/// A body that does not parse whole: a Gemini array stream cut short still holds its complete
/// chunks (and the usage so far); every other shape is one object, unreadable once cut.
fn read_cut(shape: Shape, caps: Caps, facts: &mut ResponseFacts, body: &mut [u8]) {
    if shape != Shape::Gemini {
        return;
    }
    for item in json::array_items(body) {
        if let Ok(chunk) = crate::dom::parse(&mut body[item]) {
            google::chunk(&chunk, facts, caps, true);
        }
    }
}

/// A count at a path of object keys written as a JSON pointer (`/a/b`), when it is a
/// non-negative integer. Walked by hand: `Value::pointer` allocates two strings per key to undo
/// `~` escapes, which none of these keys has, and this runs several times per call.
fn count(v: &serde_json::Value, pointer: &str) -> Option<u64> {
    pointer.split('/').skip(1).try_fold(v, |v, key| v.get(key))?.as_u64()
}
