//! A small blocking HTTP/1.1 client for talking to the proxy in tests. Independent of the
//! proxy's own codec, so that a bug there cannot hide in both.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
    /// The body ended by a terminating chunk / full Content-Length (false: cut by close).
    pub complete: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error body's `error.message`.
    pub fn error_message(&self) -> String {
        let v = self.json();
        assert!(v["error"]["type"].is_string(), "error body lacks error.type: {v}");
        v["error"]["message"].as_str().expect("error.message").to_string()
    }
}

pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect to proxy");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send to proxy");
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        loop {
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return n;
                }
                // Not an end of stream: the read was interrupted and must be retried.
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("read from proxy timed out")
                }
                // A reset is how a peer may end a connection; the caller sees it as EOF.
                Err(_) => return 0,
            }
        }
    }

    /// Reads until `needle` has arrived; returns everything read so far (kept in the buffer).
    pub fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            assert!(self.fill() > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
        }
        self.buf.clone()
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill() == 0 {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// True when the proxy closed the connection (nothing more to read).
    pub fn at_eof(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }

    /// Reads one response (skipping 100 Continue).
    pub fn response(&mut self) -> Response {
        loop {
            let r = self.response_inner();
            if r.status != 100 {
                return r;
            }
        }
    }

    fn response_inner(&mut self) -> Response {
        let status_line = self.line().expect("EOF before a response");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line().expect("EOF in response head");
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').expect("header colon");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut r = Response { status, headers, body: Vec::new(), complete: true };
        if status == 100 || status == 204 || status == 304 {
            return r;
        }
        if r.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let Some(size_line) = self.line() else {
                    r.complete = false;
                    return r;
                };
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).expect("chunk size");
                if size == 0 {
                    while let Some(l) = self.line() {
                        if l.is_empty() {
                            break;
                        }
                    }
                    return r;
                }
                match self.take(size + 2) {
                    Some(d) => r.body.extend_from_slice(&d[..size]),
                    None => {
                        r.body.extend_from_slice(&std::mem::take(&mut self.buf));
                        r.complete = false;
                        return r;
                    }
                }
            }
        } else if let Some(len) = r.header("content-length").map(|v| v.parse::<usize>().expect("content-length")) {
            match self.take(len) {
                Some(d) => r.body = d,
                None => {
                    r.body = std::mem::take(&mut self.buf);
                    r.complete = false;
                }
            }
        } else {
            while self.fill() > 0 {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }
}

/// Builds a request with the given fields and body (Content-Length added when there is a body).
pub fn request(method: &str, path: &str, fields: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: proxy.test\r\n");
    for (n, v) in fields {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request on a fresh connection.
pub fn send(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Conn::open(addr);
    c.send(raw);
    c.response()
}
