//! Strict, incremental decoder for the HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1).
//!
//! The relay forwards the raw chunked bytes verbatim, so this decoder never rewrites anything:
//! it says where the body ends, hands the chunk data to an inspector on the side, and refuses
//! any framing that another parser might read differently (the raw material of request
//! smuggling). What it promises:
//! - it never panics, and never consumes a byte past the CRLF that ends the trailer section:
//!   what follows belongs to the next message on the connection;
//! - until the body is complete it consumes all of its input, carrying only a few counters
//!   between calls (no line buffer), so a caller never has to present bytes twice;
//! - an error is raised at the first offending byte, so the outcome does not depend on how the
//!   input was split across calls, and after an error every call returns that same error.

use std::fmt;

/// Longest chunk-size line, extensions and CRLF included. Senders put a few hex digits there,
/// and we ignore extensions anyway; the bound stops a peer from keeping us on one endless line,
/// while leaving room for the odd legitimate extension.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Largest trailer section, counting every byte after the last-chunk line. Trailers are rare
/// and small; the bound keeps a peer from streaming unlimited bytes after the body that no
/// body limit would count.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    BadChunkSize,
    ChunkSizeOverflow,
    BadExtension,
    LineTooLong,
    MissingCrlfAfterData,
    BadTrailer,
    TrailersTooLarge,
    BodyTooLarge,
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkedError::BadChunkSize => "invalid chunk size",
            ChunkedError::ChunkSizeOverflow => "chunk size overflows",
            ChunkedError::BadExtension => "invalid chunk extension",
            ChunkedError::LineTooLong => "chunk size line too long",
            ChunkedError::MissingCrlfAfterData => "missing crlf after chunk data",
            ChunkedError::BadTrailer => "invalid trailer field",
            ChunkedError::TrailersTooLarge => "trailer section too large",
            ChunkedError::BodyTooLarge => "chunked body too large",
        })
    }
}

impl std::error::Error for ChunkedError {}

/// Position inside a chunk-size line: `chunk-size *( BWS ";" BWS name [ BWS "=" BWS value ] ) CRLF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Hex digits of the size; `digits` stays false until the first one, so an empty size fails.
    Size {
        digits: bool,
    },
    /// Whitespace after the size: only `;` may follow (trailing whitespace is not allowed).
    SizeWs,
    /// After `;`: optional whitespace, then the name.
    ExtNameStart,
    ExtName,
    /// Whitespace after a name: `=` or `;` must follow.
    ExtNameWs,
    /// After `=`: optional whitespace, then a token or a quoted-string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    /// After a backslash inside a quoted-string.
    ExtQuotedEscape,
    /// Right after the closing quote.
    ExtQuoteEnd,
    /// Whitespace after a value: only `;` may follow.
    ExtValueWs,
    /// CR seen; only LF may follow.
    Lf,
}

/// Position inside the trailer section: `*( name ":" value CRLF ) CRLF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trailer {
    LineStart,
    Name,
    Value,
    /// CR ending a field line seen.
    ValueLf,
    /// CR of the empty line seen: its LF ends the message.
    EndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Line(Line),
    Data { remaining: u64 },
    DataCr,
    DataLf,
    Trailer(Trailer),
    Done,
    Failed(ChunkedError),
}

/// Incremental chunked-body decoder; see the module documentation for its guarantees.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_body: u64,
    data_len: u64,
    /// Size being read from the current chunk-size line.
    size: u64,
    /// Bytes of the current chunk-size line, or of the whole trailer section, seen so far.
    line_len: usize,
}

impl ChunkedDecoder {
    /// `max_body`: limit on the total decoded data bytes. `BodyTooLarge` is raised as soon as a
    /// chunk-size line announces a size that would exceed it, before any of that chunk is read.
    pub fn new(max_body: u64) -> Self {
        ChunkedDecoder { state: State::Line(Line::Size { digits: false }), max_body, data_len: 0, size: 0, line_len: 0 }
    }

