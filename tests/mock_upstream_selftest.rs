//! Checks the mock upstream itself with a bare-socket client, so proxy tests can trust it.

mod common;

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mock_upstream::{tokens, MockUpstream, DEFAULT_TOOL, TEXT, TOOL_ARGS};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// A deliberately small HTTP/1.1 client: it must not share code with the mock it checks.

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Client<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    fn plain(mock: &MockUpstream) -> Self {
        let s = TcpStream::connect(mock.addr()).expect("connect to mock");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { s, buf: Vec::new() }
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(mock: &MockUpstream, server_name: &str) -> Client<TlsStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let pem = mock.ca_pem().expect("TLS mock exposes its CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.expect("CA PEM parses")).expect("CA accepted as root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(mock.addr()).expect("connect to mock");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    Client { s: rustls::StreamOwned::new(conn, sock), buf: Vec::new() }
}

impl<S: Read + Write> Client<S> {
    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
        self.s.flush().expect("flush");
    }

    /// Bytes read; 0 at EOF. TLS peers that vanish without close_notify also count as EOF.
    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 8192];
        loop {
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("read timed out")
                }
                Err(_) => return 0,
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill() > 0, "EOF while reading {n} bytes");
        }
        self.buf.drain(..n).collect()
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8(line[..i].to_vec()).unwrap();
            }
            assert!(self.fill() > 0, "EOF while reading a line");
        }
    }

    fn head(&mut self) -> Head {
        let status_line = self.line();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                return Head { status, headers };
            }
            let (n, v) = l.split_once(':').expect("header colon");
            headers.push((n.to_string(), v.trim().to_string()));
        }
    }

    /// One chunk's payload; `None` at the terminating chunk.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = usize::from_str_radix(&self.line(), 16).expect("chunk size");
        if size == 0 {
            assert_eq!(self.line(), "", "no trailers expected");
            return None;
        }
        let data = self.take(size);
        assert_eq!(self.take(2), b"\r\n");
        Some(data)
    }

    fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill() > 0 {}
        std::mem::take(&mut self.buf)
    }

    fn is_eof(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }

    fn body(&mut self, head: &Head) -> Vec<u8> {
        if head.get("transfer-encoding") == Some("chunked") {
            let mut body = Vec::new();
            while let Some(c) = self.chunk() {
                body.extend(c);
            }
            body
        } else if let Some(len) = head.get("content-length") {
            self.take(len.parse().unwrap())
        } else {
            self.read_to_eof()
        }
    }

    fn exchange(&mut self, request: &[u8]) -> (Head, Vec<u8>) {
        self.send(request);
        let head = self.head();
        let body = self.body(&head);
        (head, body)
    }
}

fn post(path: &str, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: upstream.test\r\nContent-Type: application/json\r\n");
    for (n, v) in extra_headers {
        let _ = write!(r, "{n}: {v}\r\n");
    }
    let _ = write!(r, "Content-Length: {}\r\n\r\n{body}", body.len());
    r.into_bytes()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// (event name, data) of each SSE event; every event must be terminated by a blank line.
fn sse(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = String::from_utf8(body.to_vec()).unwrap().replace("\r\n", "\n");
    assert!(text.ends_with("\n\n"), "stream not terminated by a blank line: {text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event");
                    data = Some(v.to_string());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data.expect("event has data"))
        })
        .collect()
}

fn datas(events: &[(Option<String>, String)]) -> Vec<Value> {
    events.iter().filter(|(_, d)| d != "[DONE]").map(|(_, d)| json(d.as_bytes())).collect()
}

const CHAT_TOOLS: &str =
    r#"{"model":"gpt-4o","messages":[],"tools":[{"type":"function","function":{"name":"lookup","parameters":{}}}]}"#;

// ---------------------------------------------------------------------------------------------

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let mock = MockUpstream::start_plain();
    assert!(mock.url().starts_with("http://127.0.0.1:"));
    assert!(mock.ca_pem().is_none());
    let mut c = Client::plain(&mock);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    for i in 0..2 {
        let (head, resp) = c.exchange(&post("/v1/chat/completions", &[("X-Custom-Header", "A b ")], body));
        assert_eq!(head.status, 200);
        assert!(head.get("date").is_some_and(|d| d.ends_with(" GMT")));
        assert!(head.get("x-request-id").is_some());
        assert!(head.get("connection").is_none(), "request {i} must keep the connection");
        let v = json(&resp);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["choices"][0]["message"]["content"], TEXT);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], tokens::INPUT);
        assert_eq!(v["usage"]["completion_tokens"], tokens::OUTPUT);
        assert_eq!(v["usage"]["total_tokens"], tokens::TOTAL);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], tokens::CACHED);
        assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], tokens::REASONING);
    }
    assert_eq!(mock.connections(), 1);
    let got = mock.received();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(r.conn_id, 0);
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/v1/chat/completions");
        assert_eq!(r.body, body.as_bytes());
        assert!(!r.chunked);
        // Original case kept, value trimmed, lookups case-insensitive.
        assert!(r.headers.iter().any(|(n, _)| n == "X-Custom-Header"));
        assert_eq!(r.header("x-custom-header"), Some(&b"A b"[..]));
        assert_eq!(r.header_all("HOST"), vec![&b"upstream.test"[..]]);
    }
}

