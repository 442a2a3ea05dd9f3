//! Queries of the capture store on a real RocksDB in a temp dir: order, pages, aggregates, env
//! filter, isolation between users, and what survives a reopen.

use std::sync::Arc;

use kurral_proxy::capture::store::{Store, StoreWriter};
use kurral_proxy::capture::{CallRecord, Durability, Encoded, Env, RecordSink};
use kurral_proxy::pricing::{Cost, Usd};
use kurral_proxy::usage::Usage;

/// Writes `records` as one batch, encoded as a worker would send them.
fn put(w: &mut StoreWriter, records: &[CallRecord]) {
    w.write_batch(&records.iter().cloned().map(Encoded::new).collect::<Vec<_>>()).unwrap();
}

/// A record with only what these tests look at; the rest takes its defaults.
fn call(user: &str, agent: &str, session: &str, env: &str, started_at: &str) -> CallRecord {
    serde_json::from_value(serde_json::json!({
        "id": uuid::Uuid::now_v7().to_string(),
        "session_id": session,
        "user": user,
        "key_id": "key_test",
        "agent": agent,
        "env": env,
        "provider": "openai",
        "endpoint": "chat.completions",
        "model": "gpt-4o-mini",
        "stream": false,
        "status": 200,
        "outcome": "ok",
        "started_at": started_at,
        "latency_ms": 12.5,
        "retention": "metadata",
        "request_bytes": 10,
        "response_bytes": 20,
    }))
    .expect("a valid record")
}

fn priced(mut r: CallRecord, input: u64, output: u64, cost: &str) -> CallRecord {
    r.usage = Some(Usage { input_tokens: Some(input), output_tokens: Some(output), ..Default::default() });
    let total: Usd = cost.parse().unwrap();
    r.cost_usd = Some(total.to_f64());
    r.cost = Some(Cost {
        model: "gpt-4o-mini".into(),
        pricing_version: "test".into(),
        long_context: false,
        total,
        breakdown: Default::default(),
    });
    r
}

fn sid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn at(second: u32) -> String {
    format!("2026-11-26T10:{:02}:{:02}.000Z", second / 60, second % 60)
}

fn open(dir: &std::path::Path) -> (Arc<Store>, StoreWriter) {
    let store = Arc::new(Store::open(dir).unwrap());
    let writer = StoreWriter::new(store.clone(), Durability::Sync);
    (store, writer)
}

fn ids(sessions: &[kurral_proxy::capture::summary::SessionSummary]) -> Vec<String> {
    sessions.iter().map(|s| s.session_id.clone()).collect()
}

#[test]
fn sessions_newest_first_in_pages_with_env_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut w) = open(dir.path());
    // Seven sessions of one agent, one call each, every third in staging; written in one batch
    // and out of time order.
    let mut records: Vec<CallRecord> = (0..7)
        .map(|i| call("alice", "bot", &sid(i), if i % 3 == 0 { "staging" } else { "production" }, &at(i * 10)))
        .collect();
    records.reverse();
    records.swap(1, 4);
    put(&mut w, &records);

    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = store.sessions("alice", "bot", None, 3, cursor.as_deref()).unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(ids(&page.items));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..7).rev().map(sid).collect::<Vec<_>>(), "newest first, each once");

    let staging = store.sessions("alice", "bot", Some(Env::Staging), 10, None).unwrap();
    assert_eq!(ids(&staging.items), vec![sid(6), sid(3), sid(0)]);
    assert!(staging.next.is_none());
    let dev = store.sessions("alice", "bot", Some(Env::Development), 10, None).unwrap();
    assert!(dev.items.is_empty());
    // An exact page: no cursor to an empty page.
    let exact = store.sessions("alice", "bot", Some(Env::Staging), 3, None).unwrap();
    assert_eq!((exact.items.len(), exact.next.is_none()), (3, true));
    assert!(store.sessions("alice", "nobody", None, 10, None).unwrap().items.is_empty());
}

#[test]
fn a_sessions_calls_oldest_first_and_its_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut w) = open(dir.path());
    let s = sid(1);
    let first = priced(call("alice", "bot", &s, "production", &at(10)), 100, 20, "0.1");
    let second = priced(call("alice", "bot", &s, "production", &at(20)), 50, 5, "0.1");
    let mut failed = call("alice", "bot", &s, "production", &at(30));
    failed.outcome = serde_json::from_value(serde_json::json!("upstream_error")).unwrap();
    failed.status = 502;
    let mut unpriced = priced(call("alice", "bot", &s, "production", &at(40)), 7, 3, "0");
    unpriced.cost = None;
    unpriced.cost_usd = None;
    unpriced.unpriced_model = true;
    let third = priced(call("alice", "bot", &s, "production", &at(50)), 1, 1, "0.1");
    // Completion order is not start order: a later call may be recorded first.
    put(&mut w, &[second.clone(), failed.clone()]);
    put(&mut w, std::slice::from_ref(&first));
    put(&mut w, &[unpriced.clone(), third.clone()]);

    let page = store.session_calls("alice", &s, 100, None).unwrap();
    let got: Vec<&str> = page.items.iter().map(|r| r.id.as_str()).collect();
    let want: Vec<&str> = [&first, &second, &failed, &unpriced, &third].iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, want, "oldest first");
    let two = store.session_calls("alice", &s, 2, None).unwrap();
    let rest = store.session_calls("alice", &s, 100, two.next.as_deref()).unwrap();
    assert_eq!(two.items.len() + rest.items.len(), 5);
    assert_eq!(rest.items[0].id, failed.id);

    let summary = store.session("alice", &s).unwrap().unwrap();
    assert_eq!(summary.started_ms, kurral_proxy::capture::layout::started_ms(&first), "earliest call start");
    assert_eq!(summary.last_ms, kurral_proxy::capture::layout::started_ms(&third));
    let t = &summary.totals;
    assert_eq!((t.calls, t.errors, t.unpriced_calls), (5, 1, 1));
    assert_eq!((t.input_tokens, t.output_tokens), (158, 29));
    assert_eq!(t.cost.to_string(), "0.3", "exact sum, not 0.30000000000000004");
    let json = summary.to_json();
    assert_eq!(json["cost_usd"], 0.3);
    assert_eq!(json["started_at"], at(10));
    assert_eq!(json["last_at"], at(50));

    let agents = store.agents("alice").unwrap();
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!((a.agent.as_str(), a.sessions, a.totals.calls, a.totals.errors), ("bot", 1, 5, 1));
    assert_eq!(a.totals.cost.to_string(), "0.3");
    assert_eq!((a.to_json()["first_seen"].clone(), a.to_json()["last_seen"].clone()), (at(10).into(), at(50).into()));
}

