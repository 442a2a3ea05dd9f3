//! In-process mock of the OpenAI, Anthropic and Gemini HTTP/1.1 APIs.
//!
//! It listens on a real loopback socket (plain or TLS) so the proxy under test talks to it exactly
//! as it would to a provider, and it records every request so tests can assert what the proxy
//! forwarded. Each request can steer the answer with `x-mock-*` headers, which the proxy passes
//! through like any other unknown header:
//!
//! | header                  | effect                                                            |
//! |-------------------------|-------------------------------------------------------------------|
//! | `x-mock-status: N`      | status N; non-2xx gets a provider-style JSON error body           |
//! | `x-mock-framing: F`     | `length`, `chunked` or `close` (no length, close after the body)  |
//! | `x-mock-delay-ms: N`    | streams: sleep before every event; non-streams: before the head   |
//! | `x-mock-hold: 1`        | streams: head + first event, then wait for [`MockUpstream::release`] (10 s cap); non-streams: head, then wait |
//! | `x-mock-cut: N`         | streams: head + N events, then drop the TCP connection; non-streams: head + N body bytes, then drop |
//! | `x-mock-echo: 1`        | 200 JSON describing the request (method, target, headers, body_len) |
//!
//! Precedence: echo, then a non-2xx status, then the route's normal answer (a 2xx status only
//! replaces the status code). Token counts of every canned answer are in [`tokens`].

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// Token counts reported by every canned answer, so tests can check what the proxy extracted.
pub mod tokens {
    /// OpenAI `prompt_tokens` / `input_tokens`, Anthropic `input_tokens`, Gemini `promptTokenCount`.
    pub const INPUT: u64 = 23;
    /// OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`.
    pub const CACHED: u64 = 5;
    pub const CACHE_WRITE_5M: u64 = 8;
    pub const CACHE_WRITE_1H: u64 = 3;
    /// Anthropic `cache_creation_input_tokens`.
    pub const CACHE_WRITE: u64 = CACHE_WRITE_5M + CACHE_WRITE_1H;
    /// Final output count (Gemini stream chunks report a growing count that ends here).
    pub const OUTPUT: u64 = 7;
    /// Anthropic `message_start` reports this placeholder before the real count arrives.
    pub const OUTPUT_AT_START: u64 = 1;
    /// OpenAI `reasoning_tokens` (part of OUTPUT, as OpenAI counts them).
    pub const REASONING: u64 = 3;
    pub const TOTAL: u64 = INPUT + OUTPUT;
}

/// The text answer; streamed as the pieces of [`TEXT_PIECES`].
pub const TEXT: &str = "Hello from mock";
pub const TEXT_PIECES: [&str; 3] = ["Hello", " from", " mock"];
/// Tool-call arguments; streamed as the pieces of [`TOOL_ARG_PIECES`].
pub const TOOL_ARGS: &str = r#"{"city":"Paris"}"#;
pub const TOOL_ARG_PIECES: [&str; 5] = ["{\"", "city", "\":\"", "Paris", "\"}"];
/// Tool name used when the request's first tool name cannot be found.
pub const DEFAULT_TOOL: &str = "get_weather";
/// How long `x-mock-hold` waits for `release()` before carrying on anyway.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Request-target exactly as received, query included.
    pub target: String,
    /// Names in their original case, values raw (surrounding whitespace trimmed), in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body after de-chunking.
    pub body: Vec<u8>,
    /// The request came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Index (from 0) of the accepted connection that carried it.
    pub conn_id: usize,
}

