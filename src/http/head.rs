//! HTTP/1.1 message heads parsed into offsets of the read buffer.
//!
//! httparse tokenizes; this module adds the framing rules that decide where a body ends, and
//! refuses what two parsers could read differently (RFC 9112 sections 6 and 11): Content-Length
//! that is not plain digits or comes twice, Content-Length beside Transfer-Encoding, any
//! Transfer-Encoding but a single `chunked`, bare LF or CR in the head, a duplicate Host.
//! Names and values are kept as `Span`s into the caller's buffer: no copies, no lifetimes tied to
//! the buffer, so the buffer can move between reads.

use std::mem::MaybeUninit;

/// Most header fields a request may carry; more is a 431. Real SDK requests send about 20.
pub const MAX_HEADERS: usize = 100;

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span { start: start as u32, end: (start + part.len()) as u32 }
    }

    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (requests without Content-Length or Transfer-Encoding, 204, 304, HEAD).
    Empty,
    Length(u64),
    Chunked,
    /// Response bodies only: the body runs until the upstream closes the connection.
    Close,
}

/// A parse failure. Small and `Copy`, like `httparse::Error`; the connection decides the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The head did not end within the size limit (431).
    TooLarge,
    /// More than MAX_HEADERS fields (431).
    TooManyHeaders,
    /// The request-target is longer than allowed (414).
    TargetTooLong,
    /// Anything malformed or ambiguous (400 to a client, 502 from an upstream).
    Malformed(&'static str),
}

impl HeadError {
    pub fn message(self) -> &'static str {
        match self {
            HeadError::TooLarge => "request head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::TargetTooLong => "request target too long",
            HeadError::Malformed(why) => why,
        }
    }
}

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_target_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Span,
    pub target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<HeaderSpan>,
    /// Bytes of the head, through its final CRLF CRLF.
    pub len: usize,
    pub framing: Framing,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub reason: Span,
    pub headers: Vec<HeaderSpan>,
    pub len: usize,
    pub framing: Framing,
    /// The upstream will close (or closed) the connection after this response.
    pub close: bool,
}

impl RequestHead {
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.method.get(buf)
    }

    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.target.get(buf)
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    pub fn header_count(&self, buf: &[u8], name: &str) -> usize {
        self.headers.iter().filter(|h| h.name.get(buf).eq_ignore_ascii_case(name.as_bytes())).count()
    }

    pub fn has_body(&self) -> bool {
        !matches!(self.framing, Framing::Empty | Framing::Length(0))
    }
}

impl ResponseHead {
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }
}

fn find_header<'a>(headers: &[HeaderSpan], buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.get(buf).eq_ignore_ascii_case(name.as_bytes())).map(|h| h.value.get(buf))
}

/// Parses a request head at the start of `buf`. `Ok(None)`: not complete yet, read more.
pub fn parse_request_head(buf: &[u8], limits: HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    let mut raw = uninit_headers();
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, limits.max_head_bytes)?;
            if let Some(target) = req.path {
                if target.len() > limits.max_target_bytes {
                    return Err(HeadError::TargetTooLong);
                }
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(httparse_message(e))),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge);
    }
    check_line_endings(&buf[..len])?;
    let method = req.method.expect("complete request has a method");
    let target = req.path.expect("complete request has a target");
    if target.len() > limits.max_target_bytes {
        return Err(HeadError::TargetTooLong);
    }
    let minor_version = req.version.expect("complete request has a version");
    let headers = spans(buf, req.headers);

    let fields = FieldSummary::of(&headers, buf)?;
    if minor_version == 1 && fields.hosts == 0 {
        return Err(HeadError::Malformed("missing Host header"));
    }
    if fields.hosts > 1 {
        return Err(HeadError::Malformed("duplicate Host header"));
    }
    if fields.chunked && minor_version == 0 {
        return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let framing = match (fields.chunked, fields.content_length) {
        (true, Some(_)) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Empty,
    };
    let keep_alive = match minor_version {
        1 => !fields.conn_close,
        _ => fields.conn_keep_alive && !fields.conn_close,
    };
    let expect_continue = match find_header(&headers, buf, "expect") {
        None => false,
        Some(v) if trim(v).eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(HeadError::Malformed("unsupported Expect")),
    };
    Ok(Some(RequestHead {
        method: Span::of(buf, method.as_bytes()),
        target: Span::of(buf, target.as_bytes()),
        minor_version,
        headers,
        len,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// Parses an upstream's response head. `request_was_head` decides whether a body follows.
pub fn parse_response_head(
    buf: &[u8],
    max_head_bytes: usize,
    request_was_head: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut raw = uninit_headers();
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, max_head_bytes)?;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(httparse_message(e))),
    };
    if len > max_head_bytes {
        return Err(HeadError::TooLarge);
    }
    check_line_endings(&buf[..len])?;
    let status = resp.code.expect("complete response has a status");
    // httparse takes any three digits; RFC 9110 15 defines 1xx to 5xx, and a code under 100 would
    // not survive being written back as a number.
    if !(100..=599).contains(&status) {
        return Err(HeadError::Malformed("invalid status code"));
    }
    let minor_version = resp.version.expect("complete response has a version");
    let reason = resp.reason.unwrap_or("");
    let headers = spans(buf, resp.headers);
    let fields = FieldSummary::of(&headers, buf)?;
    // RFC 9112 6.3: these responses never have a body, whatever their headers say.
    let bodiless = request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::Empty
    } else {
        match (fields.chunked, fields.content_length) {
            (true, Some(_)) => return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding")),
            (true, None) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        }
    };
    let close = fields.conn_close || (minor_version == 0 && !fields.conn_keep_alive) || framing == Framing::Close;
    Ok(Some(ResponseHead {
        status,
        minor_version,
        reason: if reason.is_empty() { Span::default() } else { Span::of(buf, reason.as_bytes()) },
        headers,
        len,
        framing,
        close,
    }))
}