#[test]
fn chunked_request_body_is_decoded_and_framing_consumed_exactly() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    let req = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
               5;ext=1\r\n{\"mod\r\n1a\r\nel\":\"claude\",\"messages\":[]\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (head, resp) = c.exchange(req.as_bytes());
    assert_eq!(head.status, 200);
    assert_eq!(json(&resp)["model"], "claude");
    // Expect: 100-continue gets the interim answer before the body is sent.
    c.send(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(c.head().status, 100);
    c.send(b"{}");
    let head = c.head();
    assert_eq!(head.status, 200);
    c.body(&head);

    let got = mock.received();
    assert_eq!(got.len(), 2);
    assert!(got[0].chunked);
    assert_eq!(got[0].body, br#"{"model":"claude","messages":[]}"#);
    assert_eq!(got[0].body_json()["model"], "claude");
    assert!(!got[1].chunked);
    assert_eq!(got[1].body, b"{}");
    assert_eq!(mock.connections(), 1);
}

#[test]
fn openai_chat_answers() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);

    let (_, body) = c.exchange(&post("/v1/chat/completions", &[], CHAT_TOOLS));
    let v = json(&body);
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1");
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], TOOL_ARGS);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    // Stream without include_usage: no usage chunk, every chunk says "usage":null.
    let (head, body) = c.exchange(&post("/v1/chat/completions", &[], r#"{"model":"m","stream": true}"#));
    assert_eq!(head.get("content-type"), Some("text/event-stream; charset=utf-8"));
    assert_eq!(head.get("transfer-encoding"), Some("chunked"));
    let events = sse(&body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks = datas(&events);
    assert!(chunks.iter().all(|c| c["usage"].is_null() && c["choices"].as_array().unwrap().len() == 1));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, TEXT);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // include_usage adds one usage chunk with empty choices, just before [DONE].
    let req = r#"{"model":"m","stream" :true,"stream_options":{"include_usage": true}}"#;
    let (_, body) = c.exchange(&post("/v1/chat/completions", &[], req));
    let events = sse(&body);
    let chunks = datas(&events);
    let usage: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
    assert_eq!(usage.len(), 1);
    assert!(std::ptr::eq(usage[0], chunks.last().unwrap()));
    assert_eq!(usage[0]["choices"], serde_json::json!([]));
    assert_eq!(usage[0]["usage"]["total_tokens"], tokens::TOTAL);
    assert_eq!(usage[0]["usage"]["prompt_tokens_details"]["cached_tokens"], tokens::CACHED);

    // Streamed tool call: arguments spread over several chunks.
    let req = CHAT_TOOLS.replace("\"messages\"", "\"stream\":true,\"messages\"");
    let (_, body) = c.exchange(&post("/v1/chat/completions", &[], &req));
    let chunks = datas(&sse(&body));
    let calls: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
    assert!(calls.len() > 3);
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["function"]["name"], "lookup");
    let args: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
    assert_eq!(args, TOOL_ARGS);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(mock.connections(), 1);
}

