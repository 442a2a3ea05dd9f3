//! Hostile clients and faulty upstreams, over real loopback sockets.
//!
//! 1. A table of malformed or ambiguous requests (RFC 9112 framing, request-smuggling research),
//!    each sent in one write and again one byte per write: the status, whether the connection
//!    closes, and that nothing reached the upstream.
//! 2. Pipelining and desync payloads.
//! 3. Limits at their edges, head/idle timeouts, slowloris, and the configured limits that a
//!    proxy in front of paid APIs needs (first byte, client write, rate, concurrency).
//! 4. Upstream faults, a client leaving mid-stream, and descriptors after a thousand faults.
//!
//! Failures name the case. Table suites report every failing case at once.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::harness::Proxy;
use common::mock_upstream::{MockUpstream, Received};
use common::raw_upstream::{header_value, RawUpstream, Script, Then};
use kurral_proxy::capture::{CallRecord, Outcome};
use kurral_proxy::config::Config;
use kurral_proxy::provider::Provider;
use kurral_proxy::upstream::UpstreamUrl;

const CHAT: &str = "/api/proxy/openai/v1/chat/completions";
const MESSAGES: &str = "/api/proxy/anthropic/v1/messages";
const CHAT_STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const HEALTH: &[u8] = b"GET /api/proxy/health HTTP/1.1\r\nHost: p\r\n\r\n";
/// Kurral fields of every table request; `$KEY` and `$TAG` are filled in per run.
const AUTH: &str = "X-Kurral-API-Key: $KEY\r\nx-kurral-agent: bot\r\nx-mock-echo: 1\r\nx-case: $TAG\r\n";

// ---------------------------------------------------------------------------------------------
// Isolation: the descriptor test counts /proc/self/fd of the whole test process, so it runs
// alone; every other test holds the shared side of this lock.

static FD_LOCK: RwLock<()> = RwLock::new(());

fn shared_lock() -> RwLockReadGuard<'static, ()> {
    FD_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_lock() -> RwLockWriteGuard<'static, ()> {
    FD_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// Settings every proxy here starts from: short enough that a hung case fails in seconds.
fn base(c: &mut Config) {
    c.shutdown_grace = Duration::from_secs(2);
    c.limits.head_timeout = Duration::from_secs(3);
    c.limits.request_timeout = Duration::from_secs(4);
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Growth of resident memory allowed over a thousand faulted calls, once warm: their thousand
/// records in the store's memtable take about 2 MiB; a connection's 16 KiB read buffer kept per
/// call would take 16.
const MEMORY_SLACK_KIB: u64 = 6 * 1024;

/// The test process's resident memory (the proxy runs in it), from /proc.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// A raw client that never panics: every problem comes back as text for the case's message.

#[derive(Debug, Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as framed (false: cut by EOF).
    complete: bool,
    /// 1xx statuses received before this response.
    interim: Vec<u16>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    fn closes(&self) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        if t.len() > 300 {
            format!("{}...", &t[..300])
        } else {
            t.into_owned()
        }
    }

    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `error.type` of the proxy's JSON error body.
    fn error_type(&self) -> Option<String> {
        self.json()?.get("error")?.get("type")?.as_str().map(str::to_string)
    }

    /// For a mock echo: the value of a request header the mock saw.
    fn echoed_header(&self, name: &str) -> Option<String> {
        let v = self.json()?;
        let headers: serde_json::Value = match &v["headers"] {
            serde_json::Value::String(s) => serde_json::from_str(s).ok()?,
            other => other.clone(),
        };
        headers.as_array()?.iter().find_map(|pair| {
            let n = pair.get(0)?.as_str()?;
            n.eq_ignore_ascii_case(name).then(|| pair.get(1)?.as_str().map(str::to_string)).flatten()
        })
    }

    fn summary(&self) -> String {
        format!("{} {}", self.status, self.text())
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect to the proxy");
        s.set_nodelay(true).unwrap();
        let timeout = Duration::from_secs(6);
        s.set_read_timeout(Some(timeout)).unwrap();
        Client { s, buf: Vec::new(), timeout }
    }

    fn set_timeout(&mut self, d: Duration) {
        self.timeout = d;
        self.s.set_read_timeout(Some(d)).unwrap();
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.s.write_all(bytes).map_err(|e| format!("write failed: {e}"))
    }

    /// One byte per write. Stops at the first failed write (the proxy may have refused and
    /// closed), which is not an error by itself.
    fn send_bytewise(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, b) in bytes.iter().enumerate() {
            if self.s.write_all(std::slice::from_ref(b)).is_err() {
                return Some(i);
            }
        }
        None
    }

    /// Ok(0) at EOF or reset.
    fn fill(&mut self) -> Result<usize, String> {
        let mut tmp = [0u8; 65536];
        loop {
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("no answer within {:?}", self.timeout))
                }
                Err(_) => return Ok(0),
            }
        }
    }

    fn line(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(Some(line[..i].to_vec()));
            }
            if self.fill()? == 0 {
                return Ok(None);
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<Option<Vec<u8>>, String> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..n).collect()))
    }

    /// Reads one final response, collecting any 1xx before it.
    fn response(&mut self) -> Result<Resp, String> {
        let mut interim = Vec::new();
        loop {
            let Some(line) = self.line()? else {
                return Err(if self.buf.is_empty() {
                    "connection closed without a response".into()
                } else {
                    format!("connection closed inside a status line: {:?}", String::from_utf8_lossy(&self.buf))
                });
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let mut parts = line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            let status: u16 = match parts.next().and_then(|c| c.parse().ok()) {
                Some(s) if version.starts_with("HTTP/1.") => s,
                _ => return Err(format!("bad status line {line:?}")),
            };
            let mut headers = Vec::new();
            loop {
                let Some(l) = self.line()? else { return Err("connection closed inside a response head".into()) };
                if l.is_empty() {
                    break;
                }
                let l = String::from_utf8_lossy(&l).into_owned();
                let Some((n, v)) = l.split_once(':') else { return Err(format!("bad response header line {l:?}")) };
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let mut r = Resp { status, headers, body: Vec::new(), complete: true, interim };
            if status == 204 || status == 304 {
                return Ok(r);
            }
            if r.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                loop {
                    let Some(size_line) = self.line()? else {
                        r.complete = false;
                        return Ok(r);
                    };
                    let s = String::from_utf8_lossy(&size_line).into_owned();
                    let size = usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size line from the proxy: {s:?}"))?;
                    if size == 0 {
                        loop {
                            match self.line()? {
                                None => {
                                    r.complete = false;
                                    return Ok(r);
                                }
                                Some(l) if l.is_empty() => return Ok(r),
                                Some(_) => {}
                            }
                        }
                    }
                    match self.take(size + 2)? {
                        Some(d) => {
                            if &d[size..] != b"\r\n" {
                                return Err("chunk data from the proxy not followed by CRLF".into());
                            }
                            r.body.extend_from_slice(&d[..size]);
                        }
                        None => {
                            r.body.extend(std::mem::take(&mut self.buf));
                            r.complete = false;
                            return Ok(r);
                        }
                    }
                }
            } else if let Some(len) = r.header("content-length") {
                let len: usize = len.parse().map_err(|_| format!("bad content-length from the proxy: {len:?}"))?;
                match self.take(len)? {
                    Some(d) => r.body = d,
                    None => {
                        r.body = std::mem::take(&mut self.buf);
                        r.complete = false;
                    }
                }
            } else {
                while self.fill()? > 0 {}
                r.body = std::mem::take(&mut self.buf);
            }
            return Ok(r);
        }
    }

    /// True when the proxy closes (EOF or reset) within `d`; false if the connection is still
    /// open then. Bytes arriving instead are an error.
    fn closed_within(&mut self, d: Duration) -> Result<bool, String> {
        if !self.buf.is_empty() {
            return Err(format!("unexpected bytes after the response: {:?}", String::from_utf8_lossy(&self.buf)));
        }
        let old = self.timeout;
        self.set_timeout(d);
        let r = match self.fill() {
            Ok(0) => Ok(true),
            Ok(_) => Err(format!("unexpected bytes after the response: {:?}", String::from_utf8_lossy(&self.buf))),
            Err(_) => Ok(false),
        };
        self.set_timeout(old);
        r
    }

    /// Closes with a TCP reset (SO_LINGER 0), the way a killed client goes.
    fn reset(self) {
        let _ = socket2::SockRef::from(&self.s).set_linger(Some(Duration::ZERO));
    }
}