/// Room for httparse's header slices, left uninitialized: httparse writes only the fields it
/// parses, and zeroing all `MAX_HEADERS` of them (3.2 KiB) took about 100 ns of each head.
fn uninit_headers<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

fn spans(buf: &[u8], fields: &[httparse::Header<'_>]) -> Vec<HeaderSpan> {
    fields
        .iter()
        .map(|h| HeaderSpan { name: Span::of(buf, h.name.as_bytes()), value: Span::of(buf, h.value) })
        .collect()
}

/// What the framing-relevant fields of a head say, after the strict checks.
struct FieldSummary {
    content_length: Option<u64>,
    chunked: bool,
    hosts: usize,
    conn_close: bool,
    conn_keep_alive: bool,
}

impl FieldSummary {
    fn of(headers: &[HeaderSpan], buf: &[u8]) -> Result<FieldSummary, HeadError> {
        let mut s =
            FieldSummary { content_length: None, chunked: false, hosts: 0, conn_close: false, conn_keep_alive: false };
        let mut te_seen = false;
        for h in headers {
            let name = h.name.get(buf);
            let value = h.value.get(buf);
            if name.eq_ignore_ascii_case(b"content-length") {
                if s.content_length.is_some() {
                    return Err(HeadError::Malformed("duplicate Content-Length"));
                }
                s.content_length = Some(parse_content_length(value)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only a single, final `chunked` is accepted: any other coding would need the
                // proxy to decode it, and a list is where parsers disagree.
                if te_seen || !trim(value).eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Malformed("unsupported Transfer-Encoding"));
                }
                te_seen = true;
                s.chunked = true;
            } else if name.eq_ignore_ascii_case(b"host") {
                s.hosts += 1;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        s.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        s.conn_keep_alive = true;
                    } else if is_protected_header(token) {
                        // A hop-by-hop nomination of a framing or credential header would make
                        // the next hop drop it: refused rather than guessed at.
                        return Err(HeadError::Malformed("Connection header nominates a protected field"));
                    }
                }
            }
        }
        Ok(s)
    }
}

/// Headers that `Connection` may never nominate as hop-by-hop.
fn is_protected_header(name: &[u8]) -> bool {
    const PROTECTED: [&[u8]; 8] = [
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"authorization",
        b"x-api-key",
        b"x-goog-api-key",
        b"x-kurral-api-key",
        b"x-kurral-agent",
    ];
    PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p))
}

/// Content-Length is 1*DIGIT (RFC 9110 8.6): no sign, no spaces inside, no hex, no empty value,
/// and it must fit in a u64.
pub fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    const ERR: HeadError = HeadError::Malformed("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(ERR);
    }
    value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))).ok_or(ERR)
}

/// httparse accepts a bare LF as a line end; RFC 9112 2.2 lets a recipient do so, but a proxy that
/// does while the next hop does not is how requests get smuggled. Every LF must follow a CR, and
/// every CR must precede an LF.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    // Every adjacent pair of bytes agrees: a CR exactly where an LF follows. One branch-free pass
    // that the compiler vectorizes; a search per CR and per LF (some forty for an SDK's head)
    // had taken a quarter of the head's parse time. The two ends are checked on their own.
    let paired = head.iter().zip(head.get(1..).unwrap_or_default());
    let mismatched = paired.fold(false, |bad, (&a, &b)| bad | ((a == b'\r') != (b == b'\n')));
    if !mismatched && head.first() != Some(&b'\n') && head.last() != Some(&b'\r') {
        return Ok(());
    }
    // Which one, for the error message: the first offending byte.
    let bad = (0..head.len()).find(|&i| match head[i] {
        b'\n' => i == 0 || head[i - 1] != b'\r',
        b'\r' => head.get(i + 1) != Some(&b'\n'),
        _ => false,
    });
    Err(HeadError::Malformed(match bad.map(|i| head[i]) {
        Some(b'\n') => "bare LF in head",
        _ => "bare CR in head",
    }))
}

fn check_partial(buf: &[u8], max_head_bytes: usize) -> Result<(), HeadError> {
    if buf.len() >= max_head_bytes {
        Err(HeadError::TooLarge)
    } else {
        Ok(())
    }
}

