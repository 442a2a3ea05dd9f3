//! Canary: provider keys used in a run are searched for everywhere the proxy writes (every file
//! of the data dir, its log at debug level, and every record as `calls list --json` prints it),
//! raw, URL-encoded and base64-encoded: zero hits. The Kurral key it issued is on stdout once
//! (as documented) and nowhere else: the key file holds its hash.
//!
//! Runs the release binary as a separate process, as an operator would, against the in-process
//! mock upstream.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::client::{request, send};
use common::mock_upstream::MockUpstream;

const OPENAI: &str = "sk-proj-CanaryOpenAi0123456789abcdefXYZ";
const ANTHROPIC: &str = "sk-ant-api03-CanaryAnthropic0123456789abcXYZ";
const GOOGLE: &str = "AIzaSyCanaryGoogle0123456789abcdefXYZ";

/// Base64 (standard alphabet, padded) without a dependency: enough to spell a canary.
fn base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (u32::from(c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The forms a leaked key could take. Base64 of a key may start at any of three alignments, so
/// the middle of each encoding (free of the alignment's first and last characters) is searched.
fn forms(secret: &str) -> Vec<String> {
    let mut v = vec![secret.to_string(), secret.replace('-', "%2D"), format!("Bearer%20{secret}")];
    for skip in 0..3 {
        let enc = base64(&secret[skip..]);
        v.push(enc[4..enc.len() - 4].to_string());
    }
    v
}

/// One call: path and query, extra fields, body.
type Canary<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_provider_key_anywhere_and_kurral_keys_only_as_hashes() {
    let bin = env!("CARGO_BIN_EXE_kurral-proxy");
    let mock = MockUpstream::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_path = dir.path().join("proxy.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--requests-per-minute", "0"])
        .args(["--max-concurrent", "0", "--data-dir"])
        .arg(&data)
        .args(["--upstream", &format!("openai={}", mock.url())])
        .args(["--upstream", &format!("anthropic={}", mock.url())])
        .args(["--upstream", &format!("google={}", mock.url())])
        .env("KURRAL_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("the release binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut key = String::new();
    stdout.read_line(&mut key).unwrap();
    let key = key.trim().to_string();
    assert!(key.starts_with("kr_live_"), "first start prints the key: {key:?}");
    // The listening address is in the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr: SocketAddr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(at) = text.find("addr=") {
            let rest = &text[at + 5..];
            break rest[..rest.find(char::is_whitespace).unwrap()].parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no listening line in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };

    let bearer_openai = format!("Bearer {OPENAI}");
    let bearer_anthropic = format!("Bearer {ANTHROPIC}");
    let calls: Vec<Canary<'_>> = vec![
        (
            "/api/proxy/openai/v1/chat/completions".into(),
            vec![("Authorization", &bearer_openai)],
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "/api/proxy/openai/v1/responses".into(),
            vec![("Authorization", &bearer_openai), ("x-mock-status", "401")],
            r#"{"model":"gpt-4o","input":"hi"}"#,
        ),
        (
            "/api/proxy/anthropic/v1/messages".into(),
            vec![("x-api-key", ANTHROPIC)],
            r#"{"model":"claude-sonnet-4-5","max_tokens":5,"stream":true,"messages":[]}"#,
        ),
        (
            "/api/proxy/anthropic/v1/messages".into(),
            vec![("Authorization", &bearer_anthropic)],
            r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}"#,
        ),
        (
            "/api/proxy/google/v1beta/models/gemini-2.5-flash:generateContent".into(),
            vec![("x-goog-api-key", GOOGLE)],
            r#"{"contents":[]}"#,
        ),
        (
            format!("/api/proxy/google/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={GOOGLE}"),
            vec![],
            r#"{"contents":[]}"#,
        ),
        (
            format!("/api/proxy/google/v1beta/models/gemini-2.5-flash:generateContent?key={GOOGLE}"),
            vec![("x-mock-status", "500")],
            r#"{"contents":[]}"#,
        ),
    ];
    for (path, extra, body) in &calls {
        let mut fields = vec![
            ("X-Kurral-API-Key", key.as_str()),
            ("x-kurral-agent", "canary-agent"),
            ("x-kurral-retention", "full"),
        ];
        fields.extend(extra.iter().copied());
        let resp = send(addr, &request("POST", path, &fields, body.as_bytes()));
        assert!(resp.status == 200 || resp.status >= 400, "{path}: {}", resp.status);
    }
    // An unknown Kurral key in the legacy header, and a bad one: refused, and not logged either.
    let wrong = "kr_live_CanaryWrongKey0123456789";
    let resp = send(
        addr,
        &request(
            "POST",
            "/api/proxy/openai/v1/chat/completions",
            &[("X-API-Key", wrong), ("x-kurral-agent", "canary-agent")],
            b"{}",
        ),
    );
    assert_eq!(resp.status, 401);

    unsafe_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains("kr_live_"), "the key is printed once, at creation");

    let listed = Command::new(bin).args(["calls", "list", "--json", "--data-dir"]).arg(&data).output().unwrap();
    assert!(listed.status.success());
    let records = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(records.lines().count(), calls.len(), "every authenticated call recorded");
    assert!(records.contains("\"retention\":\"full\""));

    let mut places =
        vec![("log".to_string(), std::fs::read(&log_path).unwrap()), ("records".to_string(), records.into_bytes())];
    places.extend(common::files_under(&data));
    let mut hits = Vec::new();
    for secret in [OPENAI, ANTHROPIC, GOOGLE, key.as_str(), wrong] {
        for form in forms(secret) {
            for (place, bytes) in &places {
                if contains(bytes, &form) {
                    hits.push(format!("{form} in {place}"));
                }
            }
        }
    }
    assert!(hits.is_empty(), "secrets found:\n{}", hits.join("\n"));
}

fn unsafe_sigterm(pid: u32) {
    // SAFETY: kill(2) with a pid this test spawned and still owns (not yet waited on).
    let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0, "SIGTERM sent");
}
