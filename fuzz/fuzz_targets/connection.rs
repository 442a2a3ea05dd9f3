//! The whole connection state machine over an in-memory transport: one client connection
//! (request heads, bodies, pipelining, anything) against upstreams that answer with arbitrary
//! bytes, each side delivered in pieces of a size the input chooses.
//!
//! Input: `[client piece][reply piece][client length: u16 LE][client bytes][upstream reply]`.
//! `KURRAL_KEY` in the client bytes is replaced by a valid Kurral key.
//!
//! Checks: nothing panics; whatever reaches an upstream is a request head the proxy's own strict
//! parser accepts, with no Kurral header or key in it and no ambiguous framing; nothing reaches an
//! upstream when the client's first request head is refused; everything the client receives
//! starts as an HTTP/1.x response.
#![no_main]

use std::cell::RefCell;

use kurral_proxy::auth::KeyStore;
use kurral_proxy::config::Config;
use kurral_proxy::http::head::{parse_request_head, HeadLimits};
use kurral_proxy::server::memory::MemoryHarness;
use libfuzzer_sys::fuzz_target;

const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 32 * 1024, max_target_bytes: 8 * 1024 };

struct Setup {
    harness: MemoryHarness,
    key: String,
}

thread_local! {
    static SETUP: RefCell<Setup> = RefCell::new(setup());
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!("kurral-fuzz-connection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = KeyStore::new(&dir);
    let (key, _) = store.create("fuzz").expect("a key");
    let mut config = Config::for_data_dir(&dir);
    config.limits.requests_per_minute = 0;
    config.limits.max_concurrent = 0;
    let harness = MemoryHarness::new(config, store.load().expect("key table")).expect("harness");
    Setup { harness, key }
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (client_piece, reply_piece) = (usize::from(data[0]) + 1, usize::from(data[1]) * 4 + 1);
    let client_len = usize::from(u16::from_le_bytes([data[2], data[3]])).min(data.len() - 4);
    let (client, reply) = data[4..].split_at(client_len);
    SETUP.with(|s| {
        let mut s = s.borrow_mut();
        let client = replace(client, b"KURRAL_KEY", s.key.as_bytes());
        let out = s.harness.exchange(&client, client_piece, reply, reply_piece);

        if !out.client.is_empty() {
            assert!(out.client.starts_with(b"HTTP/1."), "the client gets an HTTP response");
        }
        let first_head_ok = matches!(parse_request_head(&client, LIMITS), Ok(Some(_)));
        for sent in out.upstream.iter().filter(|s| !s.is_empty()) {
            assert!(first_head_ok, "a request reached an upstream although the client's first head was refused");
            let head = parse_request_head(sent, LIMITS)
                .unwrap_or_else(|e| panic!("the proxy sent upstream a head its own parser refuses: {e:?}"))
                .expect("the proxy sent upstream an incomplete head");
            let text = String::from_utf8_lossy(&sent[..head.len]).to_ascii_lowercase();
            assert!(!text.contains("\nx-kurral-"), "a Kurral header was forwarded");
            // The legacy `X-API-Key` carries a Kurral key when its value starts `kr_`: never forwarded.
            assert!(!text.contains("\nx-api-key: kr_") && !text.contains("\nx-api-key:kr_"), "the Kurral key was forwarded");
            assert!(
                !(text.contains("\ncontent-length:") && text.contains("\ntransfer-encoding:")),
                "ambiguous framing was forwarded"
            );
        }
    });
});
