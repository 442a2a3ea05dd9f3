//! The load client: one thread, one epoll set, many keep-alive HTTP/1.1 connections on raw
//! sockets. Closed loop: every connection sends its next request as soon as the previous answer
//! ends (saturation). Open loop: requests are due at fixed intended times (`start + k / rate`)
//! whatever the server does; a request that waits for a free connection is late, and its latency
//! is counted from its intended time (coordinated omission corrected, as wrk2 does), including
//! requests still unanswered or never sent when the run ends.
//!
//! Responses are parsed as they stream (head with httparse, then Content-Length or chunked
//! framing), without keeping the body; the first body byte's arrival is the time to first token.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::sys::{Epoll, READABLE, WRITABLE};

/// Latencies are recorded in nanoseconds, 3 significant digits, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed,
    Open { rate: f64 },
}

pub struct Spec<'a> {
    pub addr: SocketAddr,
    pub request: &'a [u8],
    pub conns: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub measure: Duration,
    /// How long answers in flight at the end of the window are waited for.
    pub drain: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Start,
    End,
}

pub struct Outcome {
    /// Answers completed inside the measured window.
    pub completed: u64,
    pub window_secs: f64,
    /// Latency of requests whose intended (open) or actual (closed) send time fell in the window.
    pub latency: Histogram<u64>,
    /// First body byte, from the same start.
    pub first_byte: Histogram<u64>,
    /// Non-200 answers, broken or refused connections, in the window.
    pub errors: u64,
    /// Open loop: requests due in the window that had no answer (or were never sent) at the end.
    pub unfinished: u64,
    /// Open loop: the most requests that were due but waiting for a free connection.
    pub max_backlog: u64,
    /// CPU time of the client thread during the window.
    pub client_cpu_ns: u64,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.window_secs.max(1e-9)
    }

    /// Adds another window of the same target and load (runs are measured in interleaved slices).
    pub fn merge(&mut self, o: Outcome) {
        self.completed += o.completed;
        self.window_secs += o.window_secs;
        let _ = self.latency.add(&o.latency);
        let _ = self.first_byte.add(&o.first_byte);
        self.errors += o.errors;
        self.unfinished += o.unfinished;
        self.max_backlog = self.max_backlog.max(o.max_backlog);
        self.client_cpu_ns += o.client_cpu_ns;
    }
}

pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------------
// Response framing

