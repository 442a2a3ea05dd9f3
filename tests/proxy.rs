//! End-to-end tests over loopback sockets: a client, the proxy in-process, and a mock upstream
//! that records what it received.

mod common;

use std::time::Duration;

use common::client::{request, send, Conn};
use common::harness::{drivers, Proxy, ANTHROPIC_KEY, GOOGLE_KEY, OPENAI_KEY};
use common::mock_upstream::{MockUpstream, Received, TEXT};
use kurral_proxy::capture::{Outcome, Retention};
use kurral_proxy::config::DriverChoice;

const CHAT: &str = "/api/proxy/openai/v1/chat/completions";
const MESSAGES: &str = "/api/proxy/anthropic/v1/messages";
const CHAT_BODY: &str = r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}"#;
const CHAT_STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn bearer() -> String {
    format!("Bearer {OPENAI_KEY}")
}

/// Nothing of the proxy's own reaches the provider.
fn assert_clean_upstream_request(r: &Received) {
    for (name, value) in &r.headers {
        assert!(!name.to_ascii_lowercase().starts_with("x-kurral-"), "{name} reached the upstream");
        assert!(!value.starts_with(b"kr_"), "a Kurral key reached the upstream in {name}");
    }
}

#[test]
fn openai_chat_round_trip_on_every_driver() {
    for driver in drivers() {
        let mock = MockUpstream::start_plain();
        let mut proxy = Proxy::start(&mock, |c| c.driver = driver);
        let auth = bearer();
        let mut fields = proxy.kurral("support-bot");
        fields.push(("Authorization", &auth));
        fields.push(("x-kurral-env", "staging"));
        let resp = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
        assert_eq!(resp.status, 200, "{driver:?}: {}", resp.text());
        assert_eq!(resp.json()["choices"][0]["message"]["content"], TEXT);
        let request_id = resp.header("x-kurral-request-id").expect("request id").to_string();
        let session_id = resp.header("x-kurral-session-id").expect("session id").to_string();
        uuid::Uuid::parse_str(&session_id).expect("generated session id is a UUID");

        let got = mock.received();
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/v1/chat/completions"));
        assert_eq!(r.body, CHAT_BODY.as_bytes(), "body relayed byte for byte");
        assert_eq!(r.header("authorization"), Some(auth.as_bytes()), "provider credential untouched");
        assert_eq!(r.header_str("host"), Some(mock.addr().to_string().as_str()), "Host is the upstream's");
        assert_clean_upstream_request(r);

        let records = proxy.stop_and_records();
        assert_eq!(records.len(), 1);
        let rec = &records[0];
        assert_eq!(rec.id, request_id);
        assert_eq!(rec.session_id, session_id);
        assert_eq!((rec.provider.as_str(), rec.endpoint.as_str()), ("openai", "chat.completions"));
        assert_eq!(rec.model.as_deref(), Some("gpt-4o-mini"), "model read from the body, even after messages");
        assert_eq!((rec.user.as_str(), rec.agent.as_str()), ("alice", "support-bot"));
        assert_eq!(rec.env, kurral_proxy::capture::Env::Staging);
        assert_eq!(rec.retention, Retention::Metadata);
        assert_eq!((rec.status, rec.outcome, rec.stream), (200, Outcome::Ok, false));
        assert!(rec.ttft_ms.is_none());
        assert!(rec.ttfb_ms.unwrap() <= rec.latency_ms);
        assert_eq!(rec.request_bytes, CHAT_BODY.len() as u64);
    }
}

#[test]
fn tls_upstream_with_extra_ca() {
    let mock = MockUpstream::start_tls();
    // One worker: pools are per worker, and separate client connections may land on either.
    let mut proxy = Proxy::start(&mock, |c| c.workers = 1);
    let auth = bearer();
    let mut fields = proxy.kurral("tls-agent");
    fields.push(("Authorization", &auth));
    for _ in 0..2 {
        let resp = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let stream = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_STREAM_BODY.as_bytes()));
    assert_eq!(stream.status, 200);
    assert!(stream.text().ends_with("data: [DONE]\n\n"), "{}", stream.text());
    assert_eq!(mock.connections(), 1, "the TLS connection is pooled and reused");
    assert_eq!(mock.received()[0].body, CHAT_BODY.as_bytes());
    assert_eq!(proxy.stop_and_records().len(), 3);
}

