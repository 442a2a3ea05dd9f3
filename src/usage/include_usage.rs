//! The one place the proxy changes a body: OpenAI chat streams whose client did not ask for usage.
//!
//! OpenAI reports a streamed chat's usage only when the request says
//! `"stream_options": {"include_usage": true}`. Without it the call could not be accounted, so
//! the proxy adds it upstream ([`add_include_usage`]) and then gives the client the stream it
//! would have had ([`UsageChunkFilter`]): the extra usage-only chunk (`"choices": []` with a
//! usage object) is removed, and so is the `"usage": null` member that the option adds to every
//! other chunk. Every other byte passes as the provider sent it. Switched by
//! `capture.openai_stream_usage` in the config (on by default).

use super::json::{object_members, Member};
use super::sse::boundary;

/// The request body with `stream_options.include_usage` set to true, when the body is a chat
/// request that streams without asking for usage; None when nothing needs to change (not a
/// stream, usage already asked for, or a body that is not one JSON object).
pub fn add_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let (open, members) = object_members(body)?;
    if ambiguous(body, &members, &["stream", "stream_options"]) {
        return None;
    }
    let value = |m: &Member| &body[m.value.clone()];
    if members.iter().find(|m| m.is(body, "stream")).map(value) != Some(b"true") {
        return None;
    }
    let Some(options) = members.iter().find(|m| m.is(body, "stream_options")) else {
        return Some(splice(body, open..open, b"\"stream_options\":{\"include_usage\":true},"));
    };
    let span = options.value.clone();
    if value(options) == b"null" {
        return Some(splice(body, span, b"{\"include_usage\":true}"));
    }
    let (inner_open, inner) = object_members(value(options))?;
    if ambiguous(value(options), &inner, &["include_usage"]) {
        return None;
    }
    let inner_open = span.start + inner_open;
    match inner.iter().find(|m| m.is(value(options), "include_usage")) {
        Some(m) if &value(options)[m.value.clone()] == b"true" => None,
        Some(m) => Some(splice(body, span.start + m.value.start..span.start + m.value.end, b"true")),
        None if inner.is_empty() => Some(splice(body, inner_open..inner_open, b"\"include_usage\":true")),
        None => Some(splice(body, inner_open..inner_open, b"\"include_usage\":true,")),
    }
}

/// A body another parser could read differently is left alone: a key written with escapes (it
/// may spell one of `names`), or one of `names` given twice (parsers differ on which one wins).
fn ambiguous(buf: &[u8], members: &[Member], names: &[&str]) -> bool {
    members.iter().any(|m| buf[m.key.clone()].contains(&b'\\'))
        || names.iter().any(|n| members.iter().filter(|m| m.is(buf, n)).count() > 1)
}

fn splice(body: &[u8], range: std::ops::Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + with.len());
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&body[range.end..]);
    out
}

/// Removes from a chat stream what `add_include_usage` made the provider add. Fed the decoded
/// response body piece by piece; hands back the bytes for the client. An event is released once
/// its blank line has arrived (a client acts on an event only then anyway); a trailing
/// unfinished event is released as is by `finish`.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    /// Bytes not yet released: the start of an unfinished event.
    pending: Vec<u8>,
    /// Offset in `pending` up to which no boundary begins (less two bytes of look-ahead).
    scanned: usize,
    /// Usage-only chunks removed.
    pub removed: u64,
}

impl UsageChunkFilter {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let mut start = 0;
        let mut from = self.scanned;
        while let Some((end, next)) = boundary(&self.pending[from..]).map(|(e, n)| (from + e, from + n)) {
            self.release(start, end, next, out);
            start = next;
            from = next;
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len().saturating_sub(2);
    }

    /// The body ended: whatever is left goes out unchanged.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
        self.scanned = 0;
    }

    /// Event `pending[start..end]`, its blank line up to `next`.
    fn release(&mut self, start: usize, end: usize, next: usize, out: &mut Vec<u8>) {
        let event = &self.pending[start..end];
        match filter_event(event) {
            Filtered::Keep => out.extend_from_slice(&self.pending[start..next]),
            Filtered::Drop => self.removed += 1,
            Filtered::Without(cut) => {
                out.extend_from_slice(&self.pending[start..start + cut.start]);
                out.extend_from_slice(&self.pending[start + cut.end..next]);
            }
        }
    }
}

