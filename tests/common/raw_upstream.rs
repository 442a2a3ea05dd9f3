//! A scripted upstream on plain std::net for fault tests: on each accepted connection it reads one
//! request (head, then a Content-Length or chunked body), asks the test's script what to do, and
//! does exactly that: send bytes (a valid answer, garbage, half a head, a flood), then close,
//! reset or stall. One request per connection; it never parses more than it must, so it can
//! misbehave in ways the mock upstream is too well-mannered for.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the connection does once the script's bytes are written.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Close cleanly (FIN).
    Close,
    /// Close with SO_LINGER 0: the peer sees a TCP reset.
    Reset,
    /// Keep the connection open, saying nothing, for this long (cut short when the upstream is
    /// dropped), then close.
    Hold(Duration),
}

#[derive(Clone, Debug)]
pub struct Script {
    /// Wait this long after the request arrived before writing anything.
    pub delay: Duration,
    /// Bytes written first.
    pub bytes: Vec<u8>,
    /// Then this many filler bytes (`x`), in 64 KiB writes: a flood.
    pub filler: usize,
    /// Then each of these: a pause, then bytes.
    pub more: Vec<(Duration, Vec<u8>)>,
    pub then: Then,
}

impl Script {
    pub fn reply(bytes: impl AsRef<[u8]>, then: Then) -> Script {
        Script { delay: Duration::ZERO, bytes: bytes.as_ref().to_vec(), filler: 0, more: Vec::new(), then }
    }

    /// After the first bytes, pause for `pause`, then send `bytes`.
    pub fn then_after(mut self, pause: Duration, bytes: impl AsRef<[u8]>) -> Script {
        self.more.push((pause, bytes.as_ref().to_vec()));
        self
    }

    /// Says nothing at all.
    pub fn silent(then: Then) -> Script {
        Script::reply(b"", then)
    }
}

type ScriptFn = dyn Fn(&[u8]) -> Script + Send + Sync;

struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    active: AtomicUsize,
    requests: Mutex<Vec<Vec<u8>>>,
    script: Box<ScriptFn>,
}

pub struct RawUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl RawUpstream {
    /// `script` gets the raw request (head and body) and decides the answer.
    pub fn start(script: impl Fn(&[u8]) -> Script + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("raw upstream: bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            script: Box::new(script),
        });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("raw-upstream-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    sh.accepted.fetch_add(1, Ordering::SeqCst);
                    sh.active.fetch_add(1, Ordering::SeqCst);
                    let sh2 = sh.clone();
                    let spawned = thread::Builder::new().name("raw-upstream-conn".into()).spawn(move || {
                        serve(stream, &sh2);
                        sh2.active.fetch_sub(1, Ordering::SeqCst);
                    });
                    if spawned.is_err() {
                        sh.active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .expect("raw upstream: spawn");
        RawUpstream { addr, shared, acceptor: Some(acceptor) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections still open on this side.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Waits until every connection this side accepted is finished; false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.active() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Every request received whole (head and body, raw).
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
            if let Some(h) = self.acceptor.take() {
                let _ = h.join();
            }
        }
    }
}

/// The value of a header in a raw request head, name matched case-insensitively.
pub fn header_value(raw: &[u8], name: &str) -> Option<String> {
    let end = find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let chunked = header_value(&buf, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length: usize = header_value(&buf, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    loop {
        let body = &buf[head_end..];
        let done = if chunked { body.ends_with(b"0\r\n\r\n") } else { body.len() >= length };
        if done {
            return Some(buf);
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn serve(mut s: TcpStream, sh: &Shared) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let Some(request) = read_request(&mut s) else { return };
    sh.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request.clone());
    let script = (sh.script)(&request);
    sleep_unless_stopped(script.delay, &sh.stop);
    if s.write_all(&script.bytes).is_err() {
        return;
    }
    let piece = vec![b'x'; 64 * 1024];
    let mut left = script.filler;
    while left > 0 && !sh.stop.load(Ordering::SeqCst) {
        let n = left.min(piece.len());
        match s.write(&piece[..n]) {
            Ok(0) => return,
            Ok(w) => left -= w,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    for (pause, bytes) in &script.more {
        sleep_unless_stopped(*pause, &sh.stop);
        if s.write_all(bytes).is_err() {
            return;
        }
    }
    match script.then {
        Then::Close => {
            let _ = s.shutdown(Shutdown::Write);
            // Drain briefly so that unread input does not turn the close into a reset.
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut sink = [0u8; 4096];
            while let Ok(n) = s.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
        Then::Reset => {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        Then::Hold(d) => sleep_unless_stopped(d, &sh.stop),
    }
}