#[test]
fn openai_responses_answers() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);

    let (_, body) = c.exchange(&post("/v1/responses", &[], r#"{"model":"gpt-4.1","input":"hi"}"#));
    let v = json(&body);
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["content"][0]["text"], TEXT);
    assert_eq!(v["usage"]["input_tokens"], tokens::INPUT);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], tokens::CACHED);
    assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], tokens::REASONING);

    let (_, body) = c.exchange(&post("/v1/responses", &[], r#"{"input":"hi","stream":true}"#));
    let events = sse(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    let data = datas(&events);
    for (i, (name, d)) in names.iter().zip(&data).enumerate() {
        assert_eq!(d["type"], *name);
        assert_eq!(d["sequence_number"], i as u64);
    }
    let text: String = data
        .iter()
        .filter(|d| d["type"] == "response.output_text.delta")
        .map(|d| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, TEXT);
    assert_eq!(data.last().unwrap()["response"]["usage"]["total_tokens"], tokens::TOTAL);

    let req = r#"{"input":"hi","stream":true,"tools":[{"type":"function","name":"find","parameters":{}}]}"#;
    let (_, body) = c.exchange(&post("/v1/responses", &[], req));
    let data = datas(&sse(&body));
    let item = &data.last().unwrap()["response"]["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["call_id"], "call_1");
    assert_eq!(item["name"], "find");
    assert_eq!(item["arguments"], TOOL_ARGS);
}

#[test]
fn anthropic_answers() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    let tools = r#"{"model":"claude-x","tools":[{"name":"weather","input_schema":{}}],"messages":[]}"#;

    let (head, body) = c.exchange(&post("/v1/messages", &[], r#"{"model":"claude-x","messages":[]}"#));
    assert!(head.get("request-id").is_some());
    let v = json(&body);
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], TEXT);
    assert_eq!(v["usage"]["cache_read_input_tokens"], tokens::CACHED);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], tokens::CACHE_WRITE);
    assert_eq!(v["usage"]["cache_creation"]["ephemeral_1h_input_tokens"], tokens::CACHE_WRITE_1H);

    let (_, body) = c.exchange(&post("/v1/messages", &[], tools));
    let v = json(&body);
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["id"], "toolu_1");
    assert_eq!(v["content"][0]["name"], "weather");
    assert_eq!(v["content"][0]["input"]["city"], "Paris");

    let (_, body) = c.exchange(&post("/v1/messages", &[], r#"{"stream":true,"messages":[]}"#));
    let events = sse(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[2].1, r#"{"type": "ping"}"#);
    let data = datas(&events);
    assert_eq!(data[0]["message"]["usage"]["input_tokens"], tokens::INPUT);
    assert_eq!(data[0]["message"]["usage"]["output_tokens"], tokens::OUTPUT_AT_START);
    let text: String = data.iter().filter_map(|d| d["delta"]["text"].as_str()).collect();
    assert_eq!(text, TEXT);
    assert_eq!(data[7]["usage"], serde_json::json!({"output_tokens": tokens::OUTPUT}));

    let (_, body) = c.exchange(&post("/v1/messages", &[], &tools.replace("{\"model\"", "{\"stream\":true,\"model\"")));
    let data = datas(&sse(&body));
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    assert_eq!(data[1]["content_block"]["name"], "weather");
    let args: String = data.iter().filter_map(|d| d["delta"]["partial_json"].as_str()).collect();
    assert_eq!(args, TOOL_ARGS);
    assert_eq!(data[data.len() - 2]["delta"]["stop_reason"], "tool_use");
}

#[test]
fn gemini_answers() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    let base = "/v1beta/models/gemini-2.0-flash";

    let (_, body) = c.exchange(&post(&format!("{base}:generateContent?key=abc"), &[], r#"{"contents":[]}"#));
    let v = json(&body);
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], TEXT);
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["totalTokenCount"], tokens::TOTAL);
    assert_eq!(v["modelVersion"], "gemini-2.0-flash");
    assert_eq!(mock.received()[0].target, format!("{base}:generateContent?key=abc"));
    assert_eq!(mock.received()[0].path(), format!("{base}:generateContent"));

    let tools = r#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"forecast"}]}]}"#;
    let (_, body) = c.exchange(&post(&format!("{base}:generateContent"), &[], tools));
    let call = &json(&body)["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "forecast");
    assert_eq!(call["args"]["city"], "Paris");

    let (head, body) = c.exchange(&post(&format!("{base}:streamGenerateContent?alt=sse"), &[], "{}"));
    assert_eq!(head.get("content-type"), Some("text/event-stream"));
    let raw = String::from_utf8(body.clone()).unwrap();
    assert!(raw.starts_with("data: {\"candidates\": [") && raw.ends_with("}\r\n\r\n"), "{raw}");
    assert!(!raw.contains("[DONE]"));
    let data = datas(&sse(&body));
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|d| d["usageMetadata"]["promptTokenCount"] == tokens::INPUT));
    assert_eq!(data[2]["usageMetadata"]["candidatesTokenCount"], tokens::OUTPUT);
    let text: String =
        data.iter().map(|d| d["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, TEXT);

    // Without alt=sse: one JSON array, written piece by piece.
    c.send(&post(&format!("{base}:streamGenerateContent"), &[], "{}"));
    let head = c.head();
    assert_eq!(head.get("content-type"), Some("application/json; charset=UTF-8"));
    let mut pieces = Vec::new();
    while let Some(p) = c.chunk() {
        pieces.push(String::from_utf8(p).unwrap());
    }
    assert!(pieces[0].starts_with("[{"));
    assert!(pieces[1..pieces.len() - 1].iter().all(|p| p.starts_with("\r\n,{")));
    assert_eq!(pieces.last().unwrap(), "]");
    let all = json(pieces.concat().as_bytes());
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(all[2]["usageMetadata"]["totalTokenCount"], tokens::TOTAL);
}

#[test]
fn errors_not_found_and_echo() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);

    let (head, body) = c.exchange(&post("/v2/unknown", &[], "{}"));
    assert_eq!(head.status, 404);
    assert_eq!(json(&body)["error"]["message"], "not found");

    let status = [("x-mock-status", "429")];
    let (head, body) = c.exchange(&post("/v1/chat/completions", &status, "{}"));
    assert_eq!(head.status, 429);
    assert_eq!(json(&body)["error"]["code"], "rate_limit_exceeded");
    let (head, body) = c.exchange(&post("/v1/messages", &status, "{}"));
    assert_eq!(head.status, 429);
    let v = json(&body);
    assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("rate_limit_error")));
    let (head, body) = c.exchange(&post("/v1beta/models/g:generateContent", &[("x-mock-status", "503")], "{}"));
    assert_eq!(head.status, 503);
    assert_eq!(json(&body)["error"]["status"], "UNAVAILABLE");

    // A typo in a control header is reported, not ignored; the answer closes the connection.
    let (head, body) = c.exchange(&post("/v1/messages", &[("x-mock-framing", "lenght")], "{}"));
    assert_eq!(head.status, 400);
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("x-mock-framing"));
    assert!(c.is_eof());

    let mut c = Client::plain(&mock);
    let (head, body) =
        c.exchange(&post("/v1/chat/completions?x=1", &[("x-mock-echo", "1"), ("X-Api-Key", "sk-\u{e9}")], "abc"));
    assert_eq!(head.status, 200);
    let v = json(&body);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["target"], "/v1/chat/completions?x=1");
    assert_eq!(v["body_len"], 3);
    assert!(v["headers"].as_array().unwrap().contains(&serde_json::json!(["X-Api-Key", "sk-\u{e9}"])));
    assert_eq!(mock.connections(), 2);
}

