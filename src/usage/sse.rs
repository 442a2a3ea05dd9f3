//! Server-sent event framing: splits a response body, fed in pieces of any size, into events.
//!
//! An event ends at a blank line. Lines end with `\n` or `\r\n`, mixed freely (OpenAI and
//! Anthropic send `\n\n`, Gemini `\r\n\r\n`), so a boundary is a `\n` followed by `\n` or
//! `\r\n`. A boundary may straddle two pieces; the splitter carries the unfinished event over,
//! so the events it yields never depend on how the bytes were cut. Only the bytes of the one
//! unfinished event are copied; complete events are handed out as slices of the input.
//!
//! Memory is bounded: an event longer than `max_event` bytes is skipped whole (and counted), so
//! a misbehaving upstream cannot make the carry grow without end.

use memchr::memchr_iter;

/// Largest event kept for inspection. OpenAI's `response.completed` repeats the whole answer,
/// so it can be as large as the answer itself; 16 MiB covers any answer a model produces.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct SseSplitter {
    /// The unfinished event's bytes. Invariant: holds no boundary (a boundary could only begin in
    /// its last two bytes and end in input not yet seen).
    carry: Vec<u8>,
    /// The current event outgrew `max_event`: its bytes are dropped until its end.
    skipping: bool,
    max_event: usize,
    /// Events skipped for their size.
    pub oversized: u64,
}

impl Default for SseSplitter {
    fn default() -> Self {
        SseSplitter::new(MAX_EVENT_BYTES)
    }
}

/// Where the first boundary in `buf` is: (end of the event's bytes, start of what follows).
/// A `\n` at the very end, or `\n\r` at the very end, is not yet a boundary: the next bytes
/// decide.
pub(crate) fn boundary(buf: &[u8]) -> Option<(usize, usize)> {
    for i in memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i, i + 2)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
            _ => {}
        }
    }
    None
}

impl SseSplitter {
    pub fn new(max_event: usize) -> SseSplitter {
        SseSplitter { carry: Vec::new(), skipping: false, max_event, oversized: 0 }
    }