#[derive(Clone, Copy, Debug)]
enum Chunk {
    Size {
        value: u64,
        ext: bool,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one; the count is the current line's.
    Trailer(usize),
}

#[derive(Clone, Copy, Debug)]
enum Body {
    Length(u64),
    Chunked(Chunk),
}

/// One response as it streams in.
#[derive(Default)]
pub struct Response {
    head: Vec<u8>,
    status: u16,
    body: Option<Body>,
    done: bool,
}

#[derive(Debug)]
pub struct BadResponse;

pub struct Fed {
    pub body_started: bool,
    pub done: bool,
}

impl Response {
    fn reset(&mut self) {
        self.head.clear();
        self.status = 0;
        self.body = None;
        self.done = false;
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// Takes the next bytes of the connection; bytes past the end of the response are an error
    /// (nothing is pipelined).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Fed, BadResponse> {
        let mut fed = Fed { body_started: false, done: false };
        if self.body.is_none() {
            let from = self.head.len().saturating_sub(3);
            self.head.extend_from_slice(data);
            let Some(end) = memchr::memmem::find(&self.head[from..], b"\r\n\r\n") else {
                if self.head.len() > 64 * 1024 {
                    return Err(BadResponse);
                }
                return Ok(fed);
            };
            let head_len = from + end + 4;
            let rest = self.head.len() - head_len;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.head[..head_len]) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return Err(BadResponse),
            }
            self.status = resp.code.unwrap_or(0);
            let mut body = Body::Length(0);
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).ok_or(BadResponse)?;
                    body = Body::Length(n);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    body = Body::Chunked(Chunk::Size { value: 0, ext: false });
                }
            }
            self.body = Some(body);
            data = &data[data.len() - rest..];
            if let Body::Length(0) = body {
                self.done = true;
            }
        }
        if !data.is_empty() {
            fed.body_started = true;
        }
        if self.done {
            if !data.is_empty() {
                return Err(BadResponse);
            }
            fed.done = true;
            return Ok(fed);
        }
        let body = self.body.as_mut().unwrap();
        match body {
            Body::Length(remaining) => {
                if data.len() as u64 > *remaining {
                    return Err(BadResponse);
                }
                *remaining -= data.len() as u64;
                self.done = *remaining == 0;
            }
            Body::Chunked(state) => {
                let mut i = 0;
                while i < data.len() {
                    if self.done {
                        return Err(BadResponse);
                    }
                    let b = data[i];
                    *state = match *state {
                        Chunk::Size { value, ext } => match b {
                            b'\r' => Chunk::SizeLf { value },
                            b';' => Chunk::Size { value, ext: true },
                            _ if ext => Chunk::Size { value, ext },
                            _ => {
                                let d = (b as char).to_digit(16).ok_or(BadResponse)? as u64;
                                Chunk::Size { value: value.checked_mul(16).ok_or(BadResponse)? + d, ext }
                            }
                        },
                        Chunk::SizeLf { value } if b == b'\n' => {
                            if value == 0 {
                                Chunk::Trailer(0)
                            } else {
                                Chunk::Data(value)
                            }
                        }
                        Chunk::Data(n) => {
                            let take = (n as usize).min(data.len() - i);
                            i += take;
                            *state = if take as u64 == n { Chunk::DataCr } else { Chunk::Data(n - take as u64) };
                            continue;
                        }
                        Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                        Chunk::DataLf if b == b'\n' => Chunk::Size { value: 0, ext: false },
                        Chunk::Trailer(len) => match b {
                            b'\n' if len == 0 => {
                                self.done = true;
                                Chunk::Trailer(0)
                            }
                            b'\n' => Chunk::Trailer(0),
                            b'\r' => Chunk::Trailer(len),
                            _ => Chunk::Trailer(len + 1),
                        },
                        _ => return Err(BadResponse),
                    };
                    i += 1;
                }
            }
        }
        fed.done = self.done;
        Ok(fed)
    }
}

// ---------------------------------------------------------------------------------------------
// The loop

#[derive(PartialEq, Eq)]
enum State {
    Idle,
    /// Request bytes written so far.
    Writing(usize),
    Reading,
}

struct Conn {
    sock: TcpStream,
    state: State,
    /// Latency origin: intended send time (open loop) or send time (closed loop).
    origin: Instant,
    first_byte: Option<Instant>,
    response: Response,
}

pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    sock.set_nodelay(true)?;
    Ok(sock)
}

