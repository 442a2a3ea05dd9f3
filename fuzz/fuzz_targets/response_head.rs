//! Response head parsing, as the connection reads an upstream's answer: never panics, a HEAD
//! request only ever removes the body, and a head that parses whole is merely incomplete (never
//! an error) when only a prefix of it has arrived.
#![no_main]

use kurral_proxy::http::head::{parse_response_head, Framing, ResponseHead};
use libfuzzer_sys::fuzz_target;

/// The connection's own limit (`MAX_RESPONSE_HEAD` in server::conn).
const MAX: usize = 64 * 1024;

fn check(data: &[u8], h: &ResponseHead, request_was_head: bool) {
    assert!(h.len <= data.len() && h.len <= MAX);
    // RFC 9110 15: valid codes are 100 to 599; the proxy writes the number back downstream.
    assert!((100..=599).contains(&h.status), "status {} accepted", h.status);
    for f in &h.headers {
        assert!(f.name.end as usize <= h.len && f.value.end as usize <= h.len);
        assert!(!f.name.is_empty());
    }
    let bodiless = request_was_head || (100..200).contains(&h.status) || h.status == 204 || h.status == 304;
    assert_eq!(bodiless, h.framing == Framing::Empty, "{:?}", h.framing);
    if h.framing == Framing::Close {
        assert!(h.close);
    }
}

fuzz_target!(|data: &[u8]| {
    let get = parse_response_head(data, MAX, false);
    let head = parse_response_head(data, MAX, true);
    match (&get, &head) {
        (Ok(Some(g)), Ok(Some(h))) => {
            check(data, g, false);
            check(data, h, true);
            assert_eq!((g.status, g.len, &g.headers, g.reason), (h.status, h.len, &h.headers, h.reason));
            // The head alone parses the same; any prefix of it is only incomplete.
            let again = parse_response_head(&data[..g.len], MAX, false).unwrap().unwrap();
            assert_eq!((again.len, again.framing, again.close), (g.len, g.framing, g.close));
            for cut in [g.len - 1, g.len / 2] {
                assert!(matches!(parse_response_head(&data[..cut], MAX, false), Ok(None)), "prefix {cut} of {}", g.len);
            }
        }
        // A HEAD request only skips the framing checks, so it fails only where the other fails.
        (Err(_), Ok(Some(h))) => check(data, h, true),
        (Ok(None), Ok(None)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("request_was_head changed more than framing: {a:?} vs {b:?}"),
    }
});
