//! The read API over HTTP through the running proxy, and the durability of what it reads:
//! calls with two agents and a few sessions, then agents, sessions and calls as a key's user sees
//! them (and as another user's key does not); a shutdown in the middle of load, then a restart.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{request, send, Response};
use common::harness::{drivers, Proxy, OPENAI_KEY};
use common::mock_upstream::MockUpstream;
use kurral_proxy::auth::KeyStore;
use kurral_proxy::capture::store::Store;
use kurral_proxy::config::Config;
use kurral_proxy::server;
use serde_json::Value;

const CHAT: &str = "/api/proxy/openai/v1/chat/completions";
const CHAT_BODY: &str = r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}"#;

fn sid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// One proxied chat call; returns its request id.
fn chat(proxy: &Proxy, agent: &str, session: &str, env: &str) -> String {
    let auth = format!("Bearer {OPENAI_KEY}");
    let mut fields = proxy.kurral(agent);
    fields.extend([("Authorization", auth.as_str()), ("x-kurral-session-id", session), ("x-kurral-env", env)]);
    let resp = send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-kurral-session-id"), Some(session));
    resp.header("x-kurral-request-id").expect("request id").to_string()
}

fn get(addr: SocketAddr, key: Option<&str>, path: &str) -> Response {
    let fields: Vec<(&str, &str)> = key.map(|k| ("X-Kurral-API-Key", k)).into_iter().collect();
    send(addr, &request("GET", path, &fields, b""))
}