fn httparse_message(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Strips optional whitespace (SP, HTAB) at both ends.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 8192, max_target_bytes: 1024 };

    fn req(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(raw.as_bytes(), LIMITS)
    }

    #[test]
    fn accepts_well_formed_requests() {
        let cases: &[(&str, Framing, bool)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Empty, true),
            ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", Framing::Length(5), true),
            ("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Framing::Chunked, true),
            ("POST /x HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\n\r\n", Framing::Chunked, true),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Framing::Empty, false),
            ("GET / HTTP/1.0\r\n\r\n", Framing::Empty, false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", Framing::Empty, true),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", Framing::Length(7), true),
        ];
        for (raw, framing, keep_alive) in cases {
            let head = req(raw).unwrap().unwrap_or_else(|| panic!("incomplete: {raw:?}"));
            assert_eq!(head.framing, *framing, "{raw:?}");
            assert_eq!(head.keep_alive, *keep_alive, "{raw:?}");
            assert_eq!(&raw.as_bytes()[..head.len], raw.split_inclusive("\r\n\r\n").next().unwrap().as_bytes());
        }
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let cases: &[&str] = &[
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, Content-Length\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-kurral-api-key\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ];
        for raw in cases {
            assert!(matches!(req(raw), Err(HeadError::Malformed(_))), "accepted {raw:?}: {:?}", req(raw));
        }
    }

    #[test]
    fn limits_fire() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2000));
        assert_eq!(req(&long_target).unwrap_err(), HeadError::TargetTooLong);
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(req(&big).unwrap_err(), HeadError::TooLarge);
        let unfinished = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(9000));
        assert_eq!(req(&unfinished).unwrap_err(), HeadError::TooLarge);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(req(&many).unwrap_err(), HeadError::TooManyHeaders);
    }

    #[test]
    fn every_split_point_gives_the_same_head() {
        let raw = "POST /api/proxy/openai/v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Kurral-Agent: bot\r\n\r\n{}";
        let full = req(raw).unwrap().unwrap();
        let head_end = full.len;
        for cut in 0..raw.len() {
            let partial = parse_request_head(&raw.as_bytes()[..cut], LIMITS).unwrap();
            assert_eq!(partial.is_some(), cut >= head_end, "cut at {cut}");
        }
        assert_eq!(full.header(raw.as_bytes(), "x-kurral-agent"), Some(&b"bot"[..]));
        assert_eq!(full.target(raw.as_bytes()), b"/api/proxy/openai/v1/chat/completions?x=1");
    }

    #[test]
    fn response_framing() {
        let cases: &[(&str, bool, Framing, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, Framing::Length(3), false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, Framing::Chunked, false),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, true),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Framing::Empty, false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true, Framing::Empty, false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", false, Framing::Length(3), true),
            ("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false, Framing::Length(3), true),
        ];
        for (raw, head_req, framing, close) in cases {
            let h = parse_response_head(raw.as_bytes(), 8192, *head_req).unwrap().unwrap();
            assert_eq!(h.framing, *framing, "{raw:?}");
            assert_eq!(h.close, *close, "{raw:?}");
        }
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 058 Odd\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 600 Odd\r\n\r\n",
        ] {
            assert!(parse_response_head(bad.as_bytes(), 8192, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn line_endings_are_crlf_exactly() {
        // The one-pass check against the rule read literally, over every string of up to six
        // bytes from an alphabet of CR, LF and one other byte (1,093 strings), plus a real head.
        let literal = |h: &[u8]| {
            let lf_ok = (0..h.len()).filter(|&i| h[i] == b'\n').all(|i| i > 0 && h[i - 1] == b'\r');
            let cr_ok = (0..h.len()).filter(|&i| h[i] == b'\r').all(|i| h.get(i + 1) == Some(&b'\n'));
            lf_ok && cr_ok
        };
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut code in 0..3usize.pow(len) {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = [b'\r', b'\n', b'a'][code % 3];
                        code /= 3;
                        b
                    })
                    .collect();
                let got = check_line_endings(&s);
                assert_eq!(got.is_ok(), literal(&s), "{s:?}");
                if let Err(HeadError::Malformed(why)) = got {
                    let first_bad_lf =
                        s.iter().enumerate().position(|(i, &b)| b == b'\n' && (i == 0 || s[i - 1] != b'\r'));
                    let first_bad_cr =
                        s.iter().enumerate().position(|(i, &b)| b == b'\r' && s.get(i + 1) != Some(&b'\n'));
                    let lf_first = match (first_bad_lf, first_bad_cr) {
                        (Some(l), Some(c)) => l < c,
                        (l, _) => l.is_some(),
                    };
                    assert_eq!(why, if lf_first { "bare LF in head" } else { "bare CR in head" }, "{s:?}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 1093);
        let mut head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n".to_vec();
        assert!(check_line_endings(&head).is_ok());
        for i in 0..head.len() {
            for b in [b'\r', b'\n'] {
                let saved = std::mem::replace(&mut head[i], b);
                assert_eq!(check_line_endings(&head).is_ok(), literal(&head), "byte {i} set to {b}");
                head[i] = saved;
            }
        }
    }

    #[test]
    fn trim_strips_ows() {
        assert_eq!(trim(b" \tab c\t "), b"ab c");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim(b""), b"");
    }
}