#[test]
fn a_session_moves_in_its_agents_list_when_an_earlier_call_arrives_late() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut w) = open(dir.path());
    put(&mut w, &[call("alice", "bot", &sid(1), "production", &at(30))]);
    put(&mut w, &[call("alice", "bot", &sid(2), "production", &at(20))]);
    assert_eq!(ids(&store.sessions("alice", "bot", None, 10, None).unwrap().items), vec![sid(1), sid(2)]);
    // Session 1 had a call that started before session 2's, recorded only now.
    put(&mut w, &[call("alice", "bot", &sid(1), "production", &at(10))]);
    let list = store.sessions("alice", "bot", None, 10, None).unwrap().items;
    assert_eq!(ids(&list), vec![sid(2), sid(1)], "listed once, at its new start");
    assert_eq!(
        ids(&store.sessions("alice", "bot", Some(Env::Production), 10, None).unwrap().items),
        vec![sid(2), sid(1)]
    );
}

#[test]
fn users_are_isolated_even_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut w) = open(dir.path());
    let shared_session = sid(7);
    let a = priced(call("alice", "bot", &shared_session, "production", &at(1)), 10, 1, "0.5");
    let b = priced(call("bob", "bot", &shared_session, "production", &at(2)), 20, 2, "0.25");
    // A user name that is a prefix of another must not reach into it.
    let c = call("al", "bot", &sid(8), "production", &at(3));
    put(&mut w, &[a.clone(), b.clone(), c.clone()]);

    let alice = store.session("alice", &shared_session).unwrap().unwrap();
    let bob = store.session("bob", &shared_session).unwrap().unwrap();
    assert_eq!((alice.totals.calls, alice.totals.input_tokens, alice.totals.cost.to_string()), (1, 10, "0.5".into()));
    assert_eq!((bob.totals.calls, bob.totals.input_tokens, bob.totals.cost.to_string()), (1, 20, "0.25".into()));
    assert!(store.call("bob", &a.id).unwrap().is_none(), "bob cannot read alice's call");
    assert!(store.call("alice", &b.id).unwrap().is_none());
    assert!(store.call("al", &a.id).unwrap().is_none());
    assert!(store.session("al", &shared_session).unwrap().is_none());
    assert!(store.session("carol", &shared_session).unwrap().is_none());
    assert!(store.agents("carol").unwrap().is_empty());
    assert_eq!(store.agents("al").unwrap()[0].totals.calls, 1);
    assert_eq!(store.agents("alice").unwrap()[0].totals.calls, 1);
    assert_eq!(ids(&store.sessions("alice", "bot", None, 10, None).unwrap().items), vec![shared_session.clone()]);
    let alice_calls = store.session_calls("alice", &shared_session, 10, None).unwrap().items;
    assert_eq!(alice_calls.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&a.id]);
    assert_eq!(store.users().unwrap(), vec!["al", "alice", "bob"]);
}

#[test]
fn aggregates_survive_a_reopen_and_keep_counting() {
    let dir = tempfile::tempdir().unwrap();
    let first = priced(call("alice", "bot", &sid(1), "production", &at(1)), 10, 1, "0.001");
    {
        let (_store, mut w) = open(dir.path());
        put(&mut w, std::slice::from_ref(&first));
        // A reader in another process sees it while the writer holds the store.
        let ro = Store::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.session("alice", &sid(1)).unwrap().unwrap().totals.calls, 1);
        assert_eq!(ro.agents("alice").unwrap()[0].sessions, 1);
    }
    let (store, mut w) = open(dir.path());
    put(&mut w, &[priced(call("alice", "bot", &sid(1), "production", &at(2)), 5, 1, "0.002")]);
    put(&mut w, &[call("alice", "bot", &sid(2), "staging", &at(3))]);
    let s = store.session("alice", &sid(1)).unwrap().unwrap();
    assert_eq!((s.totals.calls, s.totals.input_tokens, s.totals.cost.to_string()), (2, 15, "0.003".into()));
    let a = &store.agents("alice").unwrap()[0];
    assert_eq!((a.sessions, a.totals.calls), (2, 3));
    assert_eq!(store.calls().unwrap().len(), 3);
}
