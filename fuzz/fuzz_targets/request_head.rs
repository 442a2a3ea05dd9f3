//! Request head parsing and rewriting: never panics, and what it accepts is self-consistent.
#![no_main]

use kurral_proxy::http::head::{parse_request_head, HeadLimits};
use kurral_proxy::http::rewrite::upstream_request_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits { max_head_bytes: 8192, max_target_bytes: 2048 };
    if let Ok(Some(head)) = parse_request_head(data, limits) {
        assert!(head.len <= data.len());
        // The connection parses on every read: a prefix of an accepted head is only incomplete.
        assert!(matches!(parse_request_head(&data[..head.len - 1], limits), Ok(None)));
        let out = upstream_request_head(data, &head, b"/v1/x", "upstream.test");
        // The rewritten head must itself parse, with the same framing.
        let again = parse_request_head(&out, HeadLimits { max_head_bytes: 1 << 20, max_target_bytes: 1 << 20 });
        if let Ok(Some(h2)) = again {
            assert_eq!(h2.framing, head.framing);
        }
    }
});
