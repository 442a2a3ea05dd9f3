//! The seed's per-user limits over real sockets: 60 requests a minute and 10 in flight by
//! default, shared by every worker thread, overridable per key.

mod common;

use common::client::{request, send, Conn};
use common::harness::Proxy;
use common::mock_upstream::MockUpstream;
use kurral_proxy::auth::{KeyLimits, KeyStore};
use kurral_proxy::capture::Outcome;

const CHAT: &str = "/api/proxy/openai/v1/chat/completions";
const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[]}"#;
const STREAM_BODY: &[u8] = br#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;

#[test]
fn the_sixty_first_request_in_a_minute_gets_429() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| {
        c.limits.requests_per_minute = kurral_proxy::config::REQUESTS_PER_MINUTE;
        c.workers = 2;
    });
    let fields = proxy.kurral("bot");
    // A fresh connection each time, so the calls spread over both workers.
    let statuses: Vec<u16> = (0..61).map(|_| send(proxy.addr, &request("POST", CHAT, &fields, BODY)).status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 60);
    assert_eq!(statuses[60], 429, "{statuses:?}");
    let r = send(proxy.addr, &request("POST", CHAT, &fields, BODY));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.error_message().starts_with("Rate limit exceeded"), "{}", r.error_message());
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "one token comes back each second: {retry}");
    assert_eq!(r.header("x-kurral-ratelimit-limit-requests"), Some("60"));
    assert_eq!(mock.received().len(), 60, "refused calls never reach the upstream");
    let records = proxy.stop_and_records();
    assert_eq!(records.iter().filter(|r| r.status == 429 && r.outcome == Outcome::Rejected).count(), 2);
}

#[test]
fn the_eleventh_call_in_flight_gets_429() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| c.limits.max_concurrent = kurral_proxy::config::MAX_CONCURRENT);
    let mut held = proxy.kurral("bot");
    held.push(("x-mock-hold", "1"));
    let mut streams: Vec<Conn> = (0..10)
        .map(|_| {
            let mut c = Conn::open(proxy.addr);
            c.send(&request("POST", CHAT, &held, STREAM_BODY));
            let seen = c.read_until(b"\r\n\r\n");
            assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
            c.read_until(b"data: ");
            c
        })
        .collect();
    let fields = proxy.kurral("bot");
    let r = send(proxy.addr, &request("POST", CHAT, &fields, BODY));
    assert_eq!(r.status, 429);
    assert!(r.error_message().contains("10 concurrent"), "{}", r.error_message());
    assert_eq!(r.header("x-kurral-ratelimit-limit-concurrent"), Some("10"));
    mock.release();
    for c in &mut streams {
        let resp = c.response();
        assert!(resp.complete && resp.text().ends_with("data: [DONE]\n\n"));
    }
    drop(streams);
    // The slots are free again once the streams are over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = send(proxy.addr, &request("POST", CHAT, &fields, BODY)).status;
        if s == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never released: {s}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(proxy.stop_and_records().iter().filter(|r| r.status == 429).count(), 1);
}

#[test]
fn a_key_may_carry_its_own_limits_and_users_do_not_share_them() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let store = KeyStore::new(proxy.data_dir());
    let (tight, _) =
        store.create_with_limits("carol", KeyLimits { requests_per_minute: Some(2), ..KeyLimits::default() }).unwrap();
    let server = proxy.server.as_ref().unwrap();
    server.reload_keys().unwrap();
    let call = |key: &str| {
        send(proxy.addr, &request("POST", CHAT, &[("X-Kurral-API-Key", key), ("x-kurral-agent", "bot")], BODY)).status
    };
    assert_eq!((call(&tight), call(&tight), call(&tight)), (200, 200, 429));
    assert_eq!(call(&proxy.key.clone()), 200, "another user is not limited by carol's calls");
    proxy.stop_and_records();
}