enum Filtered {
    Keep,
    /// The usage-only chunk.
    Drop,
    /// The chunk without this span (the `"usage": null` member and one comma).
    Without(std::ops::Range<usize>),
}

fn filter_event(event: &[u8]) -> Filtered {
    // Chat chunks are one `data:` line; find its JSON.
    let Some(at) = memchr::memmem::find(event, b"data:") else { return Filtered::Keep };
    let line_end = memchr::memchr(b'\n', &event[at..]).map_or(event.len(), |i| at + i);
    let json_start = at + 5;
    let json = &event[json_start..line_end];
    let json = json.strip_suffix(b"\r").unwrap_or(json);
    let Some((_, members)) = object_members(json) else { return Filtered::Keep };
    let Some(pos) = members.iter().position(|m| m.is(json, "usage")) else { return Filtered::Keep };
    let usage = &members[pos];
    let trimmed = |r: std::ops::Range<usize>| json[r].trim_ascii();
    if trimmed(usage.value.clone()) == b"null" {
        // Remove the member with the comma before it (or after it, when it comes first).
        let cut = if pos > 0 {
            members[pos - 1].value.end..usage.value.end
        } else if let Some(next) = members.get(1) {
            usage.key.start..next.key.start
        } else {
            usage.key.start..usage.value.end
        };
        return Filtered::Without(json_start + cut.start..json_start + cut.end);
    }
    let choices_empty = members.iter().any(|m| m.is(json, "choices") && is_empty_array(&json[m.value.clone()]));
    if choices_empty && json[usage.value.clone()].starts_with(b"{") {
        Filtered::Drop
    } else {
        Filtered::Keep
    }
}

fn is_empty_array(v: &[u8]) -> bool {
    v.first() == Some(&b'[') && v.last() == Some(&b']') && v[1..v.len() - 1].trim_ascii().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(body: &str) -> Option<String> {
        add_include_usage(body.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn adds_the_option_only_where_usage_was_not_asked() {
        assert_eq!(
            added(r#"{"model":"gpt-4o","stream":true,"messages":[]}"#).unwrap(),
            r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#
        );
        assert_eq!(
            added(r#"{"stream": true, "stream_options": null}"#).unwrap(),
            r#"{"stream": true, "stream_options": {"include_usage":true}}"#
        );
        assert_eq!(
            added(r#"{"stream":true,"stream_options":{"include_usage":false}}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            added(r#"{"stream":true,"stream_options":{ }}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true }}"#
        );
        assert_eq!(
            added(r#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true,"include_obfuscation":false}}"#
        );
        for unchanged in [
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":false}"#,
            r#"{"model":"x"}"#,
            r#"{"messages":[{"stream":true}]}"#,
            r#"{"stream":true"#,
            "not json",
            r#"{"stream":true,"stream_options":null,"stream_options":{}}"#,
            r#"{"stream":true,"stream_opt\u0069ons":{"include_usage":false}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}"#,
        ] {
            assert_eq!(added(unchanged), None, "{unchanged}");
        }
    }

    fn filter_all(pieces: &[&[u8]]) -> (String, u64) {
        let mut f = UsageChunkFilter::default();
        let mut out = Vec::new();
        for p in pieces {
            f.feed(p, &mut out);
        }
        f.finish(&mut out);
        (String::from_utf8(out).unwrap(), f.removed)
    }

    const WITH_USAGE: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"usage\":null,\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
        "data: [DONE]\n\n"
    );
    const WITHOUT_USAGE: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn the_client_gets_the_stream_it_would_have_had_at_every_split() {
        let body = WITH_USAGE.as_bytes();
        for i in 0..=body.len() {
            for j in (i..=body.len()).step_by(7) {
                let (out, removed) = filter_all(&[&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(out, WITHOUT_USAGE, "split at {i},{j}");
                assert_eq!(removed, 1);
            }
        }
    }

    #[test]
    fn other_events_and_unfinished_tails_pass_unchanged() {
        let body = "event: x\ndata: {\"choices\":[],\"usage\":7}\r\n\r\n: ping\n\ndata: {\"usage\": null }";
        let (out, removed) = filter_all(&[body.as_bytes()]);
        assert_eq!(out, body);
        assert_eq!(removed, 0);
        let (out, _) = filter_all(&[b"data: {\"usage\" : null}\n\n"]);
        assert_eq!(out, "data: {}\n\n");
    }
}