#[test]
fn first_event_reaches_the_client_before_the_upstream_sends_the_last() {
    for driver in drivers() {
        let mock = MockUpstream::start_plain();
        let mut proxy = Proxy::start(&mock, |c| c.driver = driver);
        let auth = bearer();
        let mut fields = proxy.kurral("stream-bot");
        fields.push(("Authorization", &auth));
        fields.push(("x-mock-hold", "1"));
        let mut conn = Conn::open(proxy.addr);
        conn.send(&request("POST", CHAT, &fields, CHAT_STREAM_BODY.as_bytes()));
        // The mock holds every event after the first until released: the first must arrive now.
        let seen = conn.read_until(b"data: ");
        assert!(!String::from_utf8_lossy(&seen).contains("[DONE]"));
        mock.release();
        let resp = conn.response();
        assert_eq!(resp.status, 200);
        assert!(resp.header("content-type").unwrap().starts_with("text/event-stream"));
        assert!(resp.complete && resp.text().ends_with("data: [DONE]\n\n"), "{}", resp.text());

        let records = proxy.stop_and_records();
        assert_eq!(records.len(), 1, "one record per streamed call");
        let rec = &records[0];
        assert!(rec.stream);
        assert_eq!(rec.outcome, Outcome::Ok);
        let ttft = rec.ttft_ms.expect("streams have a time to first token");
        assert!(ttft <= rec.latency_ms);
        assert_eq!(rec.response_bytes as usize, resp.body.len());
    }
}

#[test]
fn anthropic_key_collision_and_legacy_kurral_header() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let body = br#"{"model":"claude-sonnet-4-5-20250929","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

    // Older SDKs and curl: provider key in x-api-key, Kurral key in X-Kurral-API-Key.
    let mut fields = proxy.kurral("claude-bot");
    fields.push(("x-api-key", ANTHROPIC_KEY));
    fields.push(("anthropic-version", "2023-06-01"));
    assert_eq!(send(proxy.addr, &request("POST", MESSAGES, &fields, body)).status, 200);

    // Legacy: the Kurral key in X-API-Key, the provider key as a bearer token.
    let bearer = format!("Bearer {ANTHROPIC_KEY}");
    let legacy = [("X-API-Key", proxy.key.as_str()), ("x-kurral-agent", "claude-bot"), ("Authorization", &bearer)];
    assert_eq!(send(proxy.addr, &request("POST", MESSAGES, &legacy, body)).status, 200);

    // An Anthropic key alone in x-api-key is not a Kurral key.
    let no_kurral = [("x-api-key", ANTHROPIC_KEY), ("x-kurral-agent", "claude-bot")];
    assert_eq!(send(proxy.addr, &request("POST", MESSAGES, &no_kurral, body)).status, 401);

    let got = mock.received();
    assert_eq!(got.len(), 2, "the 401 never reached the upstream");
    assert_eq!(got[0].header("x-api-key"), Some(ANTHROPIC_KEY.as_bytes()));
    assert_eq!(got[0].header("anthropic-version"), Some(&b"2023-06-01"[..]));
    assert_eq!(got[1].header("x-api-key"), None, "the legacy Kurral key is removed");
    assert_eq!(got[1].header("authorization"), Some(bearer.as_bytes()));
    for r in &got {
        assert_clean_upstream_request(r);
        assert_eq!(r.target, "/v1/messages");
    }
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.model.as_deref() == Some("claude-sonnet-4-5-20250929")));
}

#[test]
fn gemini_query_key_reaches_upstream_but_no_record() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let fields = proxy.kurral("gemini-bot");
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let plain = format!("/api/proxy/google/v1beta/models/gemini-2.0-flash:generateContent?key={GOOGLE_KEY}");
    let resp = send(proxy.addr, &request("POST", &plain, &fields, body));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let sse = format!("/api/proxy/google/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={GOOGLE_KEY}");
    let resp = send(proxy.addr, &request("POST", &sse, &fields, body));
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("\r\n\r\n"), "Gemini SSE relayed with its CRLF framing");

    let got = mock.received();
    assert_eq!(got[0].target, format!("/v1beta/models/gemini-2.0-flash:generateContent?key={GOOGLE_KEY}"));
    assert_eq!(got[1].target, format!("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={GOOGLE_KEY}"));

    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].endpoint.as_str(), records[0].model.as_deref(), records[0].stream),
        ("generateContent", Some("gemini-2.0-flash"), false)
    );
    assert_eq!(
        (records[1].endpoint.as_str(), records[1].model.as_deref(), records[1].stream),
        ("streamGenerateContent", Some("gemini-2.5-pro"), true)
    );
    for r in &records {
        assert!(!serde_json::to_string(r).unwrap().contains(GOOGLE_KEY));
    }
    assert_no_secret_in_dir(proxy.data_dir(), GOOGLE_KEY);
}