    /// Feeds the next piece of the body; `on_event` gets the raw bytes of each completed event
    /// (without its terminating blank line). Empty events (runs of blank lines) are not handed out.
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&[u8])) {
        if !self.carry.is_empty() || self.skipping {
            match self.finish_carried(input) {
                Some(rest) => {
                    if !self.skipping && !self.carry.is_empty() {
                        self.hand_out(&mut *on_event);
                    }
                    self.end_event();
                    input = &input[rest..];
                }
                None => return,
            }
        }
        while let Some((end, next)) = boundary(input) {
            if end > self.max_event {
                self.oversized += 1;
            } else if end > 0 {
                on_event(&input[..end]);
            }
            input = &input[next..];
        }
        self.keep(input);
    }

    /// The body ended: an event left without its blank line is still handed out (a stream may
    /// end right after its last `data:` line).
    pub fn finish(&mut self, on_event: &mut impl FnMut(&[u8])) {
        let len = trim_line_ends(&self.carry).len();
        if !self.skipping && len > 0 {
            self.carry.truncate(len);
            self.hand_out(on_event);
        }
        self.end_event();
    }

    /// Hands out the carried event, unless it is over the size limit.
    fn hand_out(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.carry.len() > self.max_event {
            self.oversized += 1;
        } else {
            on_event(&self.carry);
        }
    }

    /// With an unfinished event carried over: finds where it ends in `input`, appending its bytes
    /// to the carry. Returns the offset in `input` after the boundary, or None when the event
    /// goes on past `input` (all of which was taken).
    fn finish_carried(&mut self, input: &[u8]) -> Option<usize> {
        // A boundary straddling the junction starts with a `\n` in the carry's last two bytes.
        let k = self.carry.len().min(2);
        let mut window = [0u8; 5];
        let head = input.len().min(3);
        window[..k].copy_from_slice(&self.carry[self.carry.len() - k..]);
        window[k..k + head].copy_from_slice(&input[..head]);
        if let Some((end, next)) = boundary(&window[..k + head]) {
            if end < k {
                self.carry.truncate(self.carry.len() - k + end);
                return Some(next - k);
            }
        }
        match boundary(input) {
            Some((end, next)) => {
                self.append(&input[..end]);
                Some(next)
            }
            None => {
                self.append(input);
                None
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.skipping {
            // Only the last two bytes matter: a boundary may begin there.
            let tail = [self.carry.as_slice(), bytes].concat();
            self.carry.clear();
            self.carry.extend_from_slice(&tail[tail.len().saturating_sub(2)..]);
            return;
        }
        // The carry may end with the first bytes of a boundary (`\n`, `\n\r`), not the event's.
        if self.carry.len() + bytes.len() > self.max_event + 2 {
            self.skipping = true;
            self.oversized += 1;
            self.append(bytes);
            return;
        }
        self.carry.extend_from_slice(bytes);
    }

    /// Starts a new event after `input`'s last boundary: keeps its unfinished bytes.
    fn keep(&mut self, rest: &[u8]) {
        debug_assert!(self.carry.is_empty() && !self.skipping);
        self.append(rest);
    }

    fn end_event(&mut self) {
        self.carry.clear();
        self.skipping = false;
        if self.carry.capacity() > 64 * 1024 {
            self.carry.shrink_to(64 * 1024);
        }
    }
}

fn trim_line_ends(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = b {
        b = rest;
    }
    b
}

/// The fields of one event that the scanner uses.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, when present.
    pub name: Option<&'a [u8]>,
    /// The `data:` lines joined with `\n` (one leading space after the colon removed, as the SSE
    /// specification says). Borrowed when the event has a single data line, as providers send.
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// Reads an event's fields; comment lines (`:`) and unknown fields are skipped.
pub fn parse_event(raw: &[u8]) -> SseEvent<'_> {
    let mut name = None;
    let mut data: Option<std::borrow::Cow<'_, [u8]>> = None;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => continue,
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                data = Some(match data {
                    None => std::borrow::Cow::Borrowed(value),
                    Some(prev) => {
                        let mut joined = prev.into_owned();
                        joined.push(b'\n');
                        joined.extend_from_slice(value);
                        std::borrow::Cow::Owned(joined)
                    }
                })
            }
            b"event" => name = Some(value),
            _ => {}
        }
    }
    SseEvent { name, data: data.unwrap_or(std::borrow::Cow::Borrowed(&b""[..])) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(pieces: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, u64) {
        let mut s = SseSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.feed(p, &mut |e| out.push(e.to_vec()));
        }
        s.finish(&mut |e| out.push(e.to_vec()));
        (out, s.oversized)
    }

    /// The naive oracle: the whole body at once, boundaries found by a plain scan.
    fn oracle(body: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'\n' {
                let sep = if body.get(i + 1) == Some(&b'\n') {
                    2
                } else if body.get(i + 1) == Some(&b'\r') && body.get(i + 2) == Some(&b'\n') {
                    3
                } else {
                    0
                };
                if sep > 0 {
                    if i > start {
                        out.push(body[start..i].to_vec());
                    }
                    start = i + sep;
                    i = start;
                    continue;
                }
            }
            i += 1;
        }
        let tail = trim_line_ends(&body[start..]);
        if !tail.is_empty() {
            out.push(tail.to_vec());
        }
        out
    }

    #[test]
    fn splits_on_every_blank_line_form() {
        let body = b"data: a\n\ndata: b\r\n\r\nevent: x\ndata: c\n\r\ndata: d\r\n\n\n\ndata: e";
        let (events, _) = split_all(&[body], MAX_EVENT_BYTES);
        let want: Vec<&[u8]> = vec![b"data: a", b"data: b\r", b"event: x\ndata: c", b"data: d\r", b"data: e"];
        assert_eq!(events, want);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let body: &[u8] = b"event: message_start\ndata: {\"a\":1}\n\n: comment\n\ndata: {\"b\": 2}\r\n\r\ndata: x\n\r\n\ndata: [DONE]\n\n";
        let want = oracle(body);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let (got, _) = split_all(&[&body[..i], &body[i..j], &body[j..]], MAX_EVENT_BYTES);
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let body: &[u8] = b"data: 1\r\n\r\ndata: 2\n\ndata: 3\n\r\ndata: 4\r\n\n";
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(split_all(&pieces, MAX_EVENT_BYTES).0, oracle(body));
    }

    #[test]
    fn random_bodies_match_the_oracle() {
        // A small deterministic generator: bodies drawn from the bytes that matter to framing.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\n\n\r\rda: {}x";
        for _ in 0..3000 {
            let len = (next() % 60) as usize;
            let body: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let n = 1 + (next() % 7) as usize;
                let end = (at + n).min(body.len());
                pieces.push(&body[at..end]);
                at = end;
            }
            assert_eq!(split_all(&pieces, MAX_EVENT_BYTES).0, oracle(&body), "{:?}", String::from_utf8_lossy(&body));
            // With a small size limit, whole and split agree too.
            assert_eq!(split_all(&pieces, 8), split_all(&[&body], 8), "{:?}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn an_oversized_event_is_skipped_and_the_next_one_kept() {
        let big = format!("data: {}\n\ndata: small\n\n", "x".repeat(100));
        for split in 0..big.len() {
            let (events, oversized) = split_all(&[&big.as_bytes()[..split], &big.as_bytes()[split..]], 50);
            assert_eq!(events, vec![b"data: small".to_vec()], "split at {split}");
            assert_eq!(oversized, 1);
        }
    }

    #[test]
    fn the_size_limit_is_the_same_however_the_event_ends() {
        // An event of exactly the limit, its blank line split after its first `\n` (found by
        // fuzzing: the carry held the event and that `\n`, one byte over, and was skipped).
        for len in [63, 64, 65] {
            let body = format!("data: x\n\n{}\n\n", "y".repeat(len));
            let whole = split_all(&[body.as_bytes()], 64);
            for at in 0..=body.len() {
                let (a, b) = body.as_bytes().split_at(at);
                assert_eq!(split_all(&[a, b], 64), whole, "event of {len} bytes, split at {at}");
            }
            assert_eq!(whole.0.len(), if len <= 64 { 2 } else { 1 });
        }
    }

    #[test]
    fn fields_are_read_as_the_spec_says() {
        let e = parse_event(b"event: response.completed\ndata: {\"x\":1}");
        assert_eq!(e.name, Some(&b"response.completed"[..]));
        assert_eq!(&*e.data, b"{\"x\":1}");
        let e = parse_event(b": keep-alive\r\ndata:{\"y\":2}\r\ndata:  z\r\nid: 4");
        assert_eq!(e.name, None);
        assert_eq!(&*e.data, b"{\"y\":2}\n z");
        assert_eq!(&*parse_event(b"retry: 10").data, b"");
    }
}
