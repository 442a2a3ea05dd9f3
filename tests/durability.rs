//! Durability of the capture store under `--durability sync`, with the release binary as a
//! process: load from several clients, then `kill -9` in the middle of it. On restart, every call
//! whose response had completed a moment before the kill (time for its batch to be written and
//! fsynced) is in the store, and no call is stored twice.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::client::{request, Conn};
use common::mock_upstream::MockUpstream;

/// A completed call's record is batched and fsynced well within this (the writer takes what is
/// queued at once; an fsync takes milliseconds).
const SETTLE: Duration = Duration::from_millis(500);

fn start(bin: &str, data: &std::path::Path, log: &std::path::Path, mock: &MockUpstream) -> (Child, String, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2", "--durability", "sync"])
        .args(["--requests-per-minute", "0", "--max-concurrent", "0", "--data-dir"])
        .arg(data)
        .args(["--upstream", &format!("openai={}", mock.url())])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the release binary starts");
    let mut key = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("addr=") {
            let rest = &text[at + 5..];
            break rest[..rest.find(char::is_whitespace).unwrap()].parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no listening line in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    (child, key.trim().to_string(), addr)
}

#[test]
fn sync_durability_keeps_every_completed_call_through_kill_9() {
    let bin = env!("CARGO_BIN_EXE_kurral-proxy");
    let mock = MockUpstream::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, key, addr) = start(bin, &data, &dir.path().join("proxy.log"), &mock);

    // (request id, when its response completed)
    let completed = Mutex::new(Vec::<(String, Instant)>::new());
    let stop = AtomicBool::new(false);
    // Clients cut off by the kill panic inside the test client; those panics are expected.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let killed_at = std::thread::scope(|s| {
        for t in 0..4 {
            let (completed, stop, key) = (&completed, &stop, &key);
            s.spawn(move || {
                let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
                let fields = [
                    ("X-Kurral-API-Key", key.as_str()),
                    ("x-kurral-agent", "durable-agent"),
                    ("Authorization", "Bearer sk-durable"),
                ];
                let session = format!("00000000-0000-4000-8000-{t:012}");
                let mut fields = fields.to_vec();
                fields.push(("x-kurral-session-id", &session));
                let raw = request("POST", "/api/proxy/openai/v1/chat/completions", &fields, body);
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut conn) = std::panic::catch_unwind(|| Conn::open(addr)) else { break };
                    conn.send(&raw);
                    let Ok(resp) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.response())) else {
                        break;
                    };
                    if resp.status == 200 && resp.complete {
                        let id = resp.header("x-kurral-request-id").unwrap().to_string();
                        completed.lock().unwrap().push((id, Instant::now()));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: kill(2) on the child this test spawned and has not waited on.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) }, 0);
        let at = Instant::now();
        stop.store(true, Ordering::Relaxed);
        at
    });
    let _ = child.wait();
    std::panic::set_hook(default_hook);

    let listed = Command::new(bin).args(["calls", "list", "--json", "--data-dir"]).arg(&data).output().unwrap();
    assert!(listed.status.success(), "the store opens after kill -9: {}", String::from_utf8_lossy(&listed.stderr));
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let stored: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(stored.len(), ids.len(), "a call stored twice");

    let completed = completed.into_inner().unwrap();
    let settled: Vec<&str> =
        completed.iter().filter(|(_, at)| *at + SETTLE <= killed_at).map(|(id, _)| id.as_str()).collect();
    eprintln!(
        "durability: {} calls completed, {} of them {SETTLE:?} before kill -9; {} records after restart",
        completed.len(),
        settled.len(),
        ids.len()
    );
    assert!(settled.len() >= 50, "only {} calls completed before the kill: the load did not run", settled.len());
    let missing: Vec<&&str> = settled.iter().filter(|id| !stored.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} calls completed {SETTLE:?} before kill -9 are missing, e.g. {:?}",
        missing.len(),
        settled.len(),
        &missing[..missing.len().min(3)]
    );
    // Nothing is stored that the upstream did not serve.
    assert!(ids.len() <= mock.received().len());
}