fn fill_template(t: &[u8], key: &str, tag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() + 64);
    let mut i = 0;
    while i < t.len() {
        if t[i..].starts_with(b"$KEY") {
            out.extend_from_slice(key.as_bytes());
            i += 4;
        } else if t[i..].starts_with(b"$TAG") {
            out.extend_from_slice(tag.as_bytes());
            i += 4;
        } else {
            out.push(t[i]);
            i += 1;
        }
    }
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// POST to the chat route with the Kurral fields, `extra` header lines, then `body`.
fn post(extra: &[u8], body: &[u8]) -> Vec<u8> {
    cat(&[format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\n{AUTH}").as_bytes(), extra, b"\r\n", body])
}

fn chunked(body: &[u8]) -> Vec<u8> {
    post(b"Transfer-Encoding: chunked\r\n", body)
}

/// A request line of one's own, then Host, the Kurral fields, `extra`, and `body`.
fn line(request_line: &str, extra: &[u8], body: &[u8]) -> Vec<u8> {
    cat(&[format!("{request_line}\r\nHost: p\r\n{AUTH}").as_bytes(), extra, b"\r\n", body])
}

/// A streamed chat call the mock holds after its first event (no echo), tagged `$TAG`.
fn held_stream_request() -> Vec<u8> {
    format!(
        "POST {CHAT} HTTP/1.1\r\nHost: p\r\nX-Kurral-API-Key: $KEY\r\nx-kurral-agent: bot\r\nx-case: $TAG\r\nx-mock-hold: 1\r\nContent-Length: {}\r\n\r\n{CHAT_STREAM_BODY}",
        CHAT_STREAM_BODY.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// 1. The table

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Whole,
    Bytewise,
}

enum Expect {
    /// Refused by the proxy with one of `statuses` and its own JSON error; the upstream gets
    /// nothing. `close`: Some(true) the connection must close (header and EOF), Some(false) it
    /// must stay usable, None either.
    Reject { statuses: &'static [u16], close: Option<bool> },
    /// Forwarded: 200 from the mock, which got exactly `body` and none of `absent`; the
    /// connection stays usable. `continue_100`: an interim 100 must come first when the body
    /// was not there yet (byte-per-write mode).
    Forward { body: &'static [u8], absent: &'static [&'static str], continue_100: bool },
    /// Refused (`statuses`, nothing upstream) or forwarded without `absent`.
    RejectOrForward { statuses: &'static [u16], body: &'static [u8], absent: &'static [&'static str] },
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, raw: Vec<u8>, expect: Expect) -> Case {
    Case { name, raw, expect }
}

/// Refused with 400 and closed.
fn r400() -> Expect {
    Expect::Reject { statuses: &[400], close: Some(true) }
}

fn reject(statuses: &'static [u16]) -> Expect {
    Expect::Reject { statuses, close: Some(true) }
}

fn forward(body: &'static [u8]) -> Expect {
    Expect::Forward { body, absent: &[], continue_100: false }
}

/// Runs one case in one mode; Ok(number of requests it put upstream).
fn run_case(addr: SocketAddr, key: &str, mock: &MockUpstream, case: &Case, mode: Mode) -> Result<usize, String> {
    let tag = format!("{}-{:?}", case.name, mode).to_ascii_lowercase();
    let raw = fill_template(&case.raw, key, &tag);
    let mut c = Client::open(addr);
    match mode {
        Mode::Whole => {
            let _ = c.send(&raw);
        }
        Mode::Bytewise => {
            let _ = c.send_bytewise(&raw);
        }
    }
    let r = c.response()?;
    let got = mock.received();
    let upstream: Vec<&Received> = got.iter().filter(|r| r.header_str("x-case") == Some(tag.as_str())).collect();
    let check_reject = |c: &mut Client, statuses: &[u16], close: Option<bool>| -> Result<usize, String> {
        if !statuses.contains(&r.status) {
            return Err(format!("status {}, expected one of {statuses:?}; body: {}", r.status, r.text()));
        }
        if r.error_type().is_none() {
            return Err(format!("the {} is not the proxy's JSON error: {}", r.status, r.text()));
        }
        if !upstream.is_empty() {
            return Err(format!("refused with {} but the upstream received it", r.status));
        }
        if !r.interim.is_empty() {
            return Err(format!("interim {:?} sent before the refusal", r.interim));
        }
        match close {
            Some(true) => {
                if !r.closes() {
                    return Err(format!("{} without `connection: close`", r.status));
                }
                if !c.closed_within(Duration::from_secs(2))? {
                    return Err(format!("{} but the connection stays open", r.status));
                }
            }
            Some(false) => keep_alive_check(c)?,
            None => {}
        }
        Ok(0)
    };
    let check_forward = |c: &mut Client, body: &[u8], absent: &[&str], continue_100: bool| -> Result<usize, String> {
        if r.status != 200 {
            return Err(format!("status {}, expected 200 (forwarded); body: {}", r.status, r.text()));
        }
        let [rec] = upstream[..] else {
            return Err(format!("expected 1 upstream request, the mock got {}", upstream.len()));
        };
        if rec.body != body {
            return Err(format!(
                "upstream body {:?}, expected {:?}",
                String::from_utf8_lossy(&rec.body),
                String::from_utf8_lossy(body)
            ));
        }
        for name in absent {
            if let Some(v) = rec.header(name) {
                return Err(format!("the upstream received `{name}: {}`", String::from_utf8_lossy(v)));
            }
        }
        if let Some((n, _)) = rec.headers.iter().find(|(n, _)| n.to_ascii_lowercase().starts_with("x-kurral-")) {
            return Err(format!("{n} reached the upstream"));
        }
        if continue_100 && mode == Mode::Bytewise && r.interim != [100] {
            return Err(format!("expected an interim 100 Continue, got {:?}", r.interim));
        }
        if r.closes() {
            return Err("forwarded, but the proxy closes the connection".into());
        }
        keep_alive_check(c)?;
        Ok(1)
    };
    match &case.expect {
        Expect::Reject { statuses, close } => check_reject(&mut c, statuses, *close),
        Expect::Forward { body, absent, continue_100 } => check_forward(&mut c, body, absent, *continue_100),
        Expect::RejectOrForward { statuses, body, absent } => {
            if r.status == 200 {
                check_forward(&mut c, body, absent, false)
            } else {
                check_reject(&mut c, statuses, None)
            }
        }
    }
}

fn keep_alive_check(c: &mut Client) -> Result<(), String> {
    c.send(HEALTH).map_err(|e| format!("keep-alive follow-up: {e}"))?;
    match c.response() {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("keep-alive follow-up answered {}", r.summary())),
        Err(e) => Err(format!("keep-alive follow-up: {e}")),
    }
}

/// Limits of the table proxies.
fn table_limits(c: &mut Config) {
    base(c);
    c.limits.max_head_bytes = 8192;
    c.limits.max_target_bytes = 1024;
    c.limits.max_body_bytes = 4096;
}

/// Runs every case in both modes, in parallel, then checks that the upstream got nothing that
/// no forwarded case accounts for. Panics listing every failing case.
fn run_table(suite: &str, cases: Vec<Case>) {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, table_limits);
    let (addr, key) = (proxy.addr, proxy.key.clone());
    let results: Vec<(String, Result<usize, String>)> = thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .flat_map(|case| [Mode::Whole, Mode::Bytewise].map(|m| (case, m)))
            .map(|(case, mode)| {
                let (mock, key) = (&mock, key.as_str());
                let label = format!("{} [{mode:?}]", case.name);
                (label, s.spawn(move || run_case(addr, key, mock, case, mode)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(label, h)| {
                let r = h.join().unwrap_or_else(|p| {
                    Err(format!(
                        "panicked: {}",
                        p.downcast_ref::<String>().cloned().unwrap_or_else(|| format!("{p:?}"))
                    ))
                });
                (label, r)
            })
            .collect()
    });
    thread::sleep(Duration::from_millis(200));
    let mut failures: Vec<String> =
        results.iter().filter_map(|(l, r)| r.as_ref().err().map(|e| format!("  {l}: {e}"))).collect();
    let forwarded: usize = results.iter().filter_map(|(_, r)| r.as_ref().ok()).sum();
    let tags: Vec<String> = cases
        .iter()
        .flat_map(|c| [Mode::Whole, Mode::Bytewise].map(|m| format!("{}-{m:?}", c.name).to_ascii_lowercase()))
        .collect();
    for r in mock.received() {
        let tag = r.header_str("x-case").unwrap_or("");
        if !tags.iter().any(|t| t == tag) {
            failures.push(format!(
                "  (suite): the upstream received a request no case sent: {} {} x-case={tag:?}",
                r.method, r.target
            ));
        }
    }
    let total = mock.received().len();
    if total > forwarded && failures.is_empty() {
        failures.push(format!("  (suite): the upstream received {total} requests, the cases account for {forwarded}"));
    }
    assert!(failures.is_empty(), "{suite}: {} failing:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn table_content_length_and_transfer_encoding() {
    const CHUNKED_OK: &[u8] = b"7\r\n{\"a\":1}\r\n0\r\n\r\n";
    const BODY_OK: &[u8] = b"{\"a\":1}";
    let te = |v: &[u8], body: &[u8]| post(&cat(&[b"Transfer-Encoding: ", v, b"\r\n"]), body);
    let cl = |v: &[u8]| post(&cat(&[b"Content-Length: ", v, b"\r\n"]), b"{}");
    let te_unknown: &'static [u16] = &[400, 501];
    run_table(
        "content-length / transfer-encoding",
        vec![
            case("cl_and_te", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), r400()),
            case("te_and_cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), r400()),
            case("cl_duplicate_equal", post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"), r400()),
            case("cl_duplicate_different", post(b"Content-Length: 2\r\nContent-Length: 5\r\n", b"{}"), r400()),
            case("cl_comma_list_equal", cl(b"2, 2"), r400()),
            case("cl_comma_list_different", cl(b"2, 5"), r400()),
            case("cl_plus_sign", cl(b"+2"), r400()),
            case("cl_minus_sign", cl(b"-2"), r400()),
            case("cl_hex", cl(b"0x2"), r400()),
            case("cl_space_inside", cl(b"1 0"), r400()),
            case("cl_underscore", cl(b"1_0"), r400()),
            case("cl_empty", cl(b""), r400()),
            case("cl_trailing_junk", cl(b"2abc"), r400()),
            case("cl_overflow_20_digits", cl(b"18446744073709551616"), r400()),
            case("cl_overflow_25_digits", cl(b"9999999999999999999999999"), r400()),
            case("te_gzip", te(b"gzip", b"{}"), reject(te_unknown)),
            case("te_chunked_then_gzip", te(b"chunked, gzip", CHUNKED_OK), r400()),
            case("te_gzip_then_chunked", te(b"gzip, chunked", CHUNKED_OK), reject(te_unknown)),
            case("te_identity", te(b"identity", b"{}"), reject(te_unknown)),
            case("te_xchunked", te(b"xchunked", CHUNKED_OK), reject(te_unknown)),
            case("te_chunked_twice_one_field", te(b"chunked, chunked", CHUNKED_OK), r400()),
            case(
                "te_chunked_two_fields",
                post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_OK),
                r400(),
            ),
            case(
                "te_chunked_and_garbage_field",
                post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", CHUNKED_OK),
                r400(),
            ),
            case("te_empty_value", te(b"", b"{}"), reject(te_unknown)),
            case("te_quoted", te(b"\"chunked\"", CHUNKED_OK), reject(te_unknown)),
            case("te_vertical_tab", te(b"\x0bchunked", CHUNKED_OK), reject(te_unknown)),
            case("te_leading_spaces_ok", te(b"   chunked", CHUNKED_OK), forward(BODY_OK)),
            case("te_trailing_spaces_ok", te(b"chunked   ", CHUNKED_OK), forward(BODY_OK)),
            case("te_uppercase_ok", te(b"CHUNKED", CHUNKED_OK), forward(BODY_OK)),
            case("te_tab_ok", post(b"Transfer-Encoding:\tchunked\r\n", CHUNKED_OK), forward(BODY_OK)),
            case(
                "te_on_http10",
                cat(&[
                    format!("POST {CHAT} HTTP/1.0\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n").as_bytes(),
                    CHUNKED_OK,
                ]),
                r400(),
            ),
            case(
                "te_on_http10_with_cl",
                cat(&[
                    format!("POST {CHAT} HTTP/1.0\r\n{AUTH}Transfer-Encoding: chunked\r\nContent-Length: 14\r\n\r\n")
                        .as_bytes(),
                    CHUNKED_OK,
                ]),
                r400(),
            ),
        ],
    );
}

#[test]
fn table_head_syntax() {
    let cl2 = |extra: &[u8]| post(&cat(&[extra, b"Content-Length: 2\r\n"]), b"{}");
    run_table(
        "head syntax",
        vec![
            case("obs_fold_space", cl2(b"X-Foo: a\r\n b\r\n"), r400()),
            case("obs_fold_tab", cl2(b"X-Foo: a\r\n\tb\r\n"), r400()),
            case(
                "obs_fold_transfer_encoding",
                post(b"Transfer-Encoding: gzip\r\n chunked\r\n", b"0\r\n\r\n"),
                reject(&[400, 501]),
            ),
            case(
                "space_before_first_header",
                cat(&[format!("POST {CHAT} HTTP/1.1\r\n Host: p\r\n{AUTH}Content-Length: 2\r\n\r\n{{}}").as_bytes()]),
                r400(),
            ),
            case("bare_cr_in_value", cl2(b"X-Foo: a\rb\r\n"), r400()),
            case("bare_cr_line_end", cl2(b"X-Foo: a\r"), r400()),
            case("bare_lf_line_end", cl2(b"X-Foo: a\n"), r400()),
            case(
                "bare_lf_request_line",
                format!("POST {CHAT} HTTP/1.1\nHost: p\r\n{AUTH}Content-Length: 2\r\n\r\n{{}}").into_bytes(),
                r400(),
            ),
            case(
                "bare_lf_head_end",
                format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\n{AUTH}Content-Length: 2\r\n\n{{}}").into_bytes(),
                r400(),
            ),
            case("space_before_colon_cl", post(b"Content-Length : 2\r\n", b"{}"), r400()),
            case("space_before_colon_te", post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), r400()),
            case("tab_before_colon", cl2(b"X-Foo\t: a\r\n"), r400()),
            case("header_name_space", cl2(b"X Foo: a\r\n"), r400()),
            case("header_name_paren", cl2(b"X(Foo): a\r\n"), r400()),
            case("header_name_at", cl2(b"X@Foo: a\r\n"), r400()),
            case("header_name_ctl", cl2(b"X\x01Foo: a\r\n"), r400()),
            case("header_name_empty", cl2(b": a\r\n"), r400()),
            case("header_name_non_ascii", cl2(b"X-\xc3\xa9: a\r\n"), r400()),
            case("header_without_colon", cl2(b"X-Foo a\r\n"), r400()),
            case("nul_in_value", cl2(b"X-Foo: a\0b\r\n"), r400()),
            case("nul_in_name", cl2(b"X-F\0oo: a\r\n"), r400()),
        ],
    );
}

#[test]
fn table_chunked_bodies() {
    run_table(
        "chunked bodies",
        vec![
            case("chunk_size_empty", chunked(b"\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_plus", chunked(b"+2\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_minus", chunked(b"-2\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_0x", chunked(b"0x2\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_non_hex", chunked(b"2g\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_leading_space", chunked(b" 2\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_trailing_space", chunked(b"2 \r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_size_line_too_long", chunked(&cat(&[&vec![b'0'; 5000], b"2\r\n{}\r\n0\r\n\r\n"])), r400()),
            case("chunk_size_overflow", chunked(b"10000000000000002\r\n{}\r\n0\r\n\r\n"), reject(&[400, 413])),
            case("chunk_size_bare_lf", chunked(b"2\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_ext_empty", chunked(b"2;\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_ext_unterminated_quote", chunked(b"2;a=\"b\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_ext_ctl", chunked(b"2;a=\x01\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_ext_nul", chunked(b"2;a=\0\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_ext_bare_lf", chunked(b"2;a=b\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_ext_bare_cr", chunked(b"2;a\rb\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_data_longer_than_size", chunked(b"2\r\n{}X\r\n0\r\n\r\n"), r400()),
            case("chunk_data_shorter_than_size", chunked(b"4\r\n{}\r\n0\r\n\r\n"), r400()),
            case("chunk_missing_crlf_after_data", chunked(b"2\r\n{}0\r\n\r\n"), r400()),
            case("chunk_lf_only_after_data", chunked(b"2\r\n{}\n0\r\n\r\n"), r400()),
            case(
                "chunk_last_then_request_line",
                chunked(b"2\r\n{}\r\n0\r\nPOST /x HTTP/1.1\r\nHost: p\r\n\r\n"),
                r400(),
            ),
            case("chunk_trailer_without_colon", chunked(b"2\r\n{}\r\n0\r\nnot a field\r\n\r\n"), r400()),
            case("chunk_trailer_obs_fold", chunked(b"2\r\n{}\r\n0\r\nX-T: a\r\n b\r\n\r\n"), r400()),
            case("chunk_ext_valid_ok", chunked(b"2;a=b;c=\"d e\"\r\n{}\r\n0\r\n\r\n"), forward(b"{}")),
            case("chunk_trailer_valid_ok", chunked(b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n"), forward(b"{}")),
            case("chunk_uppercase_hex_ok", chunked(b"A\r\n0123456789\r\n0\r\n\r\n"), forward(b"0123456789")),
            case("chunk_leading_zeros_ok", chunked(b"0002\r\n{}\r\n000\r\n\r\n"), forward(b"{}")),
        ],
    );
}

#[test]
fn table_host_connection_upgrade() {
    const WS: &[u8] = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    run_table(
        "host / connection / upgrade",
        vec![
            case("host_duplicate", line(&format!("POST {CHAT} HTTP/1.1"), b"Host: q\r\nContent-Length: 2\r\n", b"{}"), r400()),
            case(
                "host_missing_http11",
                format!("POST {CHAT} HTTP/1.1\r\n{AUTH}Content-Length: 2\r\n\r\n{{}}").into_bytes(),
                r400(),
            ),
            case("connection_content_length", post(b"Connection: content-length\r\nContent-Length: 2\r\n", b"{}"), r400()),
            case("connection_close_and_content_length", post(b"Connection: close, Content-Length\r\nContent-Length: 2\r\n", b"{}"), r400()),
            case(
                "connection_transfer_encoding",
                post(b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"),
                r400(),
            ),
            case(
                "connection_authorization",
                post(b"Connection: authorization\r\nAuthorization: Bearer sk-x\r\nContent-Length: 2\r\n", b"{}"),
                r400(),
            ),
            case("connection_x_kurral_api_key", post(b"Connection: x-kurral-api-key\r\nContent-Length: 2\r\n", b"{}"), r400()),
            case("connection_host", post(b"Connection: host\r\nContent-Length: 2\r\n", b"{}"), r400()),
            case(
                "upgrade_websocket_post",
                post(&cat(&[WS, b"Content-Length: 2\r\n"]), b"{}"),
                Expect::RejectOrForward { statuses: &[400], body: b"{}", absent: &["upgrade", "connection"] },
            ),
            case(
                "upgrade_websocket_get",
                line("GET /api/proxy/openai/v1/realtime HTTP/1.1", WS, b""),
                Expect::RejectOrForward { statuses: &[400], body: b"", absent: &["upgrade", "connection"] },
            ),
            case(
                "upgrade_h2c",
                post(b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 2\r\n", b"{}"),
                Expect::RejectOrForward { statuses: &[400], body: b"{}", absent: &["upgrade", "http2-settings", "connection"] },
            ),
            case(
                "upgrade_not_nominated",
                post(b"Upgrade: websocket\r\nContent-Length: 2\r\n", b"{}"),
                Expect::RejectOrForward { statuses: &[400], body: b"{}", absent: &["upgrade"] },
            ),
        ],
    );
}

#[test]
fn table_methods_versions_and_sizes() {
    let any_close = |statuses: &'static [u16]| Expect::Reject { statuses, close: None };
    let mut many = String::new();
    for i in 0..101 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    run_table(
        "methods / versions / sizes",
        vec![
            case(
                "connect_authority_form",
                format!("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{AUTH}\r\n").into_bytes(),
                any_close(&[400, 404, 405, 501]),
            ),
            case(
                "connect_origin_form_to_provider",
                line(&format!("CONNECT {CHAT} HTTP/1.1"), b"", b""),
                any_close(&[400, 405, 501]),
            ),
            case(
                "method_unknown_token",
                line(&format!("BREW {CHAT} HTTP/1.1"), b"Content-Length: 2\r\n", b"{}"),
                any_close(&[400, 405, 501]),
            ),
            case(
                "method_huge",
                line(&format!("{} {CHAT} HTTP/1.1", "A".repeat(3000)), b"Content-Length: 2\r\n", b"{}"),
                any_close(&[400, 405, 414, 431, 501]),
            ),
            case("method_non_token", line(&format!("G{{T {CHAT} HTTP/1.1"), b"", b""), r400()),
            case("method_empty", line(&format!(" {CHAT} HTTP/1.1"), b"", b""), r400()),
            case(
                "request_line_double_space",
                line(&format!("POST  {CHAT} HTTP/1.1"), b"Content-Length: 2\r\n", b"{}"),
                r400(),
            ),
            case("request_line_tab", line(&format!("POST\t{CHAT} HTTP/1.1"), b"Content-Length: 2\r\n", b"{}"), r400()),
            case(
                "target_with_space",
                line("POST /api/proxy/openai/v1/chat completions HTTP/1.1", b"Content-Length: 2\r\n", b"{}"),
                r400(),
            ),
            case(
                "target_absolute_form_foreign_host",
                line(&format!("POST http://evil.example{CHAT} HTTP/1.1"), b"Content-Length: 2\r\n", b"{}"),
                any_close(&[400, 404]),
            ),
            case("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), reject(&[400, 505])),
            case("http09_request", b"GET /api/proxy/health\r\n".to_vec(), reject(&[400, 505])),
            case(
                "http_version_1_2",
                b"GET /api/proxy/health HTTP/1.2\r\nHost: p\r\n\r\n".to_vec(),
                reject(&[400, 505]),
            ),
            case(
                "http_version_lowercase",
                b"GET /api/proxy/health http/1.1\r\nHost: p\r\n\r\n".to_vec(),
                reject(&[400, 505]),
            ),
            case(
                "request_line_too_long",
                line(&format!("POST {CHAT}?q={} HTTP/1.1", "a".repeat(2000)), b"Content-Length: 2\r\n", b"{}"),
                reject(&[414]),
            ),
            case(
                "request_line_beyond_head_limit",
                line(&format!("POST {CHAT}?q={} HTTP/1.1", "a".repeat(10000)), b"Content-Length: 2\r\n", b"{}"),
                reject(&[414, 431]),
            ),
            case(
                "head_too_large",
                post(format!("X-Big: {}\r\nContent-Length: 2\r\n", "b".repeat(9000)).as_bytes(), b"{}"),
                reject(&[431]),
            ),
            case("too_many_headers", post(format!("{many}Content-Length: 2\r\n").as_bytes(), b"{}"), reject(&[431])),
        ],
    );
}

#[test]
fn table_expect() {
    run_table(
        "expect",
        vec![
            case(
                "expect_100_continue",
                post(b"Expect: 100-continue\r\nContent-Length: 2\r\n", b"{}"),
                Expect::Forward { body: b"{}", absent: &["expect"], continue_100: true },
            ),
            case(
                "expect_100_continue_mixed_case",
                post(b"Expect: 100-Continue\r\nContent-Length: 2\r\n", b"{}"),
                Expect::Forward { body: b"{}", absent: &["expect"], continue_100: true },
            ),
            case(
                "expect_100_continue_bad_key",
                format!(
                    "POST {CHAT} HTTP/1.1\r\nHost: p\r\nX-Kurral-API-Key: kr_live_nope\r\nx-kurral-agent: bot\r\nx-case: $TAG\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{{}}"
                )
                .into_bytes(),
                reject(&[401]),
            ),
            case("expect_unknown", post(b"Expect: 200-ok\r\nContent-Length: 2\r\n", b"{}"), reject(&[400, 417])),
        ],
    );
}

/// The interim 100 arrives before the client sends its body; a refused Expect request is
/// answered without waiting for a body.
#[test]
fn expect_continue_is_answered_before_the_body() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, base);
    let head = fill_template(
        &format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\n{AUTH}Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .into_bytes(),
        &proxy.key,
        "expect-wait",
    );
    let mut c = Client::open(proxy.addr);
    c.set_timeout(Duration::from_secs(3));
    c.send(&head).unwrap();
    let line = c.line().map_err(|e| format!("expect-wait: {e}")).unwrap();
    assert_eq!(
        line.as_deref().map(String::from_utf8_lossy).as_deref(),
        Some("HTTP/1.1 100 Continue"),
        "expect-wait: no interim 100 before the body was sent"
    );
    assert_eq!(c.line().unwrap().as_deref(), Some(&b""[..]), "expect-wait: 100 Continue head");
    c.send(b"{}").unwrap();
    let r = c.response().unwrap_or_else(|e| panic!("expect-wait: {e}"));
    assert_eq!(r.status, 200, "expect-wait: {}", r.text());
    let got = mock.received();
    assert_eq!(got.len(), 1, "expect-wait");
    assert!(got[0].header("expect").is_none(), "expect-wait: the upstream received Expect");
    assert_eq!(got[0].body, b"{}", "expect-wait");

    // Refused: answered at once, no 100, no body awaited.
    let mut c = Client::open(proxy.addr);
    c.set_timeout(Duration::from_secs(2));
    c.send(format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nx-kurral-agent: bot\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").as_bytes())
        .unwrap();
    let r = c.response().unwrap_or_else(|e| panic!("expect-refused: {e}"));
    assert_eq!((r.status, r.interim.as_slice()), (401, &[][..]), "expect-refused: {}", r.text());
    assert!(r.closes(), "expect-refused: the unread body means the connection must close");
}

// ---------------------------------------------------------------------------------------------
// 2. Pipelining and desync

fn echo_request(key: &str, tag: &str, body: &[u8]) -> Vec<u8> {
    fill_template(&post(format!("Content-Length: {}\r\n", body.len()).as_bytes(), body), key, tag)
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, base);
    for mode in [Mode::Whole, Mode::Bytewise] {
        let tags: Vec<String> = (1..=3).map(|i| format!("pipe-{mode:?}-{i}")).collect();
        let mut all = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            all.extend(echo_request(&proxy.key, t, &vec![b'x'; i * 7 + 1]));
        }
        all.extend_from_slice(HEALTH);
        let mut c = Client::open(proxy.addr);
        match mode {
            Mode::Whole => c.send(&all).unwrap(),
            Mode::Bytewise => assert_eq!(c.send_bytewise(&all), None, "pipelining [{mode:?}]: write failed"),
        }
        for (i, t) in tags.iter().enumerate() {
            let r = c.response().unwrap_or_else(|e| panic!("pipelining [{mode:?}] response {}: {e}", i + 1));
            assert_eq!(r.status, 200, "pipelining [{mode:?}] response {}: {}", i + 1, r.text());
            assert_eq!(
                r.echoed_header("x-case").as_deref(),
                Some(t.as_str()),
                "pipelining [{mode:?}]: response {} out of order",
                i + 1
            );
            assert_eq!(r.json().unwrap()["body_len"], i * 7 + 1, "pipelining [{mode:?}] response {}", i + 1);
        }
        let r = c.response().unwrap_or_else(|e| panic!("pipelining [{mode:?}] health: {e}"));
        assert_eq!(r.status, 200, "pipelining [{mode:?}] health");
    }
    assert_eq!(mock.received().len(), 6, "pipelining: upstream request count");
}

/// A complete request hidden in a body is body: it is forwarded as such, never as a request.
#[test]
fn smuggled_request_inside_a_body_stays_body() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    // One worker: the next client's request goes over the same pooled upstream connection, where
    // a framing disagreement would surface as a desync.
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.workers = 1;
    });
    let key = proxy.key.clone();
    let hidden = fill_template(&post(b"Content-Length: 2\r\n", b"{}"), &key, "smuggled");
    let hidden_get = fill_template(&line("GET /api/proxy/openai/v1/models HTTP/1.1", b"", b""), &key, "smuggled");
    let payloads: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("cl_body_holds_request", echo_request(&key, "carrier-cl_body_holds_request", &hidden), hidden.clone()),
        (
            "cl_body_starts_with_last_chunk",
            echo_request(&key, "carrier-cl_body_starts_with_last_chunk", &cat(&[b"0\r\n\r\n", &hidden_get])),
            cat(&[b"0\r\n\r\n", &hidden_get]),
        ),
        (
            "chunked_body_holds_request",
            fill_template(
                &chunked(&cat(&[format!("{:x}\r\n", hidden.len()).as_bytes(), &hidden, b"\r\n0\r\n\r\n"])),
                &key,
                "carrier-chunked_body_holds_request",
            ),
            hidden.clone(),
        ),
    ];
    for (name, raw, body) in payloads {
        let before = mock.received().len();
        let mut c = Client::open(proxy.addr);
        let mut all = raw.clone();
        all.extend(echo_request(&key, &format!("after-{name}"), b"{}"));
        c.send(&all).unwrap();
        let r = c.response().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json().unwrap()["body_len"], body.len(), "{name}: the body was not forwarded whole");
        let r2 = c.response().unwrap_or_else(|e| panic!("{name} (the client's second request): {e}"));
        assert_eq!(
            r2.echoed_header("x-case"),
            Some(format!("after-{name}")),
            "{name}: second response is not the second request's"
        );
        assert_eq!(c.closed_within(Duration::from_millis(300)), Ok(false), "{name}: a third response appeared");
        // Another client, same pooled upstream connection.
        let mut victim = Client::open(proxy.addr);
        victim.send(&echo_request(&key, &format!("victim-{name}"), b"{}")).unwrap();
        let v = victim.response().unwrap_or_else(|e| panic!("{name} (victim): {e}"));
        assert_eq!(
            v.echoed_header("x-case"),
            Some(format!("victim-{name}")),
            "{name}: the next client got someone else's answer"
        );
        let got = mock.received();
        let tags: Vec<String> =
            got[before..].iter().map(|r| r.header_str("x-case").unwrap_or("-").to_string()).collect();
        assert_eq!(
            tags,
            vec![format!("carrier-{name}"), format!("after-{name}"), format!("victim-{name}")],
            "{name}: upstream requests"
        );
        assert_eq!(got[before].body, body, "{name}: upstream body");
    }
}

/// Classic desync payloads, each followed in the same write by a request the attacker hopes the
/// upstream sees: refused, closed, and nothing after the refusal is answered or forwarded.
#[test]
fn desync_payloads_are_refused_and_the_connection_closed() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, base);
    let key = proxy.key.clone();
    let smuggled = fill_template(&line("GET /api/proxy/openai/v1/models HTTP/1.1", b"", b""), &key, "smuggled");
    let chunk_of_smuggled = cat(&[format!("{:x}\r\n", smuggled.len()).as_bytes(), &smuggled, b"\r\n0\r\n\r\n"]);
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("cl_te", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", &cat(&[b"0\r\n\r\n", &smuggled]))),
        ("te_cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", &chunk_of_smuggled)),
        (
            "te_te_obfuscated",
            post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\nContent-Length: 4\r\n", &chunk_of_smuggled),
        ),
        ("te_space_before_colon", post(b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n", &chunk_of_smuggled)),
        ("te_obs_fold", post(b"Transfer-Encoding: x\r\n chunked\r\nContent-Length: 4\r\n", &chunk_of_smuggled)),
        ("te_xchunked_with_cl", post(b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n", &chunk_of_smuggled)),
        ("cl_cl", post(b"Content-Length: 0\r\nContent-Length: 4\r\n", &cat(&[b"ABCD", &smuggled]))),
        ("te_chunk_ext_lf", post(b"Transfer-Encoding: chunked\r\n", &cat(&[b"2;\n{}\r\n0\r\n\r\n", &smuggled]))),
        ("te_last_chunk_no_crlf", post(b"Transfer-Encoding: chunked\r\n", &cat(&[b"2\r\n{}\r\n0\r\n", &smuggled]))),
    ];
    let mut failures = Vec::new();
    for (name, raw) in &payloads {
        let raw = fill_template(raw, &key, &format!("carrier-{name}"));
        let mut c = Client::open(proxy.addr);
        let _ = c.send(&raw);
        let outcome = (|| -> Result<(), String> {
            let r = c.response()?;
            if r.status != 400 {
                return Err(format!("status {}, expected 400: {}", r.status, r.text()));
            }
            if !r.closes() {
                return Err("400 without `connection: close`".into());
            }
            if !c.closed_within(Duration::from_secs(2))? {
                return Err("connection still open after the refusal".into());
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            failures.push(format!("  {name}: {e}"));
        }
    }
    thread::sleep(Duration::from_millis(200));
    for r in mock.received() {
        failures.push(format!("  upstream received {} {} (x-case {:?})", r.method, r.target, r.header_str("x-case")));
    }
    assert!(failures.is_empty(), "desync payloads:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. Limits at their edges, timeouts

fn sized_chunks(sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for &n in sizes {
        out.extend(format!("{n:x}\r\n").into_bytes());
        out.extend(vec![b'a'; n]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn body_limit_edges() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.max_body_bytes = 1000;
    });
    let key = proxy.key.clone();
    let cases: Vec<(&str, Vec<u8>, Option<usize>)> = vec![
        ("cl_at_limit", post(b"Content-Length: 1000\r\n", &[b'a'; 1000]), Some(1000)),
        ("cl_one_over", post(b"Content-Length: 1001\r\n", &[b'a'; 1001]), None),
        ("chunked_at_limit_one_chunk", chunked(&sized_chunks(&[1000])), Some(1000)),
        ("chunked_at_limit_two_chunks", chunked(&sized_chunks(&[600, 400])), Some(1000)),
        ("chunked_one_over_in_last_chunk", chunked(&sized_chunks(&[1000, 1])), None),
        ("chunked_one_over_one_chunk", chunked(&sized_chunks(&[1001])), None),
    ];
    let mut failures = Vec::new();
    for (name, raw, accepted) in &cases {
        for mode in [Mode::Whole, Mode::Bytewise] {
            let tag = format!("{name}-{mode:?}");
            let raw = fill_template(raw, &key, &tag);
            let mut c = Client::open(proxy.addr);
            match mode {
                Mode::Whole => {
                    let _ = c.send(&raw);
                }
                Mode::Bytewise => {
                    let _ = c.send_bytewise(&raw);
                }
            }
            let res = (|| -> Result<(), String> {
                let r = c.response()?;
                let seen = mock.received().iter().filter(|r| r.header_str("x-case") == Some(&tag)).count();
                match accepted {
                    Some(n) => {
                        if r.status != 200 || r.json().map(|v| v["body_len"].clone()) != Some((*n).into()) {
                            return Err(format!("expected 200 with {n} bytes upstream, got {}", r.summary()));
                        }
                    }
                    None => {
                        if r.status != 413 || r.error_type().is_none() {
                            return Err(format!("expected the proxy's 413, got {}", r.summary()));
                        }
                        if seen > 0 {
                            return Err("413 but the upstream received the request".into());
                        }
                        if !r.closes() || !c.closed_within(Duration::from_secs(2))? {
                            return Err("413 but the connection stays open".into());
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = res {
                failures.push(format!("  {name} [{mode:?}]: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "body limit edges:\n{}", failures.join("\n"));
}

/// A chat request whose head is exactly `len` bytes (padded with an X-Pad field).
fn head_of_len(key: &str, tag: &str, len: usize) -> Vec<u8> {
    let start = fill_template(
        format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\n{AUTH}Content-Length: 2\r\nX-Pad: ").as_bytes(),
        key,
        tag,
    );
    let pad = len - start.len() - "\r\n\r\n".len();
    cat(&[&start, &vec![b'p'; pad], b"\r\n\r\n{}"])
}

#[test]
fn head_and_target_limit_edges() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.max_head_bytes = 2048;
        c.limits.max_target_bytes = 512;
    });
    let key = proxy.key.clone();
    let target = |len: usize| format!("{CHAT}?pad={}", "t".repeat(len - CHAT.len() - 5));
    let mut failures = Vec::new();
    for mode in [Mode::Whole, Mode::Bytewise] {
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("head_at_limit", head_of_len(&key, &format!("head-at-{mode:?}"), 2048), 200),
            ("head_one_over", head_of_len(&key, &format!("head-over-{mode:?}"), 2049), 431),
            (
                "target_at_limit",
                fill_template(
                    &line(&format!("POST {} HTTP/1.1", target(512)), b"Content-Length: 2\r\n", b"{}"),
                    &key,
                    &format!("target-at-{mode:?}"),
                ),
                200,
            ),
            (
                "target_one_over",
                fill_template(
                    &line(&format!("POST {} HTTP/1.1", target(513)), b"Content-Length: 2\r\n", b"{}"),
                    &key,
                    &format!("target-over-{mode:?}"),
                ),
                414,
            ),
        ];
        for (name, raw, want) in cases {
            let mut c = Client::open(proxy.addr);
            match mode {
                Mode::Whole => {
                    let _ = c.send(&raw);
                }
                Mode::Bytewise => {
                    let _ = c.send_bytewise(&raw);
                }
            }
            match c.response() {
                Ok(r) if r.status == want => {
                    if want != 200 && (!r.closes() || c.closed_within(Duration::from_secs(2)) != Ok(true)) {
                        failures.push(format!("  {name} [{mode:?}]: {want} but the connection stays open"));
                    }
                }
                Ok(r) => failures.push(format!("  {name} [{mode:?}]: expected {want}, got {}", r.summary())),
                Err(e) => failures.push(format!("  {name} [{mode:?}]: {e}")),
            }
        }
    }
    let got = mock.received();
    if let Some(r) = got.iter().find(|r| r.header_str("x-case").is_some_and(|t| t.starts_with("target-at"))) {
        assert_eq!(r.target.len(), 512 - "/api/proxy/openai".len(), "target_at_limit: forwarded target");
    }
    assert!(failures.is_empty(), "head/target limit edges:\n{}", failures.join("\n"));
}

/// What a stalled client sees: a 408 or a bare close, and when.
fn stalled_outcome(c: &mut Client, started: Instant) -> (String, Duration) {
    let outcome = match c.response() {
        Ok(r) if r.status == 408 => {
            if r.closes() {
                "408".to_string()
            } else {
                "408 without connection: close".to_string()
            }
        }
        Ok(r) => format!("unexpected {}", r.summary()),
        Err(e) if e.starts_with("connection closed") => "closed".to_string(),
        Err(e) => e,
    };
    (outcome, started.elapsed())
}

#[test]
fn head_timeout_cuts_a_stalled_half_head() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.head_timeout = Duration::from_secs(1);
    });
    let mut c = Client::open(proxy.addr);
    c.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    c.send(format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nContent-Le").as_bytes()).unwrap();
    let (outcome, t) = stalled_outcome(&mut c, started);
    assert!(
        (outcome == "408" || outcome == "closed")
            && t >= Duration::from_millis(800)
            && t <= Duration::from_millis(2500),
        "half head, head_timeout 1s: {outcome} after {t:?}"
    );
}

#[test]
fn head_timeout_is_absolute_against_slowloris() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.head_timeout = Duration::from_secs(1);
    });
    let mut c = Client::open(proxy.addr);
    c.set_timeout(Duration::from_secs(8));
    let writer = c.s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let head = format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nX-Slow: {}\r\n\r\n", "s".repeat(400));
    let started = Instant::now();
    let trickle = thread::spawn(move || {
        let mut w = writer;
        for b in head.bytes() {
            if stop2.load(Ordering::SeqCst) || w.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let (outcome, t) = stalled_outcome(&mut c, started);
    stop.store(true, Ordering::SeqCst);
    let _ = trickle.join();
    assert!(
        (outcome == "408" || outcome == "closed") && t <= Duration::from_millis(2500),
        "slowloris (1 byte / 100 ms), head_timeout 1s: {outcome} after {t:?}"
    );
}

#[test]
fn idle_timeout_closes_keep_alive_connections() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.idle_timeout = Duration::from_secs(1);
    });
    // After a request.
    let mut c = Client::open(proxy.addr);
    c.send(HEALTH).unwrap();
    let r = c.response().unwrap_or_else(|e| panic!("idle after request: {e}"));
    assert!(r.status == 200 && !r.closes(), "idle after request: {}", r.summary());
    let t0 = Instant::now();
    let closed = c.closed_within(Duration::from_secs(4));
    let t = t0.elapsed();
    assert!(
        closed == Ok(true) && t >= Duration::from_millis(700) && t <= Duration::from_millis(2500),
        "idle after request, idle_timeout 1s: closed={closed:?} after {t:?}"
    );
    // A connection that never sends a byte.
    let mut c = Client::open(proxy.addr);
    let t0 = Instant::now();
    let closed = c.closed_within(Duration::from_secs(4));
    let t = t0.elapsed();
    assert!(
        closed == Ok(true) && t <= Duration::from_millis(2500),
        "silent connection, idle_timeout 1s: closed={closed:?} after {t:?}"
    );
}

/// The scripted faults, chosen by the request's `x-fault` field.
fn fault_script(req: &[u8]) -> Script {
    let hold = |ms| Then::Hold(Duration::from_millis(ms));
    match header_value(req, "x-fault").as_deref().unwrap_or("ok") {
        "close" => Script::silent(Then::Close),
        "reset-mid-head" => Script::reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Le", Then::Reset),
        "garbage" => Script::reply("SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02\r\n\r\n", hold(5000)),
        "garbage-close" => Script::reply("\x16\x03\x01\x00\x05hello garbage\r\n\r\n", Then::Close),
        "bad-chunked" => Script::reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", hold(5000))
            .then_after(Duration::from_millis(200), "5\r\nhello\r\nZZZ\r\n"),
        "bad-chunked-same-packet" => Script::reply(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n",
            hold(5000),
        ),
        "short-length-after-head" => {
            Script::reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n", Then::Close)
                .then_after(Duration::from_millis(200), "0123456789")
        }
        "overrun-same-packet" => Script::reply(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"evil\":1}",
            hold(3000),
        ),
        "overrun-late" => Script::reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", hold(3000)).then_after(
            Duration::from_millis(300),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"evil\":1}",
        ),
        "bad-chunked-close" => Script::reply(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n",
            Then::Close,
        ),
        "short-length" => {
            Script::reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n0123456789", Then::Close)
        }
        "upgrade-101" => Script::reply("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", hold(5000)),
        "upgrade-101-close" => Script::reply("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", Then::Close),
        "cl-te" => Script::reply("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Then::Close),
        "slow" => Script::silent(hold(5000)),
        "slow-short" => Script::silent(hold(1500)),
        "stream" => Script::reply(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n",
            hold(300),
        ),
        "flood" => Script {
            delay: Duration::ZERO,
            bytes: b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 67108864\r\n\r\n".to_vec(),
            filler: 64 << 20,
            more: Vec::new(),
            then: Then::Close,
        },
        _ => Script::reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}", Then::Close),
    }
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A proxy whose OpenAI upstream is `raw` and whose Anthropic upstream is a closed port.
fn fault_proxy(mock: &MockUpstream, raw: &RawUpstream, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let raw_url = raw.url();
    let dead = dead_url();
    Proxy::start(mock, |c| {
        base(c);
        c.upstreams[Provider::OpenAi.index()] = UpstreamUrl::parse(&raw_url).unwrap();
        c.upstreams[Provider::Anthropic.index()] = UpstreamUrl::parse(&dead).unwrap();
        tweak(c);
    })
}

fn fault_request(key: &str, fault: &str) -> Vec<u8> {
    format!(
        "POST {CHAT} HTTP/1.1\r\nHost: p\r\nX-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\nx-fault: {fault}\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .into_bytes()
}

#[test]
fn first_byte_timeout_cuts_a_silent_upstream() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    let proxy = fault_proxy(&mock, &raw, |c| {
        c.limits.first_byte_timeout = Duration::from_secs(1);
        c.limits.request_timeout = Duration::from_secs(10);
    });
    let mut c = Client::open(proxy.addr);
    c.set_timeout(Duration::from_secs(8));
    let t0 = Instant::now();
    c.send(&fault_request(&proxy.key, "slow")).unwrap();
    let r = c.response();
    let t = t0.elapsed();
    let status = r.as_ref().map(|r| r.status);
    assert!(
        status == Ok(504) && t <= Duration::from_millis(2500),
        "first_byte_timeout 1s (request_timeout 10s), upstream silent 5s: {:?} after {t:?}",
        r.map(|r| r.summary())
    );
}

#[test]
fn client_write_timeout_drops_a_client_that_reads_nothing() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    let proxy = fault_proxy(&mock, &raw, |c| {
        c.limits.client_write_timeout = Duration::from_secs(1);
        c.limits.request_timeout = Duration::from_secs(30);
    });
    let mut c = Client::open(proxy.addr);
    c.send(&fault_request(&proxy.key, "flood")).unwrap();
    thread::sleep(Duration::from_millis(3500));
    c.set_timeout(Duration::from_secs(3));
    let r = c.response();
    match r {
        Ok(r) => assert!(
            !r.complete && r.body.len() < 64 << 20,
            "client_write_timeout 1s, client reads nothing for 3.5s of a 64 MiB answer: got {} bytes, complete={}",
            r.body.len(),
            r.complete
        ),
        Err(e) => assert!(e.starts_with("connection closed"), "client_write_timeout: {e}"),
    }
    assert!(raw.wait_idle(Duration::from_secs(3)), "client_write_timeout: the upstream connection was not closed");
}

#[test]
fn requests_per_minute_is_enforced() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.requests_per_minute = 3;
    });
    let statuses: Vec<u16> = (0..8)
        .map(|i| {
            let mut c = Client::open(proxy.addr);
            c.send(&echo_request(&proxy.key, &format!("rpm-{i}"), b"{}")).unwrap();
            c.response().map(|r| r.status).unwrap_or(0)
        })
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        statuses[0] == 200 && statuses.contains(&429),
        "requests_per_minute 3, 8 calls at once: statuses {statuses:?}"
    );
    assert_eq!(mock.received().len(), ok, "requests_per_minute: refused calls reached the upstream");
}

#[test]
fn max_concurrent_is_enforced() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.max_concurrent = 1;
        c.limits.request_timeout = Duration::from_secs(15);
    });
    let key = proxy.key.clone();
    let mut held = Client::open(proxy.addr);
    held.send(&fill_template(&held_stream_request(), &key, "held")).unwrap();
    // Wait for the held stream's head and first event.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let mut tmp = [0u8; 4096];
        let n = held.s.read(&mut tmp).unwrap_or(0);
        assert!(n > 0, "max_concurrent: the held stream did not start");
        seen.extend_from_slice(&tmp[..n]);
    }
    let mut c = Client::open(proxy.addr);
    c.send(&echo_request(&key, "second", b"{}")).unwrap();
    let r = c.response();
    mock.release();
    let got = mock.received();
    let status = r.as_ref().map(|r| r.status).unwrap_or(0);
    assert!(
        matches!(status, 429 | 503),
        "max_concurrent 1, second call while one is in flight: {:?}",
        r.map(|r| r.summary())
    );
    assert!(
        !got.iter().any(|r| r.header_str("x-case") == Some("second")),
        "max_concurrent: the refused call reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Upstream faults

fn records_of(proxy: &mut Proxy) -> Vec<CallRecord> {
    proxy.stop_and_records()
}

#[test]
fn upstream_faults_before_the_answer_are_502() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    let mut proxy = fault_proxy(&mock, &raw, |_| {});
    let key = proxy.key.clone();
    let mut failures = Vec::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "refused",
            format!("POST {MESSAGES} HTTP/1.1\r\nHost: p\r\nX-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\nContent-Length: 2\r\n\r\n{{}}")
                .into_bytes(),
        ),
        ("close", fault_request(&key, "close")),
        ("reset-mid-head", fault_request(&key, "reset-mid-head")),
        ("garbage", fault_request(&key, "garbage")),
        ("upgrade-101", fault_request(&key, "upgrade-101")),
        ("cl-te", fault_request(&key, "cl-te")),
    ];
    let n = cases.len();
    for (name, raw_req) in cases {
        let mut c = Client::open(proxy.addr);
        c.set_timeout(Duration::from_secs(4));
        let t0 = Instant::now();
        c.send(&raw_req).unwrap();
        match c.response() {
            Ok(r)
                if r.status == 502
                    && r.error_type().as_deref() == Some("upstream_error")
                    && t0.elapsed() < Duration::from_secs(3) =>
            {
                if !r.has_header("x-kurral-request-id") {
                    failures.push(format!("  {name}: 502 without x-kurral-request-id"));
                }
            }
            Ok(r) => failures.push(format!(
                "  {name}: expected a prompt 502 upstream_error JSON, got {} after {:?}",
                r.summary(),
                t0.elapsed()
            )),
            Err(e) => failures.push(format!("  {name}: {e}")),
        }
    }
    let records = records_of(&mut proxy);
    let outcomes: Vec<(u16, Outcome)> = records.iter().map(|r| (r.status, r.outcome)).collect();
    if outcomes != vec![(502, Outcome::UpstreamError); n] {
        failures.push(format!("  records: {outcomes:?}, expected {n} x (502, UpstreamError)"));
    }
    assert!(failures.is_empty(), "upstream faults:\n{}", failures.join("\n"));
}

#[test]
fn upstream_cut_after_the_head_is_a_visible_truncation() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    let mut proxy = fault_proxy(&mock, &raw, |_| {});
    let key = proxy.key.clone();
    let mut failures = Vec::new();
    // (name, fault, partial body, a 502 is acceptable: the fault arrived with the head, before
    // the proxy had sent anything)
    let cases = [
        ("malformed-chunked-after-head", "bad-chunked", &b"hello"[..], false),
        ("malformed-chunked-same-packet", "bad-chunked-same-packet", b"hello", true),
        ("short-content-length-after-head", "short-length-after-head", b"0123456789", false),
        ("short-content-length-same-packet", "short-length", b"0123456789", true),
    ];
    for (name, fault, partial, may_502) in cases {
        let mut c = Client::open(proxy.addr);
        c.set_timeout(Duration::from_secs(3));
        let t0 = Instant::now();
        c.send(&fault_request(&key, fault)).unwrap();
        let res = (|| -> Result<(), String> {
            let r = c.response()?;
            if may_502 && r.status == 502 && r.error_type().is_some() {
                return Ok(());
            }
            if r.status != 200 {
                return Err(format!(
                    "expected the relayed 200 head{}, got {}",
                    if may_502 { " or a 502" } else { "" },
                    r.summary()
                ));
            }
            if r.complete {
                return Err(format!("the client saw a clean end the upstream never sent (body {:?})", r.text()));
            }
            if !r.body.starts_with(partial) && !partial.starts_with(&r.body) {
                return Err(format!("body {:?}", r.text()));
            }
            if t0.elapsed() > Duration::from_secs(2) {
                return Err(format!("the cut took {:?} to reach the client", t0.elapsed()));
            }
            Ok(())
        })();
        if let Err(e) = res {
            failures.push(format!("  {name}: {e}"));
        }
    }
    let records = records_of(&mut proxy);
    let outcomes: Vec<Outcome> = records.iter().map(|r| r.outcome).collect();
    if outcomes != vec![Outcome::UpstreamError; cases.len()] {
        failures.push(format!("  records: {outcomes:?}, expected {} x UpstreamError", cases.len()));
    }
    assert!(failures.is_empty(), "truncations:\n{}", failures.join("\n"));
}

/// Bytes an upstream sends beyond a response's framing (with it, or later while the connection
/// sits in the pool) must never be read as the answer to the next client's request.
#[test]
fn upstream_overrun_never_answers_the_next_request() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    // One worker, one pool: the next call reuses the connection if the proxy pooled it.
    let proxy = fault_proxy(&mock, &raw, |c| c.workers = 1);
    let key = proxy.key.clone();
    let mut failures = Vec::new();
    for fault in ["overrun-same-packet", "overrun-late"] {
        let mut a = Client::open(proxy.addr);
        a.send(&fault_request(&key, fault)).unwrap();
        match a.response() {
            Ok(r) if r.status == 200 && r.body == b"{}" => {}
            Ok(r) => failures.push(format!("  {fault}: first call got {}", r.summary())),
            Err(e) => failures.push(format!("  {fault}: first call: {e}")),
        }
        drop(a);
        thread::sleep(Duration::from_millis(600));
        let mut b = Client::open(proxy.addr);
        b.send(&fault_request(&key, "ok")).unwrap();
        match b.response() {
            Ok(r) if r.status == 200 && r.body == br#"{"ok":true}"# => {}
            Ok(r) => failures.push(format!("  {fault}: the next client's call got {}", r.summary())),
            Err(e) => failures.push(format!("  {fault}: the next client's call: {e}")),
        }
    }
    assert!(failures.is_empty(), "response desync through the pool:\n{}", failures.join("\n"));
}

/// An upstream that never completes the TCP handshake: its listen queue is full, so the kernel
/// drops the proxy's SYNs. The connect timeout fires at its edge: 504, recorded as a timeout.
#[test]
fn upstream_connect_timeout_is_504() {
    let _g = shared_lock();
    let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    while fillers.len() < 16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    assert!(fillers.len() < 16, "connect-timeout: the listen queue never filled");
    let mock = MockUpstream::start_plain();
    let url = UpstreamUrl::parse(&format!("http://{addr}")).unwrap();
    let mut proxy = Proxy::start(&mock, |c| {
        base(c);
        c.limits.connect_timeout = Duration::from_secs(1);
        c.upstreams = [url.clone(), url.clone(), url];
    });
    let mut c = Client::open(proxy.addr);
    let t0 = Instant::now();
    c.send(&fault_request(&proxy.key, "ok")).unwrap();
    let r = c.response().unwrap_or_else(|e| panic!("connect-timeout: {e}"));
    let t = t0.elapsed();
    assert_eq!(r.status, 504, "connect-timeout: {}", r.summary());
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(3),
        "connect-timeout: answered after {t:?}, the timeout is 1 s"
    );
    let records = records_of(&mut proxy);
    assert_eq!(records.iter().map(|r| (r.status, r.outcome)).collect::<Vec<_>>(), vec![(504, Outcome::Timeout)]);
}

#[test]
fn upstream_slower_than_request_timeout_is_504() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    let mut proxy = fault_proxy(&mock, &raw, |c| c.limits.request_timeout = Duration::from_secs(1));
    let mut c = Client::open(proxy.addr);
    let t0 = Instant::now();
    c.send(&fault_request(&proxy.key, "slow")).unwrap();
    let r = c.response().unwrap_or_else(|e| panic!("slow upstream: {e}"));
    let t = t0.elapsed();
    assert!(
        r.status == 504
            && r.error_type().is_some()
            && t >= Duration::from_millis(800)
            && t <= Duration::from_millis(2500),
        "slow upstream, request_timeout 1s: {} after {t:?}",
        r.summary()
    );
    let records = records_of(&mut proxy);
    assert_eq!(
        records.iter().map(|r| (r.status, r.outcome)).collect::<Vec<_>>(),
        vec![(504, Outcome::Timeout)],
        "slow upstream: record"
    );
}

#[test]
fn client_leaving_mid_stream_is_recorded_client_cancelled() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, base);
    let raw = fill_template(&held_stream_request(), &proxy.key, "leaver");
    let mut c = Client::open(proxy.addr);
    c.send(&raw).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let mut tmp = [0u8; 4096];
        let n = match c.s.read(&mut tmp) {
            Ok(n) => n,
            // Blocking reads in this process can be interrupted; like std's read_exact, retry.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("client-cancel: the stream did not start: {e} (got {:?})", String::from_utf8_lossy(&seen)),
        };
        assert!(n > 0, "client-cancel: the stream did not start: closed after {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&tmp[..n]);
    }
    c.reset();
    thread::sleep(Duration::from_millis(100));
    mock.release();
    thread::sleep(Duration::from_millis(300));
    let records = records_of(&mut proxy);
    assert_eq!(
        records.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        vec![Outcome::ClientCancelled],
        "client-cancel: a client that reset mid-stream"
    );
}

/// A thousand faulted connections, of every kind above, from both sides: afterwards the
/// process holds about as many descriptors and as much memory as before, and the proxy still
/// serves.
#[test]
fn descriptors_and_memory_return_to_baseline_after_a_thousand_faults() {
    let _g = exclusive_lock();
    let mock = MockUpstream::start_plain();
    let raw = RawUpstream::start(fault_script);
    let proxy = fault_proxy(&mock, &raw, |c| c.limits.request_timeout = Duration::from_secs(1));
    let (addr, key) = (proxy.addr, proxy.key.clone());

    let one = |kind: &str| -> Result<(), String> {
        let mut c = Client::open(addr);
        c.set_timeout(Duration::from_secs(5));
        match kind {
            "refused" => {
                let _ = c.send(
                    format!("POST {MESSAGES} HTTP/1.1\r\nHost: p\r\nX-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\nContent-Length: 2\r\n\r\n{{}}")
                        .as_bytes(),
                );
                c.response().map(drop)
            }
            "client-garbage" => {
                let _ = c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n");
                c.response().map(drop)
            }
            "client-half-head" => {
                let _ = c.send(format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nX-Kurral").as_bytes());
                Ok(())
            }
            "client-half-body" => {
                let _ = c.send(
                    format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nX-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\nx-fault: ok\r\nContent-Length: 100\r\n\r\n0123456789")
                        .as_bytes(),
                );
                thread::sleep(Duration::from_millis(5));
                c.reset();
                Ok(())
            }
            "client-leaves-stream" => {
                let _ = c.send(&fault_request(&key, "stream"));
                let mut tmp = [0u8; 4096];
                let _ = c.s.read(&mut tmp);
                c.reset();
                Ok(())
            }
            fault => {
                let _ = c.send(&fault_request(&key, fault));
                c.response().map(drop).or_else(|e| if e.starts_with("connection closed") { Ok(()) } else { Err(e) })
            }
        }
    };

    // Warm-up: one of each, so that lazily created state exists before the baseline.
    let kinds = [
        "refused",
        "close",
        "reset-mid-head",
        "garbage-close",
        "bad-chunked-close",
        "short-length",
        "upgrade-101-close",
        "cl-te",
        "client-garbage",
        "client-half-head",
        "client-half-body",
        "client-leaves-stream",
        "ok",
    ];
    for k in kinds {
        let _ = one(k);
    }
    let _ = one("slow-short");
    assert!(raw.wait_idle(Duration::from_secs(10)), "fd: warm-up connections did not finish");

    // A thousand faulted calls from 8 client threads.
    let storm = || {
        let errors = std::sync::Mutex::new(Vec::new());
        thread::scope(|s| {
            for t in 0..8 {
                let (one, errors) = (&one, &errors);
                s.spawn(move || {
                    if t < 4 {
                        let _ = one("slow-short");
                    }
                    for i in 0..123 {
                        let kind = kinds[(i + t) % (kinds.len() - 1)];
                        if let Err(e) = one(kind) {
                            errors.lock().unwrap().push(format!("{kind}: {e}"));
                        }
                    }
                });
            }
        });
        errors.into_inner().unwrap()
    };
    // A first storm lets the allocator's arenas, the store's memtable and the pools reach their
    // working size; the second must then leave descriptors and memory where they were.
    let _ = storm();
    assert!(raw.wait_idle(Duration::from_secs(10)), "fd: first storm's connections did not finish");
    thread::sleep(Duration::from_millis(1200));
    let baseline = fd_count();
    let rss_before = rss_kib();

    let errors = storm();
    let idle = raw.wait_idle(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut now = fd_count();
    while now > baseline + 8 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        now = fd_count();
    }
    let mut c = Client::open(addr);
    c.send(&fault_request(&key, "ok")).unwrap();
    let after = c.response().map(|r| r.summary());
    drop(c);
    let rss_after = rss_kib();
    let accepted = raw.accepted();
    eprintln!("fd: baseline {baseline}, after {now}; upstream connections accepted {accepted}");
    eprintln!("memory: VmRSS {rss_before} KiB before the second thousand faulted calls, {rss_after} KiB after");
    assert!(accepted >= 1200, "fd: only {accepted} upstream connections: the faults did not run");
    assert!(
        rss_after <= rss_before + MEMORY_SLACK_KIB,
        "memory: {rss_before} KiB before a thousand faulted calls, {rss_after} KiB after"
    );
    assert!(idle, "fd: upstream-side connections still open 10s after the faults (proxy keeps them?)");
    assert!(now <= baseline + 8, "fd: {baseline} descriptors before 1000 faulted connections, {now} after (6s later)");
    assert!(after.as_ref().is_ok_and(|s| s.starts_with("200")), "fd: the proxy no longer serves: {after:?}");
    assert!(
        errors.len() < 10,
        "fd: {} faulted calls hung or got no answer, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// README: on shutdown, calls in flight get the grace period, then the remaining captures are
/// written and the server stops. A call that outlives the grace period must not keep it from
/// stopping.
#[test]
fn shutdown_returns_when_a_call_outlives_the_grace_period() {
    let _g = shared_lock();
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| {
        base(c);
        c.shutdown_grace = Duration::from_secs(1);
        c.limits.request_timeout = Duration::from_secs(30);
    });
    let mut c = Client::open(proxy.addr);
    c.send(&fill_template(&held_stream_request(), &proxy.key, "outlives-grace")).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let mut tmp = [0u8; 4096];
        let n = c.s.read(&mut tmp).unwrap_or(0);
        assert!(n > 0, "outlives-grace: the stream did not start");
        seen.extend_from_slice(&tmp[..n]);
    }
    let server = proxy.server.take().expect("running");
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    // Detached: if shutdown never returns, the thread is left behind rather than hanging the suite.
    thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    let returned = rx.recv_timeout(Duration::from_secs(6)).is_ok();
    assert!(
        returned,
        "outlives-grace: shutdown (grace 1s) with a held stream in flight had not returned after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        c.closed_within(Duration::from_secs(1)),
        Ok(true),
        "outlives-grace: the client connection is still open"
    );
    let records = kurral_proxy::capture::store::Store::open(proxy.data_dir()).unwrap().calls().unwrap();
    assert_eq!(records.len(), 1, "outlives-grace: the cut call's record was not written");
}