fn assert_no_secret_in_dir(dir: &std::path::Path, secret: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_secret_in_dir(&path, secret);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a provider key",
                path.display()
            );
        }
    }
}

#[test]
fn error_statuses_are_json_and_reach_no_upstream() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| c.limits.max_body_bytes = 1000);
    let key = proxy.key.clone();
    let addr = proxy.addr;
    let post = |fields: &[(&str, &str)], body: &[u8]| send(addr, &request("POST", CHAT, fields, body));

    let r = post(&[("x-kurral-agent", "bot")], b"{}");
    assert_eq!((r.status, r.error_message().as_str()), (401, "missing or invalid Kurral API key"));
    let r = post(&[("X-Kurral-API-Key", "kr_live_unknown"), ("x-kurral-agent", "bot")], b"{}");
    assert_eq!(r.status, 401);
    let r = post(&[("X-Kurral-API-Key", &key)], b"{}");
    assert_eq!((r.status, r.error_message().as_str()), (400, "x-kurral-agent header required"));
    let r = post(&[("X-Kurral-API-Key", &key), ("x-kurral-agent", "ab")], b"{}");
    assert_eq!((r.status, r.error_message().as_str()), (400, "x-kurral-agent header required"));
    for (name, value) in [("x-kurral-retention", "forever"), ("x-kurral-env", "prod"), ("x-kurral-session-id", "123")] {
        let r = post(&[("X-Kurral-API-Key", &key), ("x-kurral-agent", "bot"), (name, value)], b"{}");
        assert_eq!(r.status, 400, "{name}");
        assert!(r.error_message().contains(name), "the message names {name}");
    }
    let r = send(addr, &request("POST", "/api/proxy/nowhere/v1/x", &[("X-Kurral-API-Key", &key)], b"{}"));
    assert_eq!(r.status, 404);
    r.error_message();
    let r = send(addr, &request("GET", "/", &[], b""));
    assert_eq!(r.status, 404);

    // 413 from the head alone: the proxy answers before the body is sent.
    let mut conn = Conn::open(addr);
    conn.send(b"POST /api/proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Length: 5000\r\n");
    conn.send(format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\n\r\n").as_bytes());
    let r = conn.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    // 413 for a chunked body that grows past the limit while streaming.
    let mut conn = Conn::open(addr);
    conn.send(format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nX-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\n\r\n").as_bytes());
    conn.send(format!("3e8\r\n{}\r\n", "a".repeat(1000)).as_bytes());
    conn.send(b"1\r\na\r\n0\r\n\r\n");
    assert_eq!(conn.response().status, 413);

    let health = send(addr, b"GET /api/proxy/health HTTP/1.1\r\nHost: p\r\n\r\n");
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
    // HEAD: the same fields, no body; the connection stays usable for the next request.
    let mut conn = Conn::open(addr);
    conn.send(b"HEAD /api/proxy/health HTTP/1.1\r\nHost: p\r\n\r\nGET /api/proxy/health HTTP/1.1\r\nHost: p\r\n\r\n");
    let seen = String::from_utf8_lossy(&conn.read_until(b"\r\n\r\nHTTP/1.1 200")).into_owned();
    let (first_head, rest) = seen.split_once("\r\n\r\n").unwrap();
    assert!(first_head.starts_with("HTTP/1.1 200 OK\r\n") && first_head.contains("content-length: 15"));
    assert!(rest.starts_with("HTTP/1.1 200"), "no body after a HEAD answer: {rest:?}");

    // Nothing above reached the upstream but the chunked body's first part.
    assert!(mock.received().is_empty());
    let records = proxy.stop_and_records();
    let statuses: Vec<(u16, Outcome)> = records.iter().map(|r| (r.status, r.outcome)).collect();
    assert_eq!(
        statuses,
        vec![(413, Outcome::Rejected), (413, Outcome::Rejected)],
        "authenticated rejections are recorded"
    );
}

#[test]
fn upstream_down_is_502_and_slow_upstream_is_504() {
    let mock = MockUpstream::start_plain();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut proxy = Proxy::start(&mock, |c| {
        c.upstreams[kurral_proxy::provider::Provider::Anthropic.index()] =
            kurral_proxy::upstream::UpstreamUrl::parse(&dead_url).unwrap();
        c.limits.request_timeout = Duration::from_secs(1);
    });
    let fields = proxy.kurral("bot");
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = send(proxy.addr, &request("POST", MESSAGES, &fields, body));
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["type"], "upstream_error");
    assert!(r.header("x-kurral-request-id").is_some());

    let mut slow = fields.clone();
    slow.push(("x-mock-delay-ms", "3000"));
    let r = send(proxy.addr, &request("POST", CHAT, &slow, CHAT_BODY.as_bytes()));
    assert_eq!(r.status, 504);

    let records = proxy.stop_and_records();
    let got: Vec<(u16, Outcome)> = records.iter().map(|r| (r.status, r.outcome)).collect();
    assert_eq!(got, vec![(502, Outcome::UpstreamError), (504, Outcome::Timeout)]);
    // The upstream never saw the request, but the record still says what was asked.
    assert_eq!(records[0].model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(records[0].request_bytes, body.len() as u64);
    assert_eq!(records[1].model.as_deref(), Some("gpt-4o-mini"));
}

#[test]
fn upstream_error_status_is_relayed_and_recorded() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let mut fields = proxy.kurral("bot");
    fields.push(("x-mock-status", "429"));
    let r = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
    assert_eq!(r.status, 429, "the provider's status passes through");
    assert!(r.json()["error"].is_object());
    let records = proxy.stop_and_records();
    assert_eq!((records[0].status, records[0].outcome), (429, Outcome::UpstreamError));
}