pub fn run(spec: &Spec, mut edge: impl FnMut(Edge)) -> io::Result<Outcome> {
    let mut epoll = Epoll::new(spec.conns.max(16))?;
    let mut conns = Vec::with_capacity(spec.conns);
    for i in 0..spec.conns {
        let sock = connect(spec.addr)?;
        sock.set_nonblocking(true)?;
        epoll.add(sock.as_raw_fd(), i as u64, READABLE)?;
        conns.push(Conn {
            sock,
            state: State::Idle,
            origin: Instant::now(),
            first_byte: None,
            response: Response::default(),
        });
    }
    let mut out = Outcome {
        completed: 0,
        window_secs: spec.measure.as_secs_f64(),
        latency: histogram(),
        first_byte: histogram(),
        errors: 0,
        unfinished: 0,
        max_backlog: 0,
        client_cpu_ns: 0,
    };
    let begin = Instant::now();
    let m_start = begin + spec.warmup;
    let m_end = m_start + spec.measure;
    let hard_end = m_end + spec.drain;
    let interval = match spec.mode {
        Mode::Open { rate } => Duration::from_secs_f64(1.0 / rate.max(1e-3)),
        Mode::Closed => Duration::ZERO,
    };
    let due = |k: u64| begin + interval.mul_f64(k as f64);
    let mut next_k: u64 = 0;
    let mut idle: Vec<usize> = (0..conns.len()).rev().collect();
    let mut in_flight = 0usize;
    let (mut started, mut ended) = (false, false);
    let mut cpu_start = 0;
    let mut ready = Vec::with_capacity(spec.conns.max(16));
    let mut scratch = vec![0u8; 64 * 1024];
    let in_window = |t: Instant| t >= m_start && t < m_end;

    loop {
        let now = Instant::now();
        if !started && now >= m_start {
            started = true;
            edge(Edge::Start);
            cpu_start = thread_cpu_ns();
        }
        if !ended && now >= m_end {
            ended = true;
            out.client_cpu_ns = thread_cpu_ns().saturating_sub(cpu_start);
            edge(Edge::End);
        }
        match spec.mode {
            Mode::Closed if !ended => {
                while let Some(c) = idle.pop() {
                    if !start(&mut conns[c], now, spec.request, &epoll, c) {
                        out.errors += u64::from(started);
                        reconnect(&mut conns[c], spec.addr, &epoll, c)?;
                        idle.push(c);
                        break;
                    }
                    in_flight += 1;
                }
            }
            Mode::Closed => {}
            // Everything due before the window's end is sent, even if this wake-up came late.
            Mode::Open { .. } => {
                while due(next_k) <= now && due(next_k) < m_end {
                    let Some(c) = idle.pop() else { break };
                    if !start(&mut conns[c], due(next_k), spec.request, &epoll, c) {
                        reconnect(&mut conns[c], spec.addr, &epoll, c)?;
                        idle.push(c);
                        break;
                    }
                    next_k += 1;
                    in_flight += 1;
                }
                if started && !ended {
                    let due_now = (now - begin).as_secs_f64() / interval.as_secs_f64();
                    out.max_backlog = out.max_backlog.max((due_now as u64 + 1).saturating_sub(next_k));
                }
            }
        }
        let all_sent = match spec.mode {
            Mode::Closed => ended,
            Mode::Open { .. } => due(next_k) >= m_end,
        };
        if (ended && all_sent && in_flight == 0) || now >= hard_end {
            break;
        }
        let mut wake = if !started {
            m_start
        } else if !ended {
            m_end
        } else {
            hard_end
        };
        if let (Mode::Open { .. }, false) = (spec.mode, idle.is_empty()) {
            if due(next_k) < m_end {
                wake = wake.min(due(next_k));
            }
        }
        let timeout = wake.saturating_duration_since(now).min(Duration::from_millis(100));
        epoll.wait(Some(timeout), &mut ready)?;
        for &(token, events) in &ready {
            let c = token as usize;
            let conn = &mut conns[c];
            if events & WRITABLE != 0 {
                if let State::Writing(_) = conn.state {
                    if !write_request(conn, spec.request, &epoll, c) {
                        in_flight -= 1;
                        out.errors += u64::from(in_window(conn.origin));
                        reconnect(conn, spec.addr, &epoll, c)?;
                        idle.push(c);
                        continue;
                    }
                }
            }
            if events & !WRITABLE == 0 {
                continue;
            }
            match read_response(conn, &mut scratch) {
                Ok(None) => {}
                Ok(Some(done_at)) => {
                    in_flight -= 1;
                    if in_window(conn.origin) {
                        if conn.response.status() == 200 {
                            out.latency.saturating_record(nanos(done_at - conn.origin));
                            if let Some(fb) = conn.first_byte {
                                out.first_byte.saturating_record(nanos(fb.saturating_duration_since(conn.origin)));
                            }
                        } else {
                            out.errors += 1;
                        }
                    }
                    if in_window(done_at) {
                        out.completed += 1;
                    }
                    conn.state = State::Idle;
                    idle.push(c);
                }
                Err(_) => {
                    if conn.state != State::Idle {
                        in_flight -= 1;
                        out.errors += u64::from(in_window(conn.origin));
                    }
                    reconnect(conn, spec.addr, &epoll, c)?;
                    idle.push(c);
                }
            }
        }
    }
    if !ended {
        out.client_cpu_ns = thread_cpu_ns().saturating_sub(cpu_start);
        edge(Edge::End);
    }
    // Whatever is still unanswered counts at the latency it has reached so far (a request of
    // the warm-up still unanswered counts too: it is what stalled the window).
    let now = Instant::now();
    for conn in &conns {
        if conn.state != State::Idle && conn.origin < m_end {
            out.unfinished += 1;
            out.latency.saturating_record(nanos(now - conn.origin));
        }
    }
    if let Mode::Open { .. } = spec.mode {
        while due(next_k) < m_end {
            if due(next_k) >= m_start {
                out.unfinished += 1;
                out.latency.saturating_record(nanos(now - due(next_k)));
            }
            next_k += 1;
        }
    }
    Ok(out)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

fn start(conn: &mut Conn, origin: Instant, request: &[u8], epoll: &Epoll, token: usize) -> bool {
    conn.origin = origin;
    conn.first_byte = None;
    conn.response.reset();
    conn.state = State::Writing(0);
    write_request(conn, request, epoll, token)
}

/// Writes what is left of the request; false when the connection is broken.
fn write_request(conn: &mut Conn, request: &[u8], epoll: &Epoll, token: usize) -> bool {
    let State::Writing(mut off) = conn.state else { return true };
    let was_blocked = off > 0;
    while off < request.len() {
        match conn.sock.write(&request[off..]) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.state = State::Writing(off);
                let _ = epoll.modify(conn.sock.as_raw_fd(), token as u64, READABLE | WRITABLE);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.state = State::Reading;
    if was_blocked {
        let _ = epoll.modify(conn.sock.as_raw_fd(), token as u64, READABLE);
    }
    true
}

/// Reads what is there; `Some(time)` when the response ended.
fn read_response(conn: &mut Conn, scratch: &mut [u8]) -> Result<Option<Instant>, BadResponse> {
    loop {
        match conn.sock.read(scratch) {
            Ok(0) => return Err(BadResponse),
            Ok(n) => {
                if conn.state == State::Idle {
                    return Err(BadResponse);
                }
                let fed = conn.response.feed(&scratch[..n])?;
                if fed.body_started && conn.first_byte.is_none() {
                    conn.first_byte = Some(Instant::now());
                }
                if fed.done {
                    return Ok(Some(Instant::now()));
                }
                // A short read drained the socket; epoll (level-triggered) says when more comes.
                // This saves the read that would only say EAGAIN.
                if n < scratch.len() {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(BadResponse),
        }
    }
}

fn reconnect(conn: &mut Conn, addr: SocketAddr, epoll: &Epoll, token: usize) -> io::Result<()> {
    epoll.delete(conn.sock.as_raw_fd());
    let sock = connect(addr)?;
    sock.set_nonblocking(true)?;
    epoll.add(sock.as_raw_fd(), token as u64, READABLE)?;
    conn.sock = sock;
    conn.state = State::Idle;
    conn.response.reset();
    Ok(())
}

/// Opens `n` connections, sends one request on each and reads its answer, and keeps them open.
/// Stops early (returning what it has) at `deadline` or on the first failure.
pub fn open_idle(addr: SocketAddr, n: usize, request: &[u8], deadline: Instant) -> (Vec<TcpStream>, Option<String>) {
    let mut socks = Vec::with_capacity(n);
    let mut scratch = [0u8; 4096];
    for i in 0..n {
        if Instant::now() >= deadline {
            return (socks, Some(format!("deadline reached after {i} connections")));
        }
        let result = (|| -> io::Result<TcpStream> {
            let mut sock = connect(addr)?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))?;
            sock.write_all(request)?;
            let mut resp = Response::default();
            loop {
                let k = sock.read(&mut scratch)?;
                if k == 0 {
                    return Err(io::Error::other("closed"));
                }
                let fed = resp.feed(&scratch[..k]).map_err(|_| io::Error::other("bad response"))?;
                if fed.done {
                    break;
                }
            }
            if resp.status() != 200 {
                return Err(io::Error::other(format!("status {}", resp.status())));
            }
            Ok(sock)
        })();
        match result {
            Ok(s) => socks.push(s),
            Err(e) => return (socks, Some(format!("connection {i}: {e}"))),
        }
    }
    (socks, None)
}

/// The framing parser against a chunked answer split at every point; run once at start.
pub fn self_check() {
    let wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n1\r\n!\r\n0\r\n\r\n";
    for split in 0..wire.len() {
        let mut r = Response::default();
        let a = r.feed(&wire[..split]).expect("chunked parse");
        let b = r.feed(&wire[split..]).expect("chunked parse");
        assert!(!a.done && b.done && r.status() == 200, "chunked framing at split {split}");
    }
}