#[test]
fn hold_sends_first_event_then_waits_for_release() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    c.send(&post("/v1/chat/completions", &[("x-mock-hold", "1")], r#"{"stream":true}"#));
    let head = c.head();
    assert_eq!(head.status, 200);
    let first = c.chunk().expect("first event before release");
    assert!(first.starts_with(b"data: {"));

    // Nothing more may arrive while held.
    c.s.set_read_timeout(Some(Duration::from_millis(150))).unwrap();
    let err = c.s.read(&mut [0u8; 64]).expect_err("stream must be held");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    mock.release();
    let mut rest = Vec::new();
    while let Some(ch) = c.chunk() {
        rest.extend(ch);
    }
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
}

#[test]
fn cut_drops_the_connection_mid_stream() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    c.send(&post("/v1/messages", &[("x-mock-cut", "2")], r#"{"stream":true}"#));
    let head = c.head();
    assert_eq!(head.get("transfer-encoding"), Some("chunked"));
    assert!(c.chunk().unwrap().starts_with(b"event: message_start\n"));
    assert!(c.chunk().unwrap().starts_with(b"event: content_block_start\n"));
    assert!(c.is_eof(), "no terminating chunk, just EOF");

    // With a declared length the body comes up short.
    let mut c = Client::plain(&mock);
    c.send(&post("/v1/chat/completions", &[("x-mock-cut", "3"), ("x-mock-framing", "length")], r#"{"stream":true}"#));
    let head = c.head();
    let declared: usize = head.get("content-length").unwrap().parse().unwrap();
    let got = c.read_to_eof();
    assert!(got.len() < declared);
    assert_eq!(sse(&got).len(), 3);
}

#[test]
fn framing_variants() {
    let mock = MockUpstream::start_plain();

    // close: no length, body ends at EOF.
    let mut c = Client::plain(&mock);
    let (head, body) = c.exchange(&post("/v1/messages", &[("x-mock-framing", "close")], "{}"));
    assert!(head.get("content-length").is_none() && head.get("transfer-encoding").is_none());
    assert_eq!(head.get("connection"), Some("close"));
    assert_eq!(json(&body)["content"][0]["text"], TEXT);

    let mut c = Client::plain(&mock);
    let (_, body) = c.exchange(&post("/v1/chat/completions", &[("x-mock-framing", "close")], r#"{"stream":true}"#));
    assert!(body.ends_with(b"data: [DONE]\n\n"));

    // chunked JSON and length-framed stream, on one keep-alive connection.
    let mut c = Client::plain(&mock);
    let (head, body) = c.exchange(&post("/v1/responses", &[("x-mock-framing", "chunked")], "{}"));
    assert_eq!(head.get("transfer-encoding"), Some("chunked"));
    assert_eq!(json(&body)["object"], "response");
    let (head, body) = c.exchange(&post("/v1/responses", &[("x-mock-framing", "length")], r#"{"stream":true}"#));
    assert_eq!(head.get("content-length").unwrap(), body.len().to_string());
    assert_eq!(sse(&body).last().unwrap().0.as_deref(), Some("response.completed"));

    // HTTP/1.0 without keep-alive: answered, then closed.
    c.send(b"POST /v1/messages HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}");
    let head = c.head();
    assert_eq!(head.get("connection"), Some("close"));
    c.body(&head);
    assert!(c.is_eof());
    assert_eq!(mock.connections(), 3);
}

#[test]
fn delay_spaces_out_events() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    let start = Instant::now();
    let req = post("/v1beta/models/g:streamGenerateContent?alt=sse", &[("x-mock-delay-ms", "40")], "{}");
    let (_, body) = c.exchange(&req);
    assert_eq!(sse(&body).len(), 3);
    assert!(start.elapsed() >= Duration::from_millis(120), "{:?}", start.elapsed());
}

#[test]
fn malformed_requests_get_400_and_close() {
    let mock = MockUpstream::start_plain();
    let cases: [&[u8]; 4] = [
        b"NONSENSE\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\nHost: x\n\n",
    ];
    for case in cases {
        let mut c = Client::plain(&mock);
        c.send(case);
        let head = c.head();
        assert_eq!(head.status, 400, "{case:?}");
        assert_eq!(head.get("connection"), Some("close"));
        assert!(json(&c.body(&head))["error"]["message"].is_string());
        assert!(c.is_eof());
    }
    assert!(mock.received().is_empty());
}

#[test]
fn tls_keep_alive_and_flushed_hold() {
    let mock = MockUpstream::start_tls();
    assert_eq!(mock.url(), format!("https://localhost:{}", mock.addr().port()));
    let pem = mock.ca_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let mut c = tls_client(&mock, "localhost");
    for _ in 0..2 {
        let (head, body) = c.exchange(&post("/v1/messages", &[], "{}"));
        assert_eq!(head.status, 200);
        assert_eq!(json(&body)["content"][0]["text"], TEXT);
    }
    // The first event must really leave through TLS before the hold.
    c.send(&post("/v1/messages", &[("x-mock-hold", "1")], r#"{"stream":true}"#));
    assert_eq!(c.head().status, 200);
    assert!(c.chunk().unwrap().starts_with(b"event: message_start\n"));
    mock.release();
    let mut n = 1;
    while c.chunk().is_some() {
        n += 1;
    }
    assert_eq!(n, 9);
    assert_eq!(mock.connections(), 1);

    // The certificate also names 127.0.0.1.
    let mut c = tls_client(&mock, "127.0.0.1");
    let tools = r#"{"tools":[{"name":"x"}]}"#;
    let (_, body) = c.exchange(&post("/v1/chat/completions", &[], tools));
    assert_eq!(json(&body)["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "x");
    assert_eq!(mock.received().iter().map(|r| r.conn_id).collect::<Vec<_>>(), [0, 0, 0, 1]);
}

#[test]
fn tool_name_falls_back_when_not_findable() {
    let mock = MockUpstream::start_plain();
    let mut c = Client::plain(&mock);
    // Not JSON at all: the textual checks still see "tools" and the stream flag.
    let (head, body) = c.exchange(&post("/v1/chat/completions", &[], r#"{"tools" [ "stream" : true"#));
    assert_eq!(head.get("content-type"), Some("text/event-stream; charset=utf-8"));
    let names: Vec<String> = datas(&sse(&body))
        .iter()
        .filter_map(|d| d["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, [DEFAULT_TOOL]);
}

#[test]
fn drop_stops_accepting_and_ends_pooled_connections() {
    let mock = MockUpstream::start_plain();
    let addr = mock.addr();
    let mut c = Client::plain(&mock);
    c.exchange(&post("/v1/messages", &[], "{}"));
    drop(mock);
    assert!(c.is_eof(), "idle keep-alive connection is closed by drop");
    assert!(TcpStream::connect(addr).is_err(), "port no longer accepts");
}
