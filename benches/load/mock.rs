//! The mock upstream: one thread, one epoll set, two listeners (plain HTTP and TLS with a CA made
//! here by rcgen), answering every request like OpenAI's chat completions: a fixed non-streamed
//! completion with usage, or, when the body asks for `"stream":true`, a chunked event stream of
//! N events at a set pace that ends with a usage chunk and `data: [DONE]`. Keep-alive; requests
//! carry a Content-Length body (what the proxy, nginx and the bench's client send).
//!
//! The first event leaves with the response head, so time to first token measures the relay
//! path and not this thread's timer; the rest are paced from absolute deadlines (no drift).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::sys::{self, Epoll, READABLE, WRITABLE};

/// The mock stops by itself after this long even if nobody tells it to.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const LISTENER_PLAIN: u64 = u64::MAX - 1;
const LISTENER_TLS: u64 = u64::MAX - 2;

/// Response headers as OpenAI sends them (sizes matter: the proxy parses and relays them).
const OPENAI_HEADERS: &str = "date: Tue, 03 Nov 2026 10:00:00 GMT\r\n\
access-control-expose-headers: X-Request-ID\r\n\
openai-organization: user-bench\r\n\
openai-processing-ms: 412\r\n\
openai-version: 2020-10-01\r\n\
x-ratelimit-limit-requests: 10000\r\n\
x-ratelimit-limit-tokens: 30000000\r\n\
x-ratelimit-remaining-requests: 9999\r\n\
x-ratelimit-remaining-tokens: 29999979\r\n\
x-ratelimit-reset-requests: 6ms\r\n\
x-ratelimit-reset-tokens: 0s\r\n\
x-request-id: req_5f1c2a9e8b7d4c3a2f1e0d9c8b7a6f5e\r\n\
strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n\
cf-cache-status: DYNAMIC\r\n\
x-content-type-options: nosniff\r\n\
server: cloudflare\r\n\
cf-ray: 8f2a1b3c4d5e6f70-AMS\r\n\
alt-svc: h3=\":443\"; ma=86400\r\n";

const COMPLETION: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

const CHUNK_PREFIX: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":"#;

/// The wire bytes of every answer, built once.
pub struct Responses {
    json: Vec<u8>,
    /// Head plus the first event (one chunk).
    sse_head: Vec<u8>,
    /// Events 1..N, each one chunk.
    sse_events: Vec<Vec<u8>>,
    /// The usage chunk, `data: [DONE]` and the last chunk.
    sse_end: Vec<u8>,
    pub sse_body_bytes: usize,
    pub json_body_bytes: usize,
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

impl Responses {
    pub fn new(events: usize) -> Responses {
        let events = events.max(1);
        let json = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{OPENAI_HEADERS}\r\n{COMPLETION}",
            COMPLETION.len()
        )
        .into_bytes();
        let event = |i: usize| {
            let choices = if i == 0 {
                r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#.to_string()
            } else if i + 1 == events {
                r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#.to_string()
            } else {
                format!(r#"[{{"index":0,"delta":{{"content":" token{i}"}},"logprobs":null,"finish_reason":null}}]"#)
            };
            format!("data: {CHUNK_PREFIX}{choices},\"usage\":null}}\n\n")
        };
        let mut sse_head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n{OPENAI_HEADERS}\r\n"
        )
        .into_bytes();
        let first = event(0);
        let mut body = first.len();
        sse_head.extend(chunk(&first));
        let sse_events: Vec<Vec<u8>> = (1..events)
            .map(|i| {
                let e = event(i);
                body += e.len();
                chunk(&e)
            })
            .collect();
        let usage = format!(
            "data: {CHUNK_PREFIX}[],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":{events},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\n",
            19 + events
        );
        let done = "data: [DONE]\n\n";
        body += usage.len() + done.len();
        let mut sse_end = chunk(&usage);
        sse_end.extend(chunk(done));
        sse_end.extend_from_slice(b"0\r\n\r\n");
        Responses { json, sse_head, sse_events, sse_end, sse_body_bytes: body, json_body_bytes: COMPLETION.len() }
    }
}

pub struct TlsMaterial {
    pub ca_pem: String,
    pub config: Arc<ServerConfig>,
}