    /// Consumes a prefix of `input` and returns its length, calling `on_data` with each piece of
    /// chunk data (slices of `input`; a chunk may be split across pieces arbitrarily).
    ///
    /// While the body is incomplete the whole of `input` is consumed. Once it is complete the
    /// returned length stops right after the final CRLF, and later calls return `Ok(0)`. After an
    /// error every later call returns the same error.
    pub fn decode(&mut self, input: &[u8], on_data: &mut dyn FnMut(&[u8])) -> Result<usize, ChunkedError> {
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        self.run(input, on_data).inspect_err(|&e| self.state = State::Failed(e))
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Total chunk-data bytes decoded so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    fn run(&mut self, input: &[u8], on_data: &mut dyn FnMut(&[u8])) -> Result<usize, ChunkedError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Data { remaining } => {
                    let avail = input.len() - pos;
                    let n = if remaining < avail as u64 { remaining as usize } else { avail };
                    on_data(&input[pos..pos + n]);
                    pos += n;
                    self.data_len += n as u64;
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 { State::DataCr } else { State::Data { remaining } };
                }
                // Exactly CRLF must follow the data: anything else means the sender's data was
                // longer or shorter than it declared, and guessing which is how smuggling starts.
                State::DataCr => {
                    if input[pos] != b'\r' {
                        return Err(ChunkedError::MissingCrlfAfterData);
                    }
                    pos += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[pos] != b'\n' {
                        return Err(ChunkedError::MissingCrlfAfterData);
                    }
                    pos += 1;
                    self.size = 0;
                    self.line_len = 0;
                    self.state = State::Line(Line::Size { digits: false });
                }
                State::Line(mut line) => {
                    let mut complete = false;
                    for &b in &input[pos..] {
                        pos += 1;
                        self.line_len += 1;
                        if self.line_len > MAX_CHUNK_LINE {
                            return Err(ChunkedError::LineTooLong);
                        }
                        match line_step(line, b, &mut self.size)? {
                            Some(next) => line = next,
                            None => {
                                complete = true;
                                break;
                            }
                        }
                    }
                    if complete {
                        self.end_size_line()?;
                    } else {
                        self.state = State::Line(line);
                    }
                }
                State::Trailer(mut trailer) => {
                    let mut complete = false;
                    for &b in &input[pos..] {
                        pos += 1;
                        self.line_len += 1;
                        if self.line_len > MAX_TRAILER_BYTES {
                            return Err(ChunkedError::TrailersTooLarge);
                        }
                        match trailer_step(trailer, b)? {
                            Some(next) => trailer = next,
                            None => {
                                complete = true;
                                break;
                            }
                        }
                    }
                    self.state = if complete { State::Done } else { State::Trailer(trailer) };
                }
                State::Done => break,
                State::Failed(e) => return Err(e),
            }
        }
        Ok(pos)
    }

    fn end_size_line(&mut self) -> Result<(), ChunkedError> {
        let size = self.size;
        self.line_len = 0;
        if size == 0 {
            self.state = State::Trailer(Trailer::LineStart);
            return Ok(());
        }
        // `data_len <= max_body` always holds, since every chunk is checked here before it is read.
        if size > self.max_body.saturating_sub(self.data_len) {
            return Err(ChunkedError::BodyTooLarge);
        }
        self.state = State::Data { remaining: size };
        Ok(())
    }
}

/// Advances a chunk-size line by one byte; `None` means the line ended (its LF was `b`).
fn line_step(line: Line, b: u8, size: &mut u64) -> Result<Option<Line>, ChunkedError> {
    use ChunkedError::{BadChunkSize, BadExtension};
    // LF ends a line only right after CR. Some parsers take a bare LF as a line end and others
    // do not, which is exactly the disagreement smuggling needs, so it is refused wherever it is.
    if b == b'\n' {
        return if line == Line::Lf { Ok(None) } else { Err(BadChunkSize) };
    }
    let next = match line {
        Line::Size { digits } => match hex_value(b) {
            Some(d) => {
                if *size > u64::MAX >> 4 {
                    return Err(ChunkedError::ChunkSizeOverflow);
                }
                *size = (*size << 4) | u64::from(d);
                Line::Size { digits: true }
            }
            None if !digits => return Err(BadChunkSize),
            None => match b {
                b'\r' => Line::Lf,
                b';' => Line::ExtNameStart,
                b' ' | b'\t' => Line::SizeWs,
                _ => return Err(BadChunkSize),
            },
        },
        Line::SizeWs => match b {
            b' ' | b'\t' => Line::SizeWs,
            b';' => Line::ExtNameStart,
            _ => return Err(BadChunkSize),
        },
        Line::ExtNameStart => match b {
            b' ' | b'\t' => Line::ExtNameStart,
            _ if is_tchar(b) => Line::ExtName,
            _ => return Err(BadExtension),
        },
        Line::ExtName => match b {
            _ if is_tchar(b) => Line::ExtName,
            b' ' | b'\t' => Line::ExtNameWs,
            b'=' => Line::ExtValueStart,
            b';' => Line::ExtNameStart,
            b'\r' => Line::Lf,
            _ => return Err(BadExtension),
        },
        Line::ExtNameWs => match b {
            b' ' | b'\t' => Line::ExtNameWs,
            b'=' => Line::ExtValueStart,
            b';' => Line::ExtNameStart,
            _ => return Err(BadExtension),
        },
        Line::ExtValueStart => match b {
            b' ' | b'\t' => Line::ExtValueStart,
            b'"' => Line::ExtQuoted,
            _ if is_tchar(b) => Line::ExtToken,
            _ => return Err(BadExtension),
        },
        Line::ExtToken => match b {
            _ if is_tchar(b) => Line::ExtToken,
            b' ' | b'\t' => Line::ExtValueWs,
            b';' => Line::ExtNameStart,
            b'\r' => Line::Lf,
            _ => return Err(BadExtension),
        },
        Line::ExtQuoted => match b {
            b'"' => Line::ExtQuoteEnd,
            b'\\' => Line::ExtQuotedEscape,
            // qdtext: the quote and backslash were matched above.
            _ if is_field_byte(b) => Line::ExtQuoted,
            _ => return Err(BadExtension),
        },
        Line::ExtQuotedEscape if is_field_byte(b) => Line::ExtQuoted,
        Line::ExtQuotedEscape => return Err(BadExtension),
        Line::ExtQuoteEnd => match b {
            b'\r' => Line::Lf,
            b';' => Line::ExtNameStart,
            b' ' | b'\t' => Line::ExtValueWs,
            _ => return Err(BadExtension),
        },
        Line::ExtValueWs => match b {
            b' ' | b'\t' => Line::ExtValueWs,
            b';' => Line::ExtNameStart,
            _ => return Err(BadExtension),
        },
        // A CR not followed by LF.
        Line::Lf => return Err(BadChunkSize),
    };
    Ok(Some(next))
}