impl Received {
    /// First value of a header, name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
    }

    /// First value of a header as text; `None` if absent or not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        split_target(&self.target).0
    }

    /// The body parsed as JSON; panics with the body in the message when it is not JSON.
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub struct MockUpstream {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

struct Shared {
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    requests: AtomicU64,
    stop: AtomicBool,
    release_gen: Mutex<u64>,
    release_cv: Condvar,
    /// Clones of open sockets, so dropping the mock can end connections the proxy keeps pooled.
    live: Mutex<HashMap<usize, TcpStream>>,
}

/// A poisoned lock only means another connection thread panicked; the data is still usable and
/// refusing it would turn one failure into a hung test.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn release_generation(&self) -> u64 {
        *lock(&self.release_gen)
    }

    fn wait_release(&self, seen: u64) {
        let deadline = Instant::now() + HOLD_TIMEOUT;
        let mut gen = lock(&self.release_gen);
        while *gen == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            gen = match self.release_cv.wait_timeout(gen, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl MockUpstream {
    pub fn start_plain() -> MockUpstream {
        Self::start(None)
    }

    pub fn start_tls() -> MockUpstream {
        Self::start(Some(tls_material().config.clone()))
    }

    fn start(tls: Option<Arc<ServerConfig>>) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("mock upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock upstream: local_addr");
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            release_gen: Mutex::new(0),
            release_cv: Condvar::new(),
            live: Mutex::new(HashMap::new()),
        });
        let is_tls = tls.is_some();
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("mock-upstream-{}", addr.port()))
            .spawn(move || accept_loop(listener, sh, tls))
            .expect("mock upstream: spawn accept thread");
        MockUpstream { addr, tls: is_tls, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for TLS (the name the certificate
    /// carries; it also carries IP 127.0.0.1).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}", self.addr.port())
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// PEM of the CA that signed the TLS mock's certificate (the same CA for every TLS mock in
    /// the process). `None` for plain mocks.
    pub fn ca_pem(&self) -> Option<String> {
        self.tls.then(|| tls_material().ca_pem.clone())
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Waits until at least `n` requests have arrived (or `timeout` passes) and returns them all.
    /// For requests whose client gave up before the answer, where the response cannot serve as
    /// the synchronisation point.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Lets every stream currently held by `x-mock-hold` continue. Streams that start holding
    /// later wait for the next call.
    pub fn release(&self) {
        *lock(&self.shared.release_gen) += 1;
        self.shared.release_cv.notify_all();
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Held streams would otherwise keep their threads and sockets for HOLD_TIMEOUT.
        self.release();
        for (_, s) in lock(&self.shared.live).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // accept() only notices `stop` when something connects; joining then guarantees the port
        // refuses connections once drop returns. If the wake-up fails, leave the thread detached
        // rather than hang.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let (true, Some(h)) = (woke, self.acceptor.take()) {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

struct TlsMaterial {
    ca_pem: String,
    config: Arc<ServerConfig>,
}

/// Generated once per test binary: key generation is the slow part and nothing depends on each
/// mock having its own CA.
fn tls_material() -> &'static TlsMaterial {
    static MATERIAL: OnceLock<TlsMaterial> = OnceLock::new();
    MATERIAL.get_or_init(make_tls_material)
}

fn make_tls_material() -> TlsMaterial {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().expect("mock CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("mock CA params");
    ca.distinguished_name.push(DnType::CommonName, "kurral-proxy mock upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).expect("mock CA certificate");

    let leaf_key = KeyPair::generate().expect("mock leaf key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("mock leaf params");
    leaf.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).expect("mock leaf certificate");

    // Explicit provider: the crate enables only `ring`, but relying on the process default would
    // break if another dependency ever turned on a second provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("mock TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("mock TLS certificate");
    // Providers negotiate http/1.1 when the client offers it; a client offering only h2 fails the
    // handshake, which is what a test of that case should see.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsMaterial { ca_pem: ca_cert.pem(), config: Arc::new(config) }
}

// ---------------------------------------------------------------------------------------------
// Connections

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<ServerConfig>>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                // Typically EMFILE; back off instead of spinning.
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst);
        // Each SSE event must leave as its own segment, immediately.
        let _ = stream.set_nodelay(true);
        if let Ok(c) = stream.try_clone() {
            lock(&shared.live).insert(id, c);
        }
        let sh = shared.clone();
        let tls = tls.clone();
        let spawned = thread::Builder::new().name(format!("mock-conn-{id}")).spawn(move || {
            serve_connection(&sh, stream, tls, id);
            lock(&sh.live).remove(&id);
        });
        if spawned.is_err() {
            lock(&shared.live).remove(&id);
        }
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

struct Conn {
    io: Transport,
    /// The underlying socket, for shutdown and for draining without TLS.
    raw: TcpStream,
    buf: Vec<u8>,
}

enum ReadError {
    /// The peer went away or the transport failed: nobody to answer.
    Closed,
    /// Malformed request: answer 400 and close.
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Closed
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Bad(why.into()))
}

impl Conn {
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.io.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(ReadError::Closed);
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.pop() != Some(b'\r') {
                    return bad("bare LF in chunked framing");
                }
                return Ok(line);
            }
            if self.buf.len() > limit {
                return bad("line too long");
            }
            if self.fill()? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    /// Ends the connection the way a crashing upstream would: no close_notify, no terminator.
    fn abort(&mut self) {
        let _ = self.raw.shutdown(Shutdown::Both);
    }

    /// Ends the connection the way a well-behaved server does.
    fn finish(&mut self) {
        if let Transport::Tls(s) = &mut self.io {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.raw.shutdown(Shutdown::Write);
        // Closing with unread input makes the kernel send RST, which can destroy the response
        // before the peer has read it; drain briefly instead.
        let _ = self.raw.set_read_timeout(Some(Duration::from_millis(200)));
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut sink = [0u8; 4096];
        while Instant::now() < deadline {
            match self.raw.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

enum Next {
    KeepAlive,
    Close,
    Abort,
    /// Writing failed: the peer is gone.
    Gone,
}

fn serve_connection(shared: &Shared, sock: TcpStream, tls: Option<Arc<ServerConfig>>, conn_id: usize) {
    let Ok(raw) = sock.try_clone() else { return };
    let io = match tls {
        None => Transport::Plain(sock),
        Some(cfg) => match ServerConnection::new(cfg) {
            Ok(c) => Transport::Tls(Box::new(StreamOwned::new(c, sock))),
            Err(_) => return,
        },
    };
    let mut conn = Conn { io, raw, buf: Vec::new() };
    loop {
        let (mut rec, http10) = match read_request(&mut conn) {
            Ok(Some(r)) => r,
            Ok(None) | Err(ReadError::Closed) => return,
            Err(ReadError::Bad(why)) => {
                let reply = bad_request_reply(&why);
                let _ = transmit(shared, &mut conn, reply, &Controls::default(), true, false, false);
                conn.finish();
                return;
            }
        };
        rec.conn_id = conn_id;
        lock(&shared.received).push(rec.clone());
        let seq = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let next = match Controls::parse(&rec) {
            Ok(ctl) => {
                let reply = build_reply(&rec, &ctl, seq);
                let head_only = rec.method == "HEAD";
                transmit(shared, &mut conn, reply, &ctl, wants_close(&rec, http10), http10, head_only)
            }
            Err(why) => {
                let reply = bad_request_reply(&why);
                transmit(shared, &mut conn, reply, &Controls::default(), true, http10, false)
            }
        };
        match next {
            Next::KeepAlive => {}
            Next::Close => {
                conn.finish();
                return;
            }
            Next::Abort => {
                conn.abort();
                return;
            }
            Next::Gone => return,
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn has_bare_lf(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| i == 0 || bytes[i - 1] != b'\r')
}

/// Reads one request. `Ok(None)` means the peer closed cleanly between requests.
fn read_request(conn: &mut Conn) -> Result<Option<(Received, bool)>, ReadError> {
    let head_end = loop {
        // RFC 9112 §2.2: tolerate empty lines before a request line.
        while conn.buf.starts_with(b"\r\n") {
            conn.buf.drain(..2);
        }
        // Fail fast on garbage (say a TLS ClientHello sent to the plain mock) rather than wait
        // for a blank line that never comes while the client waits for an answer.
        if let Some(&first) = conn.buf.first() {
            if !is_tchar(first) && conn.buf.as_slice() != b"\r" {
                return bad("request does not start with a method");
            }
        }
        if let Some(i) = memchr::memmem::find(&conn.buf, b"\r\n\r\n") {
            break i;
        }
        if has_bare_lf(&conn.buf) {
            return bad("bare LF in request head");
        }
        if conn.buf.len() > MAX_HEAD {
            return bad("request head too large");
        }
        if conn.fill()? == 0 {
            return if conn.buf.is_empty() { Ok(None) } else { Err(ReadError::Closed) };
        }
    };
    let head: Vec<u8> = conn.buf.drain(..head_end + 4).collect();
    let head = &head[..head_end];
    if has_bare_lf(head) {
        return bad("bare LF in request head");
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));

    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return bad("malformed request line");
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return bad("malformed method");
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return bad("malformed request-target");
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return bad("unsupported HTTP version"),
    };

    let mut headers = Vec::new();
    for line in lines {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return bad("obsolete header line folding");
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return bad("header line without colon");
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return bad("malformed header name");
        }
        let value = trim_ows(&line[colon + 1..]);
        if value.contains(&0) {
            return bad("NUL in header value");
        }
        // Names are tchars, hence ASCII.
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    let mut rec = Received {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        headers,
        body: Vec::new(),
        chunked: false,
        conn_id: 0,
    };

    let codings: Vec<Vec<u8>> = rec
        .header_all("transfer-encoding")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| trim_ows(t).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
    let length = if !codings.is_empty() {
        if codings.last().map(Vec::as_slice) != Some(b"chunked") {
            return bad("unsupported transfer-encoding");
        }
        rec.chunked = true;
        None
    } else {
        let mut length: Option<usize> = None;
        for v in rec.header_all("content-length") {
            for t in v.split(|&b| b == b',') {
                let t = trim_ows(t);
                if t.is_empty() || !t.iter().all(u8::is_ascii_digit) {
                    return bad("malformed content-length");
                }
                let Some(n) = std::str::from_utf8(t).ok().and_then(|s| s.parse::<usize>().ok()) else {
                    return bad("content-length overflow");
                };
                if length.is_some_and(|l| l != n) {
                    return bad("conflicting content-length");
                }
                length = Some(n);
            }
        }
        if length.is_some_and(|n| n > MAX_BODY) {
            return bad("body too large");
        }
        Some(length.unwrap_or(0))
    };

    let expects_body = rec.chunked || length.is_some_and(|n| n > 0);
    let expect_continue = rec.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    if expect_continue && expects_body && conn.buf.is_empty() {
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }

    match length {
        Some(n) => rec.body = conn.take(n)?,
        None => rec.body = read_chunked(conn)?,
    }
    Ok(Some((rec, http10)))
}

fn read_chunked(conn: &mut Conn) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = conn.line(4096)?;
        let size = trim_ows(line.split(|&b| b == b';').next().unwrap_or_default());
        if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
            return bad("malformed chunk size");
        }
        let Some(size) = std::str::from_utf8(size).ok().and_then(|s| usize::from_str_radix(s, 16).ok()) else {
            return bad("chunk size overflow");
        };
        if size == 0 {
            // Trailer fields are read and dropped; nothing in the tests needs them.
            while !conn.line(MAX_HEAD)?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return bad("body too large");
        }
        body.extend(conn.take(size)?);
        if conn.take(2)? != b"\r\n" {
            return bad("chunk data not followed by CRLF");
        }
    }
}

fn wants_close(rec: &Received, http10: bool) -> bool {
    let tokens: Vec<Vec<u8>> = rec
        .header_all("connection")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| trim_ows(t).to_ascii_lowercase())
        .collect();
    let has = |t: &[u8]| tokens.iter().any(|x| x == t);
    has(b"close") || (http10 && !has(b"keep-alive"))
}

// ---------------------------------------------------------------------------------------------
// Test controls

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
    Close,
}

#[derive(Default)]
struct Controls {
    status: Option<u16>,
    framing: Option<Framing>,
    delay: Duration,
    hold: bool,
    cut: Option<usize>,
    echo: bool,
}

impl Controls {
    /// Bad control values answer 400 instead of being ignored, so a typo in a test shows up as
    /// a failure rather than as a silently normal answer.
    fn parse(rec: &Received) -> Result<Controls, String> {
        let get = |name: &str| rec.header(name).map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase());
        let flag = |v: String| !matches!(v.as_str(), "" | "0" | "false" | "no" | "off");
        let number =
            |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: expected a number, got {v:?}"));
        let mut ctl = Controls::default();
        if let Some(v) = get("x-mock-status") {
            let n = number("x-mock-status", v)?;
            let status = u16::try_from(n).ok().filter(|s| (200..=599).contains(s));
            ctl.status = Some(status.ok_or_else(|| format!("x-mock-status: {n} is not in 200..=599"))?);
        }
        if let Some(v) = get("x-mock-framing") {
            ctl.framing = Some(match v.as_str() {
                "length" | "content-length" => Framing::Length,
                "chunked" => Framing::Chunked,
                "close" => Framing::Close,
                _ => return Err(format!("x-mock-framing: unknown value {v:?}")),
            });
        }
        if let Some(v) = get("x-mock-delay-ms") {
            ctl.delay = Duration::from_millis(number("x-mock-delay-ms", v)?);
        }
        if let Some(v) = get("x-mock-cut") {
            ctl.cut = Some(usize::try_from(number("x-mock-cut", v)?).unwrap_or(usize::MAX));
        }
        ctl.hold = get("x-mock-hold").is_some_and(flag);
        ctl.echo = get("x-mock-echo").is_some_and(flag);
        Ok(ctl)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing responses

struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Full(Vec<u8>),
    /// Each element is one write (an SSE event, or a piece of Gemini's JSON array) and one chunk.
    Events(Vec<Vec<u8>>),
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn transmit(
    shared: &Shared,
    conn: &mut Conn,
    reply: Reply,
    ctl: &Controls,
    client_close: bool,
    http10: bool,
    head_only: bool,
) -> Next {
    let streaming = matches!(reply.body, Body::Events(_));
    let bodyless = head_only || matches!(reply.status, 204 | 304);
    let mut framing = ctl.framing.unwrap_or(if streaming { Framing::Chunked } else { Framing::Length });
    if http10 && framing == Framing::Chunked {
        framing = Framing::Close;
    }
    let close = client_close || framing == Framing::Close;
    let events = match reply.body {
        Body::Full(b) => vec![b],
        Body::Events(e) => e,
    };
    let total: usize = events.iter().map(Vec::len).sum();

    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    let _ = write!(head, "Date: {}\r\n", http_date());
    if !matches!(reply.status, 204 | 304) {
        let _ = write!(head, "Content-Type: {}\r\n", reply.content_type);
        match framing {
            Framing::Length => {
                let _ = write!(head, "Content-Length: {total}\r\n");
            }
            Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
            Framing::Close => {}
        }
    }
    if close {
        head.push_str("Connection: close\r\n");
    } else if http10 {
        head.push_str("Connection: keep-alive\r\n");
    }
    for (name, value) in &reply.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");

    if !streaming && !ctl.delay.is_zero() {
        thread::sleep(ctl.delay);
    }
    // Taken before anything is sent, so a release() issued after the client saw the first event
    // always counts.
    let gen = shared.release_generation();
    if conn.send(head.as_bytes()).is_err() {
        return Next::Gone;
    }
    if bodyless {
        return if close { Next::Close } else { Next::KeepAlive };
    }
    let chunked = framing == Framing::Chunked;

    if !streaming {
        if ctl.hold {
            shared.wait_release(gen);
        }
        let body = &events[0];
        if let Some(n) = ctl.cut {
            let mut wire = Vec::new();
            if chunked && !body.is_empty() {
                wire.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            }
            wire.extend_from_slice(&body[..n.min(body.len())]);
            let _ = conn.send(&wire);
            return Next::Abort;
        }
        let wire = if chunked {
            // Two chunks rather than one, so the proxy's de-chunking is exercised on JSON too.
            let mid = body.len() / 2;
            let mut w = Vec::new();
            for part in [&body[..mid], &body[mid..]] {
                if !part.is_empty() {
                    w.extend(chunk(part));
                }
            }
            w.extend_from_slice(b"0\r\n\r\n");
            w
        } else {
            body.clone()
        };
        if conn.send(&wire).is_err() {
            return Next::Gone;
        }
    } else {
        for (i, ev) in events.iter().enumerate() {
            if ctl.cut == Some(i) {
                return Next::Abort;
            }
            if !ctl.delay.is_zero() {
                thread::sleep(ctl.delay);
            }
            // An empty chunk would read as the terminator.
            if !ev.is_empty() {
                let wire = if chunked { chunk(ev) } else { ev.clone() };
                if conn.send(&wire).is_err() {
                    return Next::Gone;
                }
            }
            if i == 0 && ctl.hold {
                shared.wait_release(gen);
            }
        }
        if ctl.cut.is_some() {
            return Next::Abort;
        }
        if chunked && conn.send(b"0\r\n\r\n").is_err() {
            return Next::Gone;
        }
    }
    if close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

/// IMF-fixdate, as in the `Date` header.
fn http_date() -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = unix_now();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days-to-civil conversion from Howard Hinnant's date algorithms.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Routing and request inspection

#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
    Other,
}

enum Route {
    Chat,
    Responses,
    Messages,
    Gemini { model: String, stream: bool, sse: bool },
    NotFound,
}

impl Route {
    fn of(method: &str, target: &str) -> Route {
        let (path, query) = split_target(target);
        if method != "POST" {
            return Route::NotFound;
        }
        match path {
            "/v1/chat/completions" => return Route::Chat,
            "/v1/responses" => return Route::Responses,
            "/v1/messages" => return Route::Messages,
            _ => {}
        }
        let rest = ["/v1beta/models/", "/v1/models/", "/v1alpha/models/"].iter().find_map(|p| path.strip_prefix(p));
        let Some((model, action)) = rest.and_then(|r| r.rsplit_once(':')) else {
            return Route::NotFound;
        };
        if model.is_empty() || model.contains('/') {
            return Route::NotFound;
        }
        let stream = match action {
            "generateContent" => false,
            "streamGenerateContent" => true,
            _ => return Route::NotFound,
        };
        let sse = query.split('&').any(|p| p == "alt=sse");
        Route::Gemini { model: model.to_string(), stream, sse }
    }

    fn provider(&self) -> Provider {
        match self {
            Route::Chat | Route::Responses => Provider::OpenAi,
            Route::Messages => Provider::Anthropic,
            Route::Gemini { .. } => Provider::Gemini,
            Route::NotFound => Provider::Other,
        }
    }
}

/// (path, query) of a request-target; absolute-form targets are reduced to their path.
fn split_target(target: &str) -> (&str, &str) {
    let mut t = target;
    for scheme in ["http://", "https://"] {
        if let Some(rest) = t.strip_prefix(scheme) {
            t = rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    t.split_once('?').unwrap_or((t, ""))
}

/// What the request body asks for.
struct Ask {
    model: Option<String>,
    stream: bool,
    include_usage: bool,
    /// Tool name when the request declares tools.
    tool: Option<String>,
}

impl Ask {
    fn of(body: &[u8], gemini: bool) -> Ask {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            // Not JSON: fall back to the textual checks, so odd bodies still get a sensible answer.
            let tools = if gemini {
                memchr::memmem::find(body, b"\"functionDeclarations\"").is_some()
            } else {
                memchr::memmem::find(body, b"\"tools\"").is_some()
            };
            return Ask {
                model: None,
                stream: json_true(body, "stream"),
                include_usage: json_true(body, "include_usage"),
                tool: tools.then(|| DEFAULT_TOOL.to_string()),
            };
        };
        let tools = v.get("tools").and_then(|t| t.as_array()).cloned().unwrap_or_default();
        let declarations: Vec<serde_json::Value> = tools
            .iter()
            .filter_map(|t| t.get("functionDeclarations").or_else(|| t.get("function_declarations")))
            .filter_map(|d| d.as_array())
            .flatten()
            .cloned()
            .collect();
        let tool = if gemini {
            (!declarations.is_empty())
                .then(|| declarations[0].get("name").and_then(|n| n.as_str()).unwrap_or(DEFAULT_TOOL))
        } else {
            tools.first().map(|t| {
                t.pointer("/function/name").or_else(|| t.get("name")).and_then(|n| n.as_str()).unwrap_or(DEFAULT_TOOL)
            })
        };
        Ask {
            model: v.get("model").and_then(|m| m.as_str()).map(str::to_string),
            stream: v.get("stream").and_then(|s| s.as_bool()) == Some(true),
            include_usage: v.pointer("/stream_options/include_usage").and_then(|s| s.as_bool()) == Some(true),
            tool: tool.map(str::to_string),
        }
    }
}

/// Whether `"key"` is followed by `: true` (any whitespace) somewhere in `body`.
fn json_true(body: &[u8], key: &str) -> bool {
    let needle = format!("\"{key}\"");
    memchr::memmem::find_iter(body, needle.as_bytes()).any(|i| {
        let rest = &body[i + needle.len()..];
        let rest = rest.trim_ascii_start();
        rest.strip_prefix(b":").is_some_and(|r| r.trim_ascii_start().starts_with(b"true"))
    })
}

// ---------------------------------------------------------------------------------------------
// JSON building. Field order is written out by hand: it matches the providers and does not
// depend on whether some dependency enables serde_json's `preserve_order`.

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn obj(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&q(k));
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    out
}

fn arr(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

fn n(v: u64) -> String {
    v.to_string()
}

fn raw(s: &str) -> String {
    s.to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `"key": value`, no other whitespace: Google's SSE payloads.
    Google,
    /// Two-space indented, like OpenAI's and Google's non-streamed bodies.
    Pretty,
}

/// Re-spaces compact JSON (as built above) without reordering anything.
fn restyle(compact: &str, style: Style) -> String {
    let mut out = String::with_capacity(compact.len() * 2);
    let mut chars = compact.chars().peekable();
    let (mut in_str, mut esc, mut depth) = (false, false, 0usize);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        let pretty = style == Style::Pretty;
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            ':' => out.push_str(": "),
            '{' | '[' if pretty => {
                out.push(c);
                if let Some(&close @ ('}' | ']')) = chars.peek() {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' if pretty => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' if pretty => {
                out.push(',');
                newline(&mut out, depth);
            }
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Answers

const SSE_UTF8: &str = "text/event-stream; charset=utf-8";
const JSON: &str = "application/json";
const JSON_GOOGLE: &str = "application/json; charset=UTF-8";

fn request_id(seq: u64) -> String {
    format!("req_{:024x}", 0x6d6f_636b_0000_0000_u64 ^ seq)
}

fn provider_headers(p: Provider, seq: u64, streaming: bool) -> Vec<(&'static str, String)> {
    let mut h = match p {
        Provider::OpenAi => vec![
            ("x-request-id", request_id(seq)),
            ("openai-organization", raw("user-mock")),
            ("openai-processing-ms", raw("42")),
            ("openai-version", raw("2020-10-01")),
            ("x-ratelimit-limit-requests", raw("10000")),
            ("x-ratelimit-remaining-requests", raw("9999")),
            ("Server", raw("cloudflare")),
            ("CF-RAY", format!("{:016x}-CDG", seq)),
        ],
        Provider::Anthropic => vec![
            ("request-id", request_id(seq)),
            ("anthropic-organization-id", raw("00000000-0000-4000-8000-000000000000")),
            ("anthropic-ratelimit-requests-limit", raw("4000")),
            ("anthropic-ratelimit-requests-remaining", raw("3999")),
            ("Server", raw("cloudflare")),
            ("CF-RAY", format!("{:016x}-CDG", seq)),
        ],
        Provider::Gemini => vec![
            ("Vary", raw("Origin, X-Origin, Referer")),
            ("Server", raw("scaffolding on HTTPServer2")),
            ("X-XSS-Protection", raw("0")),
            ("X-Frame-Options", raw("SAMEORIGIN")),
            ("X-Content-Type-Options", raw("nosniff")),
            ("Server-Timing", raw("gfet4t7; dur=42")),
        ],
        Provider::Other => vec![("x-request-id", request_id(seq))],
    };
    if streaming {
        h.push(("Cache-Control", raw("no-cache")));
    }
    h
}

fn json_reply(status: u16, provider: Provider, seq: u64, content_type: &'static str, body: String) -> Reply {
    Reply { status, content_type, headers: provider_headers(provider, seq, false), body: Body::Full(body.into_bytes()) }
}

fn stream_reply(provider: Provider, seq: u64, content_type: &'static str, events: Vec<String>) -> Reply {
    Reply {
        status: 200,
        content_type,
        headers: provider_headers(provider, seq, true),
        body: Body::Events(events.into_iter().map(String::into_bytes).collect()),
    }
}

fn bad_request_reply(why: &str) -> Reply {
    let body = obj(&[("error", obj(&[("message", q(&format!("bad request: {why}")))]))]);
    json_reply(400, Provider::Other, 0, JSON, body)
}

fn build_reply(rec: &Received, ctl: &Controls, seq: u64) -> Reply {
    let route = Route::of(&rec.method, &rec.target);
    let provider = route.provider();
    if ctl.echo {
        return echo_reply(rec, provider, seq);
    }
    if let Some(status) = ctl.status.filter(|s| !(200..300).contains(s)) {
        return error_reply(status, provider, seq);
    }
    let ask = Ask::of(&rec.body, matches!(route, Route::Gemini { .. }));
    let mut reply = match &route {
        Route::Chat => openai_chat(&ask, seq),
        Route::Responses => openai_responses(&ask, seq),
        Route::Messages => anthropic_messages(&ask, seq),
        Route::Gemini { model, stream, sse } => gemini(&ask, model, *stream, *sse, seq),
        Route::NotFound => {
            let body = obj(&[("error", obj(&[("message", q("not found"))]))]);
            json_reply(404, provider, seq, JSON, body)
        }
    };
    if let Some(status) = ctl.status {
        reply.status = status;
    }
    reply
}

fn echo_reply(rec: &Received, provider: Provider, seq: u64) -> Reply {
    let headers: Vec<serde_json::Value> =
        rec.headers.iter().map(|(k, v)| serde_json::json!([k, String::from_utf8_lossy(v)])).collect();
    let body = obj(&[
        ("method", q(&rec.method)),
        ("target", q(&rec.target)),
        ("headers", serde_json::Value::Array(headers).to_string()),
        ("body_len", n(rec.body.len() as u64)),
        ("chunked", raw(if rec.chunked { "true" } else { "false" })),
        ("conn_id", n(rec.conn_id as u64)),
    ]);
    json_reply(200, provider, seq, JSON, body)
}

fn error_reply(status: u16, provider: Provider, seq: u64) -> Reply {
    let message = format!("mock error {status}");
    let body = match provider {
        Provider::OpenAi | Provider::Other => {
            let (kind, code) = match status {
                401 => ("invalid_request_error", q("invalid_api_key")),
                403 => ("invalid_request_error", q("unsupported_country_region_territory")),
                404 => ("invalid_request_error", q("model_not_found")),
                429 => ("requests", q("rate_limit_exceeded")),
                500..=599 => ("server_error", raw("null")),
                _ => ("invalid_request_error", raw("null")),
            };
            let err = obj(&[("message", q(&message)), ("type", q(kind)), ("param", raw("null")), ("code", code)]);
            restyle(&obj(&[("error", err)]), Style::Pretty)
        }
        Provider::Anthropic => {
            let kind = match status {
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            obj(&[
                ("type", q("error")),
                ("error", obj(&[("type", q(kind)), ("message", q(&message))])),
                ("request_id", q(&request_id(seq))),
            ])
        }
        Provider::Gemini => {
            let kind = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                409 => "ABORTED",
                429 => "RESOURCE_EXHAUSTED",
                499 => "CANCELLED",
                500 => "INTERNAL",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                _ => "UNKNOWN",
            };
            let err = obj(&[("code", n(u64::from(status))), ("message", q(&message)), ("status", q(kind))]);
            restyle(&obj(&[("error", err)]), Style::Pretty)
        }
    };
    let content_type = if provider == Provider::Gemini { JSON_GOOGLE } else { JSON };
    json_reply(status, provider, seq, content_type, body)
}

// --- OpenAI Chat Completions

fn chat_usage() -> String {
    obj(&[
        ("prompt_tokens", n(tokens::INPUT)),
        ("completion_tokens", n(tokens::OUTPUT)),
        ("total_tokens", n(tokens::TOTAL)),
        ("prompt_tokens_details", obj(&[("cached_tokens", n(tokens::CACHED)), ("audio_tokens", n(0))])),
        (
            "completion_tokens_details",
            obj(&[
                ("reasoning_tokens", n(tokens::REASONING)),
                ("audio_tokens", n(0)),
                ("accepted_prediction_tokens", n(0)),
                ("rejected_prediction_tokens", n(0)),
            ]),
        ),
    ])
}

fn openai_chat(ask: &Ask, seq: u64) -> Reply {
    let id = format!("chatcmpl-mock{seq}");
    let model = ask.model.clone().unwrap_or_else(|| "gpt-4o-mini".to_string());
    let created = unix_now();
    let finish = if ask.tool.is_some() { "tool_calls" } else { "stop" };

    if !ask.stream {
        let message = match &ask.tool {
            Some(name) => obj(&[
                ("role", q("assistant")),
                ("content", raw("null")),
                (
                    "tool_calls",
                    arr(&[obj(&[
                        ("id", q("call_1")),
                        ("type", q("function")),
                        ("function", obj(&[("name", q(name)), ("arguments", q(TOOL_ARGS))])),
                    ])]),
                ),
                ("refusal", raw("null")),
                ("annotations", raw("[]")),
            ]),
            None => obj(&[
                ("role", q("assistant")),
                ("content", q(TEXT)),
                ("refusal", raw("null")),
                ("annotations", raw("[]")),
            ]),
        };
        let body = obj(&[
            ("id", q(&id)),
            ("object", q("chat.completion")),
            ("created", n(created)),
            ("model", q(&model)),
            (
                "choices",
                arr(&[obj(&[
                    ("index", n(0)),
                    ("message", message),
                    ("logprobs", raw("null")),
                    ("finish_reason", q(finish)),
                ])]),
            ),
            ("usage", chat_usage()),
            ("service_tier", q("default")),
            ("system_fingerprint", q("fp_mock")),
        ]);
        return json_reply(200, Provider::OpenAi, seq, JSON, restyle(&body, Style::Pretty));
    }

    // Like OpenAI, chunks carry a `usage` member (null until the last) only when it was asked for.
    let event = |choices: String, usage: String| {
        let mut fields = vec![
            ("id", q(&id)),
            ("object", q("chat.completion.chunk")),
            ("created", n(created)),
            ("model", q(&model)),
            ("service_tier", q("default")),
            ("system_fingerprint", q("fp_mock")),
            ("choices", choices),
        ];
        if ask.include_usage {
            fields.push(("usage", usage));
        }
        format!("data: {}\n\n", obj(&fields))
    };
    let choice = |delta: String, finish: String| {
        arr(&[obj(&[("index", n(0)), ("delta", delta), ("logprobs", raw("null")), ("finish_reason", finish)])])
    };
    let mut events = Vec::new();
    match &ask.tool {
        Some(name) => {
            let call = obj(&[
                ("index", n(0)),
                ("id", q("call_1")),
                ("type", q("function")),
                ("function", obj(&[("name", q(name)), ("arguments", q(""))])),
            ]);
            let delta = obj(&[
                ("role", q("assistant")),
                ("content", raw("null")),
                ("tool_calls", arr(&[call])),
                ("refusal", raw("null")),
            ]);
            events.push(event(choice(delta, raw("null")), raw("null")));
            for piece in TOOL_ARG_PIECES {
                let call = obj(&[("index", n(0)), ("function", obj(&[("arguments", q(piece))]))]);
                let delta = obj(&[("tool_calls", arr(&[call]))]);
                events.push(event(choice(delta, raw("null")), raw("null")));
            }
        }
        None => {
            let delta = obj(&[("role", q("assistant")), ("content", q("")), ("refusal", raw("null"))]);
            events.push(event(choice(delta, raw("null")), raw("null")));
            for piece in TEXT_PIECES {
                events.push(event(choice(obj(&[("content", q(piece))]), raw("null")), raw("null")));
            }
        }
    }
    events.push(event(choice(raw("{}"), q(finish)), raw("null")));
    if ask.include_usage {
        events.push(event(raw("[]"), chat_usage()));
    }
    events.push(raw("data: [DONE]\n\n"));
    stream_reply(Provider::OpenAi, seq, SSE_UTF8, events)
}

// --- OpenAI Responses

fn responses_usage() -> String {
    obj(&[
        ("input_tokens", n(tokens::INPUT)),
        ("input_tokens_details", obj(&[("cached_tokens", n(tokens::CACHED))])),
        ("output_tokens", n(tokens::OUTPUT)),
        ("output_tokens_details", obj(&[("reasoning_tokens", n(tokens::REASONING))])),
        ("total_tokens", n(tokens::TOTAL)),
    ])
}

fn openai_responses(ask: &Ask, seq: u64) -> Reply {
    let id = format!("resp_mock{seq}");
    let msg_id = format!("msg_mock{seq}");
    let fc_id = format!("fc_mock{seq}");
    let model = ask.model.clone().unwrap_or_else(|| "gpt-4o-mini".to_string());
    let created = unix_now();

    let response = |status: &str, output: String, usage: String| {
        obj(&[
            ("id", q(&id)),
            ("object", q("response")),
            ("created_at", n(created)),
            ("status", q(status)),
            ("background", raw("false")),
            ("error", raw("null")),
            ("incomplete_details", raw("null")),
            ("instructions", raw("null")),
            ("max_output_tokens", raw("null")),
            ("model", q(&model)),
            ("output", output),
            ("parallel_tool_calls", raw("true")),
            ("previous_response_id", raw("null")),
            ("reasoning", obj(&[("effort", raw("null")), ("summary", raw("null"))])),
            ("service_tier", q("default")),
            ("store", raw("true")),
            ("temperature", raw("1.0")),
            ("text", obj(&[("format", obj(&[("type", q("text"))]))])),
            ("tool_choice", q("auto")),
            ("tools", raw("[]")),
            ("top_p", raw("1.0")),
            ("truncation", q("disabled")),
            ("usage", usage),
            ("user", raw("null")),
            ("metadata", raw("{}")),
        ])
    };
    let text_part = |text: &str| {
        obj(&[("type", q("output_text")), ("annotations", raw("[]")), ("logprobs", raw("[]")), ("text", q(text))])
    };
    let item = |done: bool| {
        let status = q(if done { "completed" } else { "in_progress" });
        match &ask.tool {
            Some(name) => obj(&[
                ("id", q(&fc_id)),
                ("type", q("function_call")),
                ("status", status),
                ("arguments", q(if done { TOOL_ARGS } else { "" })),
                ("call_id", q("call_1")),
                ("name", q(name)),
            ]),
            None => obj(&[
                ("id", q(&msg_id)),
                ("type", q("message")),
                ("status", status),
                ("content", if done { arr(&[text_part(TEXT)]) } else { raw("[]") }),
                ("role", q("assistant")),
            ]),
        }
    };

    if !ask.stream {
        let body = response("completed", arr(&[item(true)]), responses_usage());
        return json_reply(200, Provider::OpenAi, seq, JSON, restyle(&body, Style::Pretty));
    }

    let mut events = Vec::new();
    let mut push = |kind: &str, fields: Vec<(&str, String)>| {
        let mut all = vec![("type", q(kind)), ("sequence_number", n(events.len() as u64))];
        all.extend(fields);
        events.push(format!("event: {kind}\ndata: {}\n\n", obj(&all)));
    };
    let pending = response("in_progress", raw("[]"), raw("null"));
    push("response.created", vec![("response", pending.clone())]);
    push("response.in_progress", vec![("response", pending)]);
    push("response.output_item.added", vec![("output_index", n(0)), ("item", item(false))]);
    match &ask.tool {
        Some(_) => {
            for piece in TOOL_ARG_PIECES {
                push(
                    "response.function_call_arguments.delta",
                    vec![("item_id", q(&fc_id)), ("output_index", n(0)), ("delta", q(piece))],
                );
            }
            push(
                "response.function_call_arguments.done",
                vec![("item_id", q(&fc_id)), ("output_index", n(0)), ("arguments", q(TOOL_ARGS))],
            );
        }
        None => {
            let at = || vec![("item_id", q(&msg_id)), ("output_index", n(0)), ("content_index", n(0))];
            push("response.content_part.added", [at(), vec![("part", text_part(""))]].concat());
            for piece in TEXT_PIECES {
                push("response.output_text.delta", [at(), vec![("delta", q(piece)), ("logprobs", raw("[]"))]].concat());
            }
            push("response.output_text.done", [at(), vec![("text", q(TEXT)), ("logprobs", raw("[]"))]].concat());
            push("response.content_part.done", [at(), vec![("part", text_part(TEXT))]].concat());
        }
    }
    push("response.output_item.done", vec![("output_index", n(0)), ("item", item(true))]);
    let done = response("completed", arr(&[item(true)]), responses_usage());
    push("response.completed", vec![("response", done)]);
    stream_reply(Provider::OpenAi, seq, SSE_UTF8, events)
}

// --- Anthropic Messages

fn anthropic_usage(output: u64) -> String {
    obj(&[
        ("input_tokens", n(tokens::INPUT)),
        ("cache_creation_input_tokens", n(tokens::CACHE_WRITE)),
        ("cache_read_input_tokens", n(tokens::CACHED)),
        (
            "cache_creation",
            obj(&[
                ("ephemeral_5m_input_tokens", n(tokens::CACHE_WRITE_5M)),
                ("ephemeral_1h_input_tokens", n(tokens::CACHE_WRITE_1H)),
            ]),
        ),
        ("output_tokens", n(output)),
        ("service_tier", q("standard")),
    ])
}

fn anthropic_messages(ask: &Ask, seq: u64) -> Reply {
    let id = format!("msg_mock{seq}");
    let model = ask.model.clone().unwrap_or_else(|| "claude-sonnet-4-20250514".to_string());
    let stop = if ask.tool.is_some() { "tool_use" } else { "end_turn" };
    let message = |content: String, stop: String, output: u64| {
        obj(&[
            ("id", q(&id)),
            ("type", q("message")),
            ("role", q("assistant")),
            ("model", q(&model)),
            ("content", content),
            ("stop_reason", stop),
            ("stop_sequence", raw("null")),
            ("usage", anthropic_usage(output)),
        ])
    };

    if !ask.stream {
        let block = match &ask.tool {
            Some(name) => {
                obj(&[("type", q("tool_use")), ("id", q("toolu_1")), ("name", q(name)), ("input", raw(TOOL_ARGS))])
            }
            None => obj(&[("type", q("text")), ("text", q(TEXT))]),
        };
        let body = message(arr(&[block]), q(stop), tokens::OUTPUT);
        return json_reply(200, Provider::Anthropic, seq, JSON, body);
    }

    let ev = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![ev(
        "message_start",
        obj(&[("type", q("message_start")), ("message", message(raw("[]"), raw("null"), tokens::OUTPUT_AT_START))]),
    )];
    let (block, deltas): (String, Vec<String>) = match &ask.tool {
        Some(name) => (
            obj(&[("type", q("tool_use")), ("id", q("toolu_1")), ("name", q(name)), ("input", raw("{}"))]),
            std::iter::once("")
                .chain(TOOL_ARG_PIECES)
                .map(|p| obj(&[("type", q("input_json_delta")), ("partial_json", q(p))]))
                .collect(),
        ),
        None => (
            obj(&[("type", q("text")), ("text", q(""))]),
            TEXT_PIECES.iter().map(|p| obj(&[("type", q("text_delta")), ("text", q(p))])).collect(),
        ),
    };
    events.push(ev(
        "content_block_start",
        obj(&[("type", q("content_block_start")), ("index", n(0)), ("content_block", block)]),
    ));
    // Anthropic really sends this one with a space, unlike every other event.
    events.push(ev("ping", raw(r#"{"type": "ping"}"#)));
    for delta in deltas {
        events.push(ev(
            "content_block_delta",
            obj(&[("type", q("content_block_delta")), ("index", n(0)), ("delta", delta)]),
        ));
    }
    events.push(ev("content_block_stop", obj(&[("type", q("content_block_stop")), ("index", n(0))])));
    events.push(ev(
        "message_delta",
        obj(&[
            ("type", q("message_delta")),
            ("delta", obj(&[("stop_reason", q(stop)), ("stop_sequence", raw("null"))])),
            ("usage", obj(&[("output_tokens", n(tokens::OUTPUT))])),
        ]),
    ));
    events.push(ev("message_stop", obj(&[("type", q("message_stop"))])));
    stream_reply(Provider::Anthropic, seq, SSE_UTF8, events)
}

// --- Gemini

fn gemini(ask: &Ask, model: &str, stream: bool, sse: bool, seq: u64) -> Reply {
    let response_id = format!("mockResponse{seq}");
    let chunk = |part: String, finish: bool, output: u64| {
        let mut candidate = vec![("content", obj(&[("parts", arr(&[part])), ("role", q("model"))]))];
        if finish {
            candidate.push(("finishReason", q("STOP")));
        }
        candidate.push(("index", n(0)));
        obj(&[
            ("candidates", arr(&[obj(&candidate)])),
            (
                "usageMetadata",
                obj(&[
                    ("promptTokenCount", n(tokens::INPUT)),
                    ("candidatesTokenCount", n(output)),
                    ("totalTokenCount", n(tokens::INPUT + output)),
                    ("promptTokensDetails", arr(&[obj(&[("modality", q("TEXT")), ("tokenCount", n(tokens::INPUT))])])),
                ]),
            ),
            ("modelVersion", q(model)),
            ("responseId", q(&response_id)),
        ])
    };
    let call_part = |name: &str| obj(&[("functionCall", obj(&[("name", q(name)), ("args", raw(TOOL_ARGS))]))]);
    let text_part = |t: &str| obj(&[("text", q(t))]);

    if !stream {
        let part = match &ask.tool {
            Some(name) => call_part(name),
            None => text_part(TEXT),
        };
        let body = restyle(&chunk(part, true, tokens::OUTPUT), Style::Pretty);
        return json_reply(200, Provider::Gemini, seq, JSON_GOOGLE, body);
    }

    // Google reports a growing candidatesTokenCount on every chunk; the last one is final.
    let chunks: Vec<String> = match &ask.tool {
        Some(name) => vec![chunk(call_part(name), true, tokens::OUTPUT)],
        None => {
            let last = TEXT_PIECES.len() - 1;
            TEXT_PIECES
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    let so_far = if i == last { tokens::OUTPUT } else { (i as u64 + 1) * 2 };
                    chunk(text_part(piece), i == last, so_far)
                })
                .collect()
        }
    };
    if sse {
        let events = chunks.iter().map(|c| format!("data: {}\r\n\r\n", restyle(c, Style::Google))).collect();
        return stream_reply(Provider::Gemini, seq, "text/event-stream", events);
    }
    let mut events: Vec<String> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}{}", if i == 0 { "[" } else { "\r\n," }, restyle(c, Style::Pretty)))
        .collect();
    events.push(raw("]"));
    stream_reply(Provider::Gemini, seq, JSON_GOOGLE, events)
}