/// A CA and a leaf for `localhost` and 127.0.0.1 signed by it.
pub fn tls_material() -> TlsMaterial {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, "kurral-proxy load bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    leaf.subject_alt_names.push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).expect("leaf certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("TLS certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsMaterial { ca_pem: ca_cert.pem(), config: Arc::new(config) }
}

pub struct Mock {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    /// The mock thread's id, for its CPU time.
    pub tid: Arc<AtomicI32>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Mock {
    pub fn start(responses: Responses, gap: Duration, tls: Arc<ServerConfig>) -> Mock {
        let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("mock listen");
        let tls_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("mock TLS listen");
        plain.set_nonblocking(true).unwrap();
        tls_listener.set_nonblocking(true).unwrap();
        let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls_listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let (stop2, tid2) = (stop.clone(), tid.clone());
        let handle = std::thread::Builder::new()
            .name("mock-upstream".into())
            .spawn(move || {
                tid2.store(sys::gettid(), Ordering::SeqCst);
                let mut server = Server {
                    responses,
                    gap,
                    tls,
                    conns: Vec::new(),
                    free: Vec::new(),
                    timers: BinaryHeap::new(),
                    next_gen: 0,
                    epoll: Epoll::new(1024).expect("mock epoll"),
                };
                server.run(plain, tls_listener, &stop2);
            })
            .expect("mock thread");
        Mock { plain: plain_addr, tls: tls_addr, tid, stop, handle: Some(handle) }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Conn {
    sock: TcpStream,
    tls: Option<ServerConnection>,
    inbuf: Vec<u8>,
    /// Plaintext bytes the socket did not take yet (plain connections; rustls buffers its own).
    out: Vec<u8>,
    /// Next event of a stream in progress and the stream's start.
    sse: Option<(usize, Instant)>,
    gen: u64,
    writable_armed: bool,
}

struct Server {
    responses: Responses,
    gap: Duration,
    tls: Arc<ServerConfig>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_gen: u64,
    epoll: Epoll,
}

enum Step {
    Ok,
    Close,
}

impl Server {
    fn run(&mut self, plain: TcpListener, tls: TcpListener, stop: &AtomicBool) {
        self.epoll.add(plain.as_raw_fd(), LISTENER_PLAIN, READABLE).unwrap();
        self.epoll.add(tls.as_raw_fd(), LISTENER_TLS, READABLE).unwrap();
        let started = Instant::now();
        let mut ready = Vec::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
            let now = Instant::now();
            let mut timeout = Duration::from_millis(50);
            if let Some(Reverse((at, _, _))) = self.timers.peek() {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if self.epoll.wait(Some(timeout), &mut ready).is_err() {
                break;
            }
            for &(token, events) in &ready {
                match token {
                    LISTENER_PLAIN => self.accept(&plain, false),
                    LISTENER_TLS => self.accept(&tls, true),
                    slot => self.on_event(slot as usize, events, &mut scratch),
                }
            }
            self.fire_timers();
        }
    }

    fn accept(&mut self, listener: &TcpListener, tls: bool) {
        for _ in 0..256 {
            let Ok((sock, _)) = listener.accept() else { return };
            let _ = sock.set_nonblocking(true);
            let _ = sock.set_nodelay(true);
            let tls = if tls {
                match ServerConnection::new(self.tls.clone()) {
                    Ok(c) => Some(c),
                    Err(_) => continue,
                }
            } else {
                None
            };
            self.next_gen += 1;
            let conn = Conn {
                sock,
                tls,
                inbuf: Vec::with_capacity(4096),
                out: Vec::new(),
                sse: None,
                gen: self.next_gen,
                writable_armed: false,
            };
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            if self.epoll.add(conn.sock.as_raw_fd(), slot as u64, READABLE).is_err() {
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(conn);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.conns[slot].take() {
            self.epoll.delete(conn.sock.as_raw_fd());
            self.free.push(slot);
        }
    }

    fn on_event(&mut self, slot: usize, events: u32, scratch: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else { return };
        let mut step = Step::Ok;
        if events & WRITABLE != 0 {
            step = flush(conn, &self.epoll, slot);
        }
        if matches!(step, Step::Ok) && events & !WRITABLE != 0 {
            step = read_in(conn, scratch);
            // A TLS handshake (or alert) may have something to say before any request arrives.
            if matches!(step, Step::Ok) && conn.tls.as_ref().is_some_and(|t| t.wants_write()) {
                step = flush(conn, &self.epoll, slot);
            }
            if matches!(step, Step::Ok) {
                step = self.serve_requests(slot);
            }
        }
        if matches!(step, Step::Close) {
            self.close(slot);
        }
    }

    /// Answers every complete request in the input while no stream is in progress.
    fn serve_requests(&mut self, slot: usize) -> Step {
        loop {
            let conn = self.conns[slot].as_mut().unwrap();
            if conn.sse.is_some() {
                return Step::Ok;
            }
            let Some(head_end) = memchr::memmem::find(&conn.inbuf, b"\r\n\r\n") else { return Step::Ok };
            let head_len = head_end + 4;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let body_len = match req.parse(&conn.inbuf[..head_len]) {
                Ok(httparse::Status::Complete(_)) => {
                    let cl = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
                    match cl.map(|h| std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok())) {
                        None => 0,
                        Some(Some(n)) => n,
                        Some(None) => return Step::Close,
                    }
                }
                _ => return Step::Close,
            };
            if conn.inbuf.len() < head_len + body_len {
                return Step::Ok;
            }
            let body = &conn.inbuf[head_len..head_len + body_len];
            let stream = memchr::memmem::find(body, b"\"stream\":true").is_some()
                || memchr::memmem::find(body, b"\"stream\": true").is_some();
            conn.inbuf.drain(..head_len + body_len);
            if stream {
                let now = Instant::now();
                conn.sse = Some((0, now));
                let gen = conn.gen;
                self.timers.push(Reverse((now + self.gap, slot, gen)));
                if let Step::Close = send(conn, &self.responses.sse_head, &self.epoll, slot) {
                    return Step::Close;
                }
            } else if let Step::Close = send(conn, &self.responses.json, &self.epoll, slot) {
                return Step::Close;
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, slot, gen))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else { continue };
            if conn.gen != gen {
                continue;
            }
            let Some((sent, start)) = conn.sse else { continue };
            let events = &self.responses.sse_events;
            let step = if sent < events.len() {
                conn.sse = Some((sent + 1, start));
                self.timers.push(Reverse((start + self.gap * (sent as u32 + 2), slot, gen)));
                send(conn, &events[sent], &self.epoll, slot)
            } else {
                conn.sse = None;
                match send(conn, &self.responses.sse_end, &self.epoll, slot) {
                    Step::Ok => self.serve_requests(slot),
                    Step::Close => Step::Close,
                }
            };
            if let Step::Close = step {
                self.close(slot);
            }
        }
    }
}

fn read_in(conn: &mut Conn, scratch: &mut [u8]) -> Step {
    match conn.tls.as_mut() {
        None => loop {
            match conn.sock.read(scratch) {
                Ok(0) => return Step::Close,
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&scratch[..n]);
                    // Drained (level-triggered epoll reports anything later): no EAGAIN read.
                    if n < scratch.len() {
                        return Step::Ok;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Ok,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        },
        Some(tls) => {
            loop {
                match tls.read_tls(&mut conn.sock) {
                    Ok(0) => return Step::Close,
                    Ok(_) => {
                        if tls.process_new_packets().is_err() {
                            let _ = tls.write_tls(&mut conn.sock);
                            return Step::Close;
                        }
                        loop {
                            match tls.reader().read(scratch) {
                                Ok(0) => return Step::Close,
                                Ok(n) => conn.inbuf.extend_from_slice(&scratch[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            Step::Ok
        }
    }
}

/// Queues bytes for the client and writes what the socket takes now.
fn send(conn: &mut Conn, bytes: &[u8], epoll: &Epoll, slot: usize) -> Step {
    match conn.tls.as_mut() {
        Some(tls) => {
            if tls.writer().write_all(bytes).is_err() {
                return Step::Close;
            }
        }
        None => conn.out.extend_from_slice(bytes),
    }
    flush(conn, epoll, slot)
}

fn flush(conn: &mut Conn, epoll: &Epoll, slot: usize) -> Step {
    let mut blocked = false;
    match conn.tls.as_mut() {
        Some(tls) => {
            while tls.wants_write() {
                match tls.write_tls(&mut conn.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
        }
        None => {
            let mut written = 0;
            while written < conn.out.len() {
                match conn.sock.write(&conn.out[written..]) {
                    Ok(0) => return Step::Close,
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            conn.out.drain(..written);
        }
    }
    if blocked != conn.writable_armed {
        let interest = if blocked { READABLE | WRITABLE } else { READABLE };
        if epoll.modify(conn.sock.as_raw_fd(), slot as u64, interest).is_err() {
            return Step::Close;
        }
        conn.writable_armed = blocked;
    }
    Step::Ok
}