/// Advances the trailer section by one byte; `None` means the section (and message) ended.
fn trailer_step(trailer: Trailer, b: u8) -> Result<Option<Trailer>, ChunkedError> {
    let next = match trailer {
        Trailer::LineStart if b == b'\r' => Trailer::EndLf,
        // SP or HTAB here would be obs-fold, which RFC 9112 lets us reject outright.
        Trailer::LineStart | Trailer::Name if is_tchar(b) => Trailer::Name,
        Trailer::Name if b == b':' => Trailer::Value,
        Trailer::Value if b == b'\r' => Trailer::ValueLf,
        Trailer::Value if is_field_byte(b) => Trailer::Value,
        Trailer::ValueLf if b == b'\n' => Trailer::LineStart,
        Trailer::EndLf if b == b'\n' => return Ok(None),
        _ => return Err(ChunkedError::BadTrailer),
    };
    Ok(Some(next))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 tchar, as a table because it sits on the per-byte path of every line.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        i += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// HTAB / SP / VCHAR / obs-text: what a field value, a quoted-pair, and (minus `"` and `\`)
/// qdtext may hold. Excludes CR, LF, NUL and the other controls.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::ChunkedError::*;
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        /// The body ended after `consumed` bytes.
        Done {
            data: Vec<u8>,
            consumed: usize,
        },
        /// All input consumed; more is needed.
        Partial {
            data: Vec<u8>,
        },
        Failed {
            data: Vec<u8>,
            err: ChunkedError,
        },
    }

    /// Feeds `parts` in order the way the relay does, checking the calling contract on each call.
    fn feed(parts: &[&[u8]], max_body: u64) -> Outcome {
        let mut dec = ChunkedDecoder::new(max_body);
        let mut data = Vec::new();
        let mut consumed = 0;
        for part in parts {
            let was_done = dec.is_done();
            let r = dec.decode(part, &mut |piece| {
                assert!(!piece.is_empty(), "empty data piece");
                data.extend_from_slice(piece);
            });
            assert_eq!(dec.data_len(), data.len() as u64);
            match r {
                Ok(n) => {
                    assert!(n <= part.len());
                    if was_done {
                        assert_eq!(n, 0, "consumed bytes after the end");
                    }
                    if !dec.is_done() {
                        assert_eq!(n, part.len(), "left input unconsumed while not done");
                    }
                    consumed += n;
                }
                Err(err) => {
                    assert!(!dec.is_done());
                    assert_eq!(dec.decode(b"0\r\n\r\n", &mut |_| panic!("data after an error")), Err(err));
                    assert_eq!(dec.decode(b"", &mut |_| panic!("data after an error")), Err(err));
                    return Outcome::Failed { data, err };
                }
            }
        }
        if dec.is_done() {
            assert_eq!(dec.decode(b"5\r\nhello\r\n", &mut |_| panic!("data after the end")), Ok(0));
            Outcome::Done { data, consumed }
        } else {
            Outcome::Partial { data }
        }
    }

    /// One call, every two-way split, and byte by byte must all agree; returns the outcome.
    fn check_splits(input: &[u8], max_body: u64) -> Outcome {
        let whole = feed(&[input], max_body);
        // The limit probes are 4-16 KiB of one repeated byte; splitting inside that run at every
        // point adds nothing but quadratic time, so there only every 97th point is tried.
        let edge = 512;
        let points = (0..=input.len()).filter(|&i| i < edge || i + edge > input.len() || i % 97 == 0);
        for i in points {
            assert_eq!(feed(&[&input[..i], &input[i..]], max_body), whole, "split at {i} of {:?}", show(input));
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(feed(&bytes, max_body), whole, "byte by byte: {:?}", show(input));
        whole
    }

    fn show(b: &[u8]) -> String {
        let s = String::from_utf8_lossy(b);
        if s.len() > 200 {
            format!("{}...({} bytes)", &s[..200], b.len())
        } else {
            s.into_owned()
        }
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// `1;aaa...` with a size line of exactly `len` bytes including its CRLF.
    fn size_line_of_len(len: usize) -> Vec<u8> {
        let mut v = b"1;".to_vec();
        v.resize(len - 2, b'a');
        v.extend_from_slice(b"\r\n");
        v
    }

    /// A trailer section of exactly `len` bytes, final CRLF included.
    fn trailers_of_len(len: usize) -> Vec<u8> {
        let mut v = b"X:".to_vec();
        v.resize(len - 4, b'v');
        v.extend_from_slice(b"\r\n\r\n");
        v
    }

    fn valid_cases() -> Vec<(Vec<u8>, Vec<u8>)> {
        let simple: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", b"abc"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"1F\r\n0123456789012345678901234567890\r\n0\r\n\r\n", b"0123456789012345678901234567890"),
            (b"1f\r\n0123456789012345678901234567890\r\n0\r\n\r\n", b"0123456789012345678901234567890"),
            (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
            (b"00000000000000000000001\r\nx\r\n0\r\n\r\n", b"x"),
            // Data that looks like framing is still just data.
            (b"7\r\n0\r\n\r\nab\r\n0\r\n\r\n", b"0\r\n\r\nab"),
            (b"3\r\n\n\r\x00\r\n0\r\n\r\n", b"\n\r\x00"),
            // Extensions.
            (b"5;a\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;a=b\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5 ; a = b\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\t;\tname\t=\t\"\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;a;b=c;d=\"e f\";g\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;q=\"say \\\"hi\\\" \\\\ \\\x80\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;q=\"\x80\xff\t;=\" ;r=s\r\nhello\r\n0\r\n\r\n".as_slice(), b"hello"),
            (b"5;!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;a=\"x\";b\r\nhello\r\n0;last=1\r\n\r\n", b"hello"),
            // Trailers.
            (b"5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n", b"hello"),
            (b"0\r\nA: 1\r\nB: 2\r\nc:\r\n\r\n", b""),
            (b"0\r\nX:  a b \t\r\n\r\n", b""),
            (b"0\r\nX:\t\x80\xff~!\r\n\r\n", b""),
            (b"0\r\nX:a:b\"c\r\n\r\n", b""),
        ];
        let mut cases: Vec<(Vec<u8>, Vec<u8>)> = simple.iter().map(|(i, d)| (i.to_vec(), d.to_vec())).collect();
        cases.push((cat(&[&size_line_of_len(MAX_CHUNK_LINE), b"x\r\n0\r\n\r\n"]), b"x".to_vec()));
        cases.push((cat(&[b"0\r\n", &trailers_of_len(MAX_TRAILER_BYTES)]), vec![]));
        cases
    }

    const SUFFIXES: &[&[u8]] = &[b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"0\r\n\r\n", b"\r\n", b"\n"];

    #[test]
    fn valid_bodies_end_exactly_where_they_should() {
        let mut n = 0;
        for (body, data) in valid_cases() {
            for suffix in SUFFIXES {
                let input = cat(&[&body, suffix]);
                let expected = Outcome::Done { data: data.clone(), consumed: body.len() };
                assert_eq!(check_splits(&input, u64::MAX), expected, "{:?}", show(&input));
                // A limit equal to the body size is still fine.
                assert_eq!(feed(&[&input], data.len() as u64), expected);
                n += 1;
            }
        }
        eprintln!("{n} valid inputs");
    }

    fn invalid_cases() -> Vec<(&'static str, Vec<u8>, u64, ChunkedError)> {
        let m = u64::MAX;
        let simple: &[(&str, &[u8], u64, ChunkedError)] = &[
            ("empty size", b"\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("extension without size", b";a\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("plus sign", b"+5\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("minus sign", b"-5\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("leading space", b" 5\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("leading tab", b"\t5\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("trailing space", b"5 \r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("trailing tab", b"5\t\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("space inside size", b"5 5\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("non-hex digit", b"5g\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("underscore", b"1_0\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("bare LF after size", b"5\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("bare CR after size", b"5\rhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("CR CR LF after size", b"5\r\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("bare LF in extension", b"5;a\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("bare LF in quoted extension", b"5;a=\"x\ny\"\r\nhello\r\n0\r\n\r\n", m, BadChunkSize),
            ("bare LF after last chunk", b"0\n\r\n", m, BadChunkSize),
            ("bare LF after data", b"5\r\nhello\n0\r\n\r\n", m, MissingCrlfAfterData),
            ("bare CR after data", b"5\r\nhello\r0\r\n\r\n", m, MissingCrlfAfterData),
            ("data longer than declared", b"5\r\nhello!\r\n0\r\n\r\n", m, MissingCrlfAfterData),
            ("data shorter than declared", b"5\r\nhel\r\n3\r\nabc\r\n0\r\n\r\n", m, MissingCrlfAfterData),
            ("no CRLF before last chunk", b"5\r\nhello0\r\n\r\n", m, MissingCrlfAfterData),
            ("17 hex digits", b"FFFFFFFFFFFFFFFFF\r\n", m, ChunkSizeOverflow),
            ("2^64", b"10000000000000000\r\n", m, ChunkSizeOverflow),
            ("overflow after leading zeros", b"0000FFFFFFFFFFFFFFFF0\r\n", m, ChunkSizeOverflow),
            ("bad char in ext name", b"5;a@b\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("empty ext name", b"5;=b\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("empty ext", b"5;\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("empty ext between", b"5;a;;b\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("empty ext value", b"5;a=\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("bad char in ext value", b"5;a=b/c\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("two ext values", b"5;a=b c\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("space inside ext name", b"5;a b\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("trailing space after ext name", b"5;a \r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("trailing space after ext value", b"5;a=b \r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("trailing space after quoted", b"5;a=\"b\" \r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("junk after quoted", b"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("unterminated quoted-string", b"5;a=\"abc\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("NUL in quoted-string", b"5;a=\"a\x00c\"\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("control escaped in quoted-string", b"5;a=\"a\\\x01\"\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("DEL in quoted-string", b"5;a=\"\x7f\"\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("quote inside token", b"5;a=b\"c\"\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("non-ASCII ext name", b"5;\xc3\xa9\r\nhello\r\n0\r\n\r\n", m, BadExtension),
            ("obs-fold in trailer", b"0\r\nA: b\r\n c\r\n\r\n", m, BadTrailer),
            ("trailer starting with tab", b"0\r\n\tA: b\r\n\r\n", m, BadTrailer),
            ("trailer without colon", b"0\r\nAbc\r\n\r\n", m, BadTrailer),
            ("space before colon", b"0\r\nA : b\r\n\r\n", m, BadTrailer),
            ("empty trailer name", b"0\r\n: b\r\n\r\n", m, BadTrailer),
            ("bad char in trailer name", b"0\r\nA(b): c\r\n\r\n", m, BadTrailer),
            ("NUL in trailer value", b"0\r\nA: b\x00c\r\n\r\n", m, BadTrailer),
            ("bare LF in trailer", b"0\r\nA: b\nC: d\r\n\r\n", m, BadTrailer),
            ("bare CR in trailer", b"0\r\nA: b\rc\r\n\r\n", m, BadTrailer),
            ("bare LF ending trailers", b"0\r\nA: b\r\n\n", m, BadTrailer),
            ("bare CR ending trailers", b"0\r\n\rX", m, BadTrailer),
            ("body over max_body", b"5\r\nhello\r\n0\r\n\r\n", 4, BodyTooLarge),
            ("body over max_body over two chunks", b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5, BodyTooLarge),
            ("body over max_body zero", b"1\r\na\r\n0\r\n\r\n", 0, BodyTooLarge),
            ("huge chunk", b"FFFFFFFFFFFFFFFF\r\n", 1 << 20, BodyTooLarge),
        ];
        let mut cases: Vec<_> = simple.iter().map(|&(n, i, mb, e)| (n, i.to_vec(), mb, e)).collect();
        cases.push((
            "line over MAX_CHUNK_LINE",
            cat(&[&size_line_of_len(MAX_CHUNK_LINE + 1), b"x\r\n0\r\n\r\n"]),
            m,
            LineTooLong,
        ));
        cases.push(("endless leading zeros", vec![b'0'; MAX_CHUNK_LINE + 1], m, LineTooLong));
        cases.push((
            "trailers over MAX_TRAILER_BYTES",
            cat(&[b"0\r\n", &trailers_of_len(MAX_TRAILER_BYTES + 1)]),
            m,
            TrailersTooLarge,
        ));
        cases
    }

    #[test]
    fn invalid_bodies_are_rejected_with_the_right_error() {
        let cases = invalid_cases();
        for (name, input, max_body, err) in &cases {
            match check_splits(input, *max_body) {
                Outcome::Failed { err: got, .. } => assert_eq!(got, *err, "{name}"),
                other => panic!("{name}: expected {err:?}, got {other:?}"),
            }
        }
        eprintln!("{} invalid inputs", cases.len());
    }

    #[test]
    fn data_before_an_error_is_still_handed_out() {
        let out = feed(&[b"3\r\nabc\r\n3\r\ndef\r\n"], 5);
        assert_eq!(out, Outcome::Failed { data: b"abc".to_vec(), err: BodyTooLarge });
        let out = feed(&[b"5\r\nhello!"], u64::MAX);
        assert_eq!(out, Outcome::Failed { data: b"hello".to_vec(), err: MissingCrlfAfterData });
    }

    #[test]
    fn incomplete_bodies_consume_everything_and_wait() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"5", b""),
            (b"5\r", b""),
            (b"5\r\nhel", b"hel"),
            (b"5\r\nhello", b"hello"),
            (b"5\r\nhello\r\n", b"hello"),
            (b"5;a=\"x", b""),
            (b"0\r\n", b""),
            (b"0\r\nX: y\r\n", b""),
            (b"0\r\n\r", b""),
            (b"FFFFFFFFFFFFFFFF\r\nabc", b"abc"),
        ];
        for (input, data) in cases {
            assert_eq!(check_splits(input, u64::MAX), Outcome::Partial { data: data.to_vec() }, "{:?}", show(input));
        }
    }

    #[test]
    fn large_data_is_handed_out_as_input_slices() {
        let mut input = b"186A0\r\n".to_vec();
        input.resize(7 + 100_000, b'x');
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut dec = ChunkedDecoder::new(u64::MAX);
        let mut pieces = Vec::new();
        let n = dec.decode(&input, &mut |p| pieces.push((p.as_ptr() as usize, p.len()))).unwrap();
        assert_eq!(n, input.len());
        assert!(dec.is_done());
        assert_eq!(pieces, vec![(input[7..].as_ptr() as usize, 100_000)]);
        assert_eq!(dec.data_len(), 100_000);
    }

    #[test]
    fn errors_display_as_short_lowercase_messages() {
        assert_eq!(BadChunkSize.to_string(), "invalid chunk size");
        for e in [
            BadChunkSize,
            ChunkSizeOverflow,
            BadExtension,
            LineTooLong,
            MissingCrlfAfterData,
            BadTrailer,
            TrailersTooLarge,
            BodyTooLarge,
        ] {
            let s = e.to_string();
            assert!(!s.is_empty() && s == s.to_lowercase(), "{s}");
        }
    }

    // ---- Reference decoder ----------------------------------------------------------------
    //
    // Recursive descent over the whole input at once, written for clarity, not speed. It
    // shares no code with the decoder; it reports an error at the first byte that cannot
    // continue the grammar, and a line limit when a byte lies past it, which is also what the
    // incremental decoder promises.

    enum Stop {
        Incomplete,
        Fail(ChunkedError),
    }

    struct Reference<'a> {
        buf: &'a [u8],
        pos: usize,
        limit_start: usize,
        limit: usize,
        limit_err: ChunkedError,
    }

    fn ref_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    fn ref_field_byte(b: u8) -> bool {
        b == b' ' || b == b'\t' || b.is_ascii_graphic() || b >= 0x80
    }

    /// Inside a size line a LF is always a framing error, whatever else was expected.
    fn ref_fail<T>(kind: ChunkedError, b: u8) -> Result<T, Stop> {
        Err(Stop::Fail(if b == b'\n' { BadChunkSize } else { kind }))
    }

    impl Reference<'_> {
        fn limit(&mut self, limit: usize, err: ChunkedError) {
            self.limit_start = self.pos;
            self.limit = limit;
            self.limit_err = err;
        }

        fn peek(&self) -> Result<u8, Stop> {
            let &b = self.buf.get(self.pos).ok_or(Stop::Incomplete)?;
            if self.pos - self.limit_start >= self.limit {
                return Err(Stop::Fail(self.limit_err));
            }
            Ok(b)
        }

        fn next(&mut self) -> Result<u8, Stop> {
            let b = self.peek()?;
            self.pos += 1;
            Ok(b)
        }

        fn ws(&mut self) -> Result<bool, Stop> {
            let mut any = false;
            while matches!(self.peek()?, b' ' | b'\t') {
                self.pos += 1;
                any = true;
            }
            Ok(any)
        }

        fn token(&mut self) -> Result<(), Stop> {
            let b = self.next()?;
            if !ref_tchar(b) {
                return ref_fail(BadExtension, b);
            }
            while ref_tchar(self.peek()?) {
                self.pos += 1;
            }
            Ok(())
        }

        /// After the opening quote.
        fn quoted(&mut self) -> Result<(), Stop> {
            loop {
                match self.next()? {
                    b'"' => return Ok(()),
                    b'\\' => {
                        let b = self.next()?;
                        if !ref_field_byte(b) {
                            return ref_fail(BadExtension, b);
                        }
                    }
                    b if ref_field_byte(b) => {}
                    b => return ref_fail(BadExtension, b),
                }
            }
        }

        fn size_line(&mut self) -> Result<u64, Stop> {
            let mut size: u64 = 0;
            let mut digits = 0;
            while let Some(d) = char::from(self.peek()?).to_digit(16) {
                size = size.checked_mul(16).ok_or(Stop::Fail(ChunkSizeOverflow))? + u64::from(d);
                self.pos += 1;
                digits += 1;
            }
            if digits == 0 {
                return ref_fail(BadChunkSize, self.peek()?);
            }
            // Junk before any extension is a bad size; after one it is a bad extension.
            let mut kind = BadChunkSize;
            loop {
                let ws = self.ws()?;
                match self.next()? {
                    b'\r' if !ws => {
                        return if self.next()? == b'\n' { Ok(size) } else { Err(Stop::Fail(BadChunkSize)) };
                    }
                    b';' => {
                        kind = BadExtension;
                        self.ws()?;
                        self.token()?;
                        let ws = self.ws()?;
                        match self.peek()? {
                            b'=' => {
                                self.pos += 1;
                                self.ws()?;
                                if self.peek()? == b'"' {
                                    self.pos += 1;
                                    self.quoted()?;
                                } else {
                                    self.token()?;
                                }
                            }
                            b';' => {}
                            b if ws => return ref_fail(BadExtension, b),
                            _ => {}
                        }
                    }
                    b => return ref_fail(kind, b),
                }
            }
        }

        fn trailers(&mut self) -> Result<(), Stop> {
            loop {
                let b = self.next()?;
                if b == b'\r' {
                    return if self.next()? == b'\n' { Ok(()) } else { Err(Stop::Fail(BadTrailer)) };
                }
                if !ref_tchar(b) {
                    return Err(Stop::Fail(BadTrailer));
                }
                while ref_tchar(self.peek()?) {
                    self.pos += 1;
                }
                if self.next()? != b':' {
                    return Err(Stop::Fail(BadTrailer));
                }
                loop {
                    match self.next()? {
                        b'\r' => break,
                        b if ref_field_byte(b) => {}
                        _ => return Err(Stop::Fail(BadTrailer)),
                    }
                }
                if self.next()? != b'\n' {
                    return Err(Stop::Fail(BadTrailer));
                }
            }
        }
    }

    fn reference(buf: &[u8], max_body: u64) -> Outcome {
        let mut r = Reference { buf, pos: 0, limit_start: 0, limit: usize::MAX, limit_err: BadChunkSize };
        let mut data = Vec::new();
        let mut body = || -> Result<usize, Stop> {
            loop {
                r.limit(MAX_CHUNK_LINE, LineTooLong);
                let size = r.size_line()?;
                if size == 0 {
                    break;
                }
                if data.len() as u128 + u128::from(size) > u128::from(max_body) {
                    return Err(Stop::Fail(BodyTooLarge));
                }
                r.limit(usize::MAX, BadChunkSize);
                let avail = &buf[r.pos..];
                let take = if u64::try_from(avail.len()).unwrap() > size { size as usize } else { avail.len() };
                data.extend_from_slice(&avail[..take]);
                r.pos += take;
                if (take as u64) < size {
                    return Err(Stop::Incomplete);
                }
                if r.next()? != b'\r' || r.next()? != b'\n' {
                    return Err(Stop::Fail(MissingCrlfAfterData));
                }
            }
            r.limit(MAX_TRAILER_BYTES, TrailersTooLarge);
            r.trailers()?;
            Ok(r.pos)
        };
        match body() {
            Ok(consumed) => Outcome::Done { data, consumed },
            Err(Stop::Incomplete) => Outcome::Partial { data },
            Err(Stop::Fail(err)) => Outcome::Failed { data, err },
        }
    }

    #[test]
    fn reference_agrees_with_the_tables() {
        for (body, data) in valid_cases() {
            for suffix in SUFFIXES {
                let input = cat(&[&body, suffix]);
                assert_eq!(reference(&input, u64::MAX), Outcome::Done { data: data.clone(), consumed: body.len() });
            }
        }
        for (name, input, max_body, err) in invalid_cases() {
            assert_eq!(reference(&input, max_body), feed(&[&input], max_body), "{name}");
            assert!(matches!(reference(&input, max_body), Outcome::Failed { err: e, .. } if e == err), "{name}");
        }
    }

    // ---- Randomised comparison ------------------------------------------------------------

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }
        fn pick(&mut self, set: &[u8]) -> u8 {
            set[self.below(set.len())]
        }
    }

    const TCHARS: &[u8] = b"abcxyzABCXYZ0189!#$%&'*+-.^_`|~";
    /// Bytes that matter to the grammar, so mutations land on interesting ones.
    const SPICY: &[u8] = b"\r\n\r\n \t;;==\"\"\\::0aF+-xg\x00\x7f\x80\xff";

    fn gen_ws(rng: &mut Rng, out: &mut Vec<u8>) {
        if rng.one_in(3) {
            for _ in 0..=rng.below(2) {
                out.push(if rng.one_in(2) { b' ' } else { b'\t' });
            }
        }
    }

    fn gen_token(rng: &mut Rng, out: &mut Vec<u8>) {
        for _ in 0..=rng.below(6) {
            out.push(rng.pick(TCHARS));
        }
    }

    fn gen_ext(rng: &mut Rng, out: &mut Vec<u8>) {
        gen_ws(rng, out);
        out.push(b';');
        gen_ws(rng, out);
        gen_token(rng, out);
        if rng.one_in(2) {
            gen_ws(rng, out);
            out.push(b'=');
            gen_ws(rng, out);
            if rng.one_in(2) {
                gen_token(rng, out);
            } else {
                out.push(b'"');
                for _ in 0..rng.below(8) {
                    if rng.one_in(4) {
                        out.push(b'\\');
                        out.push(rng.pick(b"\"\\a \t\x80"));
                    } else {
                        out.push(rng.pick(b"a ;=,\t!#~\x80\xff"));
                    }
                }
                out.push(b'"');
            }
        }
    }

    /// Returns false when it wrote a line probing `MAX_CHUNK_LINE`.
    fn gen_size_line(rng: &mut Rng, size: u64, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        for _ in 0..if rng.one_in(4) { rng.below(4) } else { 0 } {
            out.push(b'0');
        }
        let hex = if rng.one_in(2) { format!("{size:x}") } else { format!("{size:X}") };
        out.extend_from_slice(hex.as_bytes());
        for _ in 0..if rng.one_in(3) { rng.below(3) } else { 0 } {
            gen_ext(rng, out);
        }
        let probe = rng.one_in(200);
        if probe {
            // One extension long enough to put the line within a few bytes of the limit.
            let target = MAX_CHUNK_LINE - 4 + rng.below(8);
            out.push(b';');
            while out.len() - start + 2 < target {
                out.push(b'n');
            }
        }
        out.extend_from_slice(b"\r\n");
        !probe
    }

    /// A chunked body, the data it carries, and whether it is plainly valid: false when it has
    /// a line probing a limit or an absurd size line.
    fn gen_body(rng: &mut Rng) -> (Vec<u8>, Vec<u8>, bool) {
        let mut plain = true;
        let mut out = Vec::new();
        let mut data = Vec::new();
        for _ in 0..rng.below(5) {
            if rng.one_in(150) {
                // A size of 15 to 18 hex digits: overflow or an absurd announcement.
                plain = false;
                out.push(rng.pick(b"123456789abcdefABCDEF"));
                for _ in 0..14 + rng.below(4) {
                    out.push(rng.pick(b"0123456789abcdefABCDEF"));
                }
                out.extend_from_slice(b"\r\n");
            }
            let size = match rng.below(8) {
                0..=2 => 1 + rng.below(3),
                3..=5 => 1 + rng.below(20),
                6 => 1 + rng.below(300),
                _ => 1 + rng.below(5000),
            };
            plain &= gen_size_line(rng, size as u64, &mut out);
            for _ in 0..size {
                let b = if rng.one_in(4) { rng.pick(SPICY) } else { rng.next() as u8 };
                out.push(b);
                data.push(b);
            }
            out.extend_from_slice(b"\r\n");
        }
        plain &= gen_size_line(rng, 0, &mut out);
        let trailer_start = out.len();
        for _ in 0..if rng.one_in(3) { rng.below(4) } else { 0 } {
            gen_token(rng, &mut out);
            out.push(b':');
            gen_ws(rng, &mut out);
            for _ in 0..rng.below(12) {
                out.push(rng.pick(b"abc \t:;\"\\~!\x80\xff"));
            }
            out.extend_from_slice(b"\r\n");
        }
        if rng.one_in(150) {
            // A field long enough to put the trailer section within a few bytes of its limit.
            plain = false;
            let target = MAX_TRAILER_BYTES - 4 + rng.below(8);
            out.extend_from_slice(b"Pad:");
            while out.len() - trailer_start + 4 < target {
                out.push(b'p');
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        (out, data, plain)
    }

    fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
        for _ in 0..=rng.below(3) {
            let at = rng.below(buf.len() + 1);
            let b = if rng.one_in(3) { rng.next() as u8 } else { rng.pick(SPICY) };
            match rng.below(4) {
                0 if at < buf.len() => buf[at] = b,
                1 => buf.insert(at, b),
                2 if at < buf.len() => {
                    buf.remove(at);
                }
                3 => buf.truncate(at),
                _ => {}
            }
        }
    }

    #[test]
    fn random_inputs_match_the_reference() {
        const ROUNDS: usize = 40_000;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut done, mut partial) = (0, 0);
        let mut errors = std::collections::BTreeMap::new();
        for round in 0..ROUNDS {
            let (body, data, plain) = gen_body(&mut rng);
            let mut input = body.clone();
            input.extend_from_slice(match rng.below(4) {
                0 => b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
                1 => b"0\r\n\r\n",
                2 => b"\r\n",
                _ => b"",
            });
            let max_body = match rng.below(6) {
                0 => (data.len() as u64).saturating_sub(rng.below(3) as u64),
                1 => data.len() as u64 + rng.below(2) as u64,
                _ => u64::MAX,
            };
            let mutated = !rng.one_in(3);
            if mutated {
                mutate(&mut rng, &mut input);
            }
            let expected = reference(&input, max_body);
            let got = feed(&[&input], max_body);
            assert_eq!(got, expected, "round {round}, max_body {max_body}: {:?}", show(&input));
            if !mutated && plain && max_body >= data.len() as u64 {
                assert_eq!(got, Outcome::Done { data, consumed: body.len() }, "round {round}");
            }
            if round % 8 == 0 {
                // Random multi-way splits must not change anything.
                let mut cuts: Vec<usize> = (0..=rng.below(4)).map(|_| rng.below(input.len() + 1)).collect();
                cuts.sort_unstable();
                let mut parts = Vec::new();
                let mut last = 0;
                for c in cuts {
                    parts.push(&input[last..c]);
                    last = c;
                }
                parts.push(&input[last..]);
                assert_eq!(feed(&parts, max_body), got, "round {round}, splits");
            }
            match got {
                Outcome::Done { .. } => done += 1,
                Outcome::Partial { .. } => partial += 1,
                Outcome::Failed { err, .. } => *errors.entry(format!("{err:?}")).or_insert(0) += 1,
            }
        }
        eprintln!("{ROUNDS} random inputs: {done} complete, {partial} incomplete, rejected {errors:?}");
        assert!(done > ROUNDS / 4 && partial > 100);
        // Every error kind must actually be exercised, or the comparison proves little.
        assert_eq!(errors.len(), 8, "{errors:?}");
    }
}