#[test]
fn a_cut_stream_is_visibly_truncated() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let mut fields = proxy.kurral("bot");
    fields.push(("x-mock-cut", "2"));
    let mut conn = Conn::open(proxy.addr);
    conn.send(&request("POST", CHAT, &fields, CHAT_STREAM_BODY.as_bytes()));
    let r = conn.response();
    assert_eq!(r.status, 200);
    assert!(!r.complete, "no terminating chunk the upstream did not send");
    assert!(conn.at_eof(), "the proxy closes the connection");
    let records = proxy.stop_and_records();
    assert_eq!(records[0].outcome, Outcome::UpstreamError);
}

#[test]
fn keep_alive_pipelining_chunked_bodies_and_framings() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let fields = proxy.kurral("bot");
    let mut conn = Conn::open(proxy.addr);

    // Two pipelined requests in one write are answered in order.
    let mut both = request("POST", CHAT, &fields, CHAT_BODY.as_bytes());
    let mut second_fields = fields.clone();
    second_fields.push(("x-mock-echo", "1"));
    both.extend(request("POST", CHAT, &second_fields, b"{\"model\":\"second\"}"));
    conn.send(&both);
    assert_eq!(conn.response().json()["choices"][0]["message"]["content"], TEXT);
    let echo = conn.response().json();
    assert_eq!(echo["body_len"], 18);

    // A chunked request body is relayed with its framing and arrives intact.
    let mut head = format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n");
    for (n, v) in &fields {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.send(head.as_bytes());
    conn.send(b"10\r\n{\"model\":\"gpt-4o\r\n");
    std::thread::sleep(Duration::from_millis(20));
    conn.send(b"3;ext=1\r\n\"}\n\r\n0\r\n\r\n");
    let r = conn.response();
    assert_eq!(r.status, 200);

    // Upstream framings: chunked JSON, close-delimited JSON (the proxy then closes too).
    let mut chunked = fields.clone();
    chunked.push(("x-mock-framing", "chunked"));
    conn.send(&request("POST", CHAT, &chunked, CHAT_BODY.as_bytes()));
    assert_eq!(conn.response().json()["choices"][0]["message"]["content"], TEXT);
    let mut close = fields.clone();
    close.push(("x-mock-framing", "close"));
    conn.send(&request("POST", CHAT, &close, CHAT_BODY.as_bytes()));
    let r = conn.response();
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], TEXT);
    assert!(conn.at_eof());

    let got = mock.received();
    assert_eq!(got[2].body, b"{\"model\":\"gpt-4o\"}\n");
    assert!(got[2].chunked, "chunked framing relayed as sent");
    assert_eq!(got[0].conn_id, got[3].conn_id, "one pooled upstream connection");
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 5);
    assert_eq!(records[1].model.as_deref(), Some("second"));
    assert_eq!(records[2].model.as_deref(), Some("gpt-4o"));
}