fn get_ok(addr: SocketAddr, key: &str, path: &str) -> Value {
    let r = get(addr, Some(key), path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// Waits until the writer has stored `calls` calls for the key's user (records are written
/// after the answer, by the writer thread).
fn wait_for_calls(addr: SocketAddr, key: &str, calls: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_ok(addr, key, "/api/agents");
        let total: u64 = v["agents"].as_array().unwrap().iter().map(|a| a["calls"].as_u64().unwrap()).sum();
        if total == calls {
            return v;
        }
        assert!(Instant::now() < deadline, "only {total} of {calls} calls recorded: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn session_ids(v: &Value) -> Vec<String> {
    v["sessions"].as_array().unwrap().iter().map(|s| s["session_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn agents_sessions_and_calls_over_http_for_their_user_only() {
    for driver in drivers() {
        let mock = MockUpstream::start_plain();
        let proxy = Proxy::start(&mock, |c| c.driver = driver);
        let (bob_key, _) = KeyStore::new(proxy.data_dir()).create("bob").unwrap();
        proxy.server.as_ref().unwrap().reload_keys().unwrap();
        let key = proxy.key.clone();

        // support-bot: session 1 (three calls), session 2 (one, staging); planner: session 3 (two).
        let s1: Vec<String> = (0..3).map(|_| chat(&proxy, "support-bot", &sid(1), "production")).collect();
        std::thread::sleep(Duration::from_millis(5));
        let s2 = chat(&proxy, "support-bot", &sid(2), "staging");
        let s3: Vec<String> = (0..2).map(|_| chat(&proxy, "planner", &sid(3), "development")).collect();

        let agents = wait_for_calls(proxy.addr, &key, 6);
        let list = agents["agents"].as_array().unwrap();
        let names: Vec<&str> = list.iter().map(|a| a["agent"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["planner", "support-bot"], "{driver:?}");
        let bot = &list[1];
        assert_eq!((bot["sessions"].as_u64(), bot["calls"].as_u64()), (Some(2), Some(4)));
        assert_eq!((list[0]["sessions"].as_u64(), list[0]["calls"].as_u64()), (Some(1), Some(2)));
        for field in ["first_seen", "last_seen"] {
            assert!(bot[field].as_str().unwrap().ends_with('Z'), "{field}: {bot}");
        }
        assert!(bot["cost_usd"].as_f64().unwrap() > 0.0, "gpt-4o-mini is priced: {bot}");

        // An agent's sessions, newest first, a page at a time, filtered by env.
        let all = get_ok(proxy.addr, &key, "/api/agents/support-bot/sessions");
        assert_eq!(session_ids(&all), vec![sid(2), sid(1)]);
        assert!(all["next_cursor"].is_null());
        let page1 = get_ok(proxy.addr, &key, "/api/agents/support-bot/sessions?limit=1");
        assert_eq!(session_ids(&page1), vec![sid(2)]);
        let cursor = page1["next_cursor"].as_str().expect("a cursor to the next page");
        let page2 = get_ok(proxy.addr, &key, &format!("/api/agents/support-bot/sessions?limit=1&cursor={cursor}"));
        assert_eq!(session_ids(&page2), vec![sid(1)]);
        assert!(page2["next_cursor"].is_null());
        let staging = get_ok(proxy.addr, &key, "/api/agents/support-bot/sessions?env=staging&limit=&cursor=");
        assert_eq!(session_ids(&staging), vec![sid(2)]);
        let production = get_ok(proxy.addr, &key, "/api/agents/support-bot/sessions?env=production");
        assert_eq!(session_ids(&production), vec![sid(1)]);

        // A session with its calls, oldest first, and its totals.
        let session = get_ok(proxy.addr, &key, &format!("/api/sessions/{}", sid(1)));
        let s = &session["session"];
        assert_eq!(
            (s["session_id"].as_str(), s["agent"].as_str(), s["env"].as_str()),
            (Some(sid(1).as_str()), Some("support-bot"), Some("production"))
        );
        assert_eq!((s["calls"].as_u64(), s["errors"].as_u64()), (Some(3), Some(0)));
        let calls = session["calls"].as_array().unwrap();
        let got: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(got, s1.iter().map(String::as_str).collect::<Vec<_>>(), "oldest first");
        let input: u64 = calls.iter().map(|c| c["usage"]["input_tokens"].as_u64().unwrap()).sum();
        let output: u64 = calls.iter().map(|c| c["usage"]["output_tokens"].as_u64().unwrap()).sum();
        assert!(input > 0 && output > 0);
        assert_eq!((s["input_tokens"].as_u64(), s["output_tokens"].as_u64()), (Some(input), Some(output)));
        let cost: f64 = calls.iter().map(|c| c["cost_usd"].as_f64().unwrap()).sum();
        assert!((s["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12, "{s}");
        assert!(s["started_at"].as_str().unwrap() <= s["last_at"].as_str().unwrap());

        // One call, in the documented shape.
        let c = get_ok(proxy.addr, &key, &format!("/api/calls/{}", s3[1]));
        assert_eq!(
            (c["id"].as_str(), c["agent"].as_str(), c["env"].as_str()),
            (Some(s3[1].as_str()), Some("planner"), Some("development"))
        );
        for field in [
            "provider",
            "endpoint",
            "model",
            "stream",
            "status",
            "outcome",
            "started_at",
            "latency_ms",
            "ttft_ms",
            "usage",
            "usage_raw",
            "cost_usd",
            "retention",
            "request",
            "response",
            "tools",
            "findings",
        ] {
            assert!(c.get(field).is_some(), "call lacks {field}: {c}");
        }
        assert_eq!(
            (c["provider"].as_str(), c["endpoint"].as_str(), c["status"].as_u64()),
            (Some("openai"), Some("chat.completions"), Some(200))
        );

        // Another user's key sees none of it: no agents, 404 for the session and the call.
        let theirs = get_ok(proxy.addr, &bob_key, "/api/agents");
        assert_eq!(theirs["agents"].as_array().unwrap().len(), 0);
        let r = get(proxy.addr, Some(&bob_key), &format!("/api/sessions/{}", sid(1)));
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["type"], "not_found_error");
        assert_eq!(get(proxy.addr, Some(&bob_key), &format!("/api/calls/{s2}")).status, 404);
        let r = get_ok(proxy.addr, &bob_key, "/api/agents/support-bot/sessions");
        assert!(session_ids(&r).is_empty());
        // The legacy header works for reads too.
        let legacy = send(proxy.addr, &request("GET", "/api/agents", &[("X-API-Key", &bob_key)], b""));
        assert_eq!(legacy.status, 200);

        // Refusals are JSON, with the statuses of the rest of the proxy.
        assert_eq!(get(proxy.addr, None, "/api/agents").status, 401);
        assert_eq!(get(proxy.addr, Some("kr_live_nope"), "/api/agents").status, 401);
        for bad in [
            "/api/agents/support-bot/sessions?limit=0",
            "/api/agents/support-bot/sessions?env=prod",
            "/api/agents/support-bot/sessions?cursor=zz",
            "/api/agents/support-bot/sessions?page=2",
        ] {
            let r = get(proxy.addr, Some(&key), bad);
            assert_eq!(r.status, 400, "{bad}");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        }
        let r = get(proxy.addr, Some(&key), "/api/nothing");
        assert_eq!((r.status, r.json()["error"]["type"].as_str()), (404, Some("not_found_error")));
        assert_eq!(get(proxy.addr, Some(&key), "/api/sessions/not-a-session").status, 404);
        let post = send(proxy.addr, &request("POST", "/api/agents", &[("X-Kurral-API-Key", &key)], b"{}"));
        assert_eq!(post.status, 405);

        // Many reads at once on one keep-alive connection each, from several threads.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (addr, key) = (proxy.addr, key.clone());
                std::thread::spawn(move || {
                    let mut conn = common::client::Conn::open(addr);
                    for _ in 0..25 {
                        conn.send(&request("GET", "/api/agents", &[("X-Kurral-API-Key", &key)], b""));
                        assert_eq!(conn.response().status, 200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(proxy);
    }
}

/// A proxied call on its own connection that tolerates the server going away: the status and
/// request id, or `None` when the proxy refused or closed the connection.
fn tolerant_call(addr: SocketAddr, key: &str, session: &str) -> Option<(u16, Option<String>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = format!("Bearer {OPENAI_KEY}");
    let fields = [
        ("X-Kurral-API-Key", key),
        ("x-kurral-agent", "loader"),
        ("x-kurral-session-id", session),
        ("Authorization", auth.as_str()),
        ("Connection", "close"),
    ];
    s.write_all(&request("POST", CHAT, &fields, CHAT_BODY.as_bytes())).ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let id = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("x-kurral-request-id: ").map(str::to_string));
    Some((status, id))
}

#[test]
fn shutdown_mid_load_then_restart_keeps_every_served_call_once() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let (addr, key) = (proxy.addr, proxy.key.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let loaders: Vec<_> = (0..6)
        .map(|i| {
            let (key, stop, answered) = (key.clone(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let session = sid(100 + i);
                while !stop.load(Ordering::Relaxed) {
                    match tolerant_call(addr, &key, &session) {
                        Some((200, Some(id))) => answered.lock().unwrap().push(id),
                        Some(_) => {}
                        None => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        })
        .collect();
    // Let load build up, then stop the server under it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "load did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.server.take().unwrap().shutdown();
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }

    let served = mock.received().len();
    let answered = answered.lock().unwrap().clone();
    let records = Store::open(proxy.data_dir()).unwrap().calls().unwrap();
    let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), records.len(), "no record twice");
    let upstream_calls = records.iter().filter(|r| r.upstream_status.is_some()).count();
    assert_eq!(upstream_calls, served, "one record per call the upstream served, none missing");
    for id in &answered {
        assert!(ids.binary_search(&id.as_str()).is_ok(), "answered call {id} has no record");
    }

    // Restart on the same data dir: the aggregates match the records, and counting goes on.
    let mut config = Config::for_data_dir(proxy.data_dir());
    config.workers = 2;
    config.limits.requests_per_minute = 0;
    config.limits.max_concurrent = 0;
    let url = kurral_proxy::upstream::UpstreamUrl::parse(&mock.url()).unwrap();
    config.upstreams = [url.clone(), url.clone(), url];
    let restarted = server::start(config).expect("restart");
    let agents = get_ok(restarted.addr, &key, "/api/agents");
    assert_eq!(agents["agents"][0]["calls"].as_u64(), Some(records.len() as u64));
    let sessions = get_ok(restarted.addr, &key, "/api/agents/loader/sessions");
    let total: u64 = sessions["sessions"].as_array().unwrap().iter().map(|s| s["calls"].as_u64().unwrap()).sum();
    assert_eq!(total, records.len() as u64);
    assert!(tolerant_call(restarted.addr, &key, &sid(100)).is_some_and(|(s, _)| s == 200));
    restarted.shutdown();
    let store = Store::open(proxy.data_dir()).unwrap();
    assert_eq!(store.calls().unwrap().len(), records.len() + 1);
    let user = &records[0].user;
    assert_eq!(store.agents(user).unwrap()[0].totals.calls, records.len() as u64 + 1);
}

#[test]
fn a_key_for_registered_agents_refuses_others_with_403() {
    let mock = MockUpstream::start_plain();
    let proxy = Proxy::start(&mock, |_| {});
    let store = KeyStore::new(proxy.data_dir());
    let (strict, _) = store.create_key("alice", kurral_proxy::auth::KeyLimits::default(), true).unwrap();
    store.register_agent("alice", "known-bot").unwrap();
    proxy.server.as_ref().unwrap().reload_keys().unwrap();
    let auth = format!("Bearer {OPENAI_KEY}");
    let call = |agent: &str| {
        let fields =
            [("X-Kurral-API-Key", strict.as_str()), ("x-kurral-agent", agent), ("Authorization", auth.as_str())];
        send(proxy.addr, &request("POST", CHAT, &fields, CHAT_BODY.as_bytes()))
    };
    let refused = call("stranger-bot");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["type"], "permission_error");
    assert_eq!(call("known-bot").status, 200);
    assert_eq!(mock.received().len(), 1, "nothing of the refused call reached the upstream");
    // The user's other keys are not restricted.
    assert_eq!(chat(&proxy, "stranger-bot", &sid(9), "production").len(), 36);
}
