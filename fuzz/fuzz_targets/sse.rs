//! SSE framing and the include_usage response filter: never panic, and give the same events and
//! the same client stream however the body is split (the first byte picks the split point).
#![no_main]

use kurral_proxy::usage::include_usage::UsageChunkFilter;
use kurral_proxy::usage::sse::{parse_event, SseSplitter};
use libfuzzer_sys::fuzz_target;

fn events(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
    // A small event cap, so the oversized-event path is exercised too.
    let mut s = SseSplitter::new(64);
    let mut out = Vec::new();
    for p in pieces {
        s.feed(p, &mut |e| out.push(e.to_vec()));
    }
    s.finish(&mut |e| out.push(e.to_vec()));
    out
}

fn filtered(pieces: &[&[u8]]) -> Vec<u8> {
    let mut f = UsageChunkFilter::default();
    let mut out = Vec::new();
    for p in pieces {
        f.feed(p, &mut out);
    }
    f.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else { return };
    let split = (split as usize).min(body.len());
    let (a, b) = body.split_at(split);
    let whole = events(&[body]);
    assert_eq!(whole, events(&[a, b]));
    for e in &whole {
        assert!(e.len() <= 64);
        let _ = parse_event(e);
    }
    let out = filtered(&[body]);
    assert_eq!(out, filtered(&[a, b]));
    assert!(out.len() <= body.len(), "the filter only removes");
});