#[test]
fn expect_continue_and_http10_clients() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let fields = proxy.kurral("bot");
    let mut conn = Conn::open(proxy.addr);
    let mut head =
        format!("POST {CHAT} HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: {}\r\n", CHAT_BODY.len());
    for (n, v) in &fields {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.send(head.as_bytes());
    conn.read_until(b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.send(CHAT_BODY.as_bytes());
    assert_eq!(conn.response().status, 200);
    assert!(mock.received()[0].header("expect").is_none(), "the proxy answers Expect itself");

    // HTTP/1.0 client, chunked stream upstream: the body comes decoded and ends with the close.
    let mut conn = Conn::open(proxy.addr);
    let mut raw = format!("POST {CHAT} HTTP/1.0\r\nContent-Length: {}\r\n", CHAT_STREAM_BODY.len());
    for (n, v) in &fields {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(CHAT_STREAM_BODY);
    conn.send(raw.as_bytes());
    let r = conn.response();
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none());
    assert!(r.text().starts_with("data: ") && r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert_eq!(proxy.stop_and_records().len(), 2);
}

#[test]
fn keys_created_or_revoked_while_running_take_effect() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let store = kurral_proxy::auth::KeyStore::new(proxy.data_dir());
    let (new_key, new_id) = store.create("bob").unwrap();
    let call = |key: &str| {
        send(
            proxy.addr,
            &request("POST", CHAT, &[("X-Kurral-API-Key", key), ("x-kurral-agent", "bot")], CHAT_BODY.as_bytes()),
        )
        .status
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while call(&new_key) != 200 {
        assert!(std::time::Instant::now() < deadline, "new key not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
    store.revoke(&new_id).unwrap();
    while call(&new_key) != 401 {
        assert!(std::time::Instant::now() < deadline, "revocation not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proxy.stop_and_records().iter().any(|r| r.user == "bob"));
}

#[test]
fn shutdown_lets_a_stream_in_flight_finish_and_keeps_its_record() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| c.driver = DriverChoice::Auto);
    let mut fields = proxy.kurral("bot");
    fields.push(("x-mock-hold", "1"));
    let mut conn = Conn::open(proxy.addr);
    conn.send(&request("POST", CHAT, &fields, CHAT_STREAM_BODY.as_bytes()));
    conn.read_until(b"data: ");
    let server = proxy.server.take().unwrap();
    let addr = proxy.addr;
    let stopper = std::thread::spawn(move || server.shutdown());
    // New connections are refused once the workers stop accepting.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
    mock.release();
    let r = conn.response();
    assert!(r.complete && r.text().ends_with("data: [DONE]\n\n"));
    stopper.join().unwrap();
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Ok);
}

#[test]
fn upstream_named_by_host_name_is_resolved_off_the_workers() {
    let mock = MockUpstream::start_plain();
    let by_name = format!("http://localhost:{}", mock.addr().port());
    let mut proxy = Proxy::start(&mock, |c| {
        c.upstreams[kurral_proxy::provider::Provider::OpenAi.index()] =
            kurral_proxy::upstream::UpstreamUrl::parse(&by_name).unwrap();
    });
    let fields = proxy.kurral("bot");
    let r = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.received()[0].header_str("host"), Some(format!("localhost:{}", mock.addr().port()).as_str()));
    assert_eq!(proxy.stop_and_records().len(), 1);
}

#[test]
fn a_pooled_connection_that_dies_unanswered_is_retried_once_on_a_fresh_one() {
    use common::raw_upstream::{RawUpstream, Script, Then};
    // Each upstream connection answers one request, then stays open without reading, and closes
    // after a while: a second request sent on it is closed unanswered.
    let raw = RawUpstream::start(|_| {
        Script::reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", Then::Hold(Duration::from_millis(300)))
    });
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| {
        c.workers = 1;
        c.upstreams[kurral_proxy::provider::Provider::OpenAi.index()] =
            kurral_proxy::upstream::UpstreamUrl::parse(&raw.url()).unwrap();
    });
    let fields = proxy.kurral("bot");
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..2 {
        conn.send(&request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
        let r = conn.response();
        assert_eq!((r.status, r.text().as_str()), (200, "{}"));
    }
    assert_eq!(raw.accepted(), 2, "the second call went out again on a new connection");
    let records = proxy.stop_and_records();
    assert!(records.iter().all(|r| r.outcome == Outcome::Ok), "{records:?}");
    assert!(records.iter().all(|r| r.model.as_deref() == Some("gpt-4o-mini")), "the resent call is inspected too");
}

#[test]
fn a_body_nested_past_the_parse_limit_is_relayed_and_the_proxy_stays_up() {
    // 200,000 levels of `[` in a tool's schema: parsed, it would overflow the worker's stack.
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let fields = proxy.kurral("bot");
    let depth = 200_000;
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{}0{}}}}}]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = send(proxy.addr, &request("POST", CHAT, &fields, body.as_bytes()));
    assert_eq!(r.status, 200, "relayed as it came");
    let r = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
    assert_eq!(r.status, 200, "the proxy still serves");
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 2, "both calls recorded");
    assert_eq!(records[0].request_bytes, body.len() as u64);
    assert_eq!(records[0].model, None, "not inspected: too deep to parse");
    assert_eq!(records[1].model.as_deref(), Some("gpt-4o-mini"));
}
