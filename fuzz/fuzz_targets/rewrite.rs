//! Head rewriting, on heads the parsers accepted. The input is a request head, then (after its
//! end) an upstream response head; the first byte holds the flags. Upstream, no Kurral field and
//! no Kurral key in `x-api-key` ever leaves, and the head parses again with the same framing.
//! Downstream, the only `x-kurral-*` fields are the two ids the proxy adds itself.
#![no_main]

use kurral_proxy::http::head::{
    parse_request_head, parse_response_head, trim, Framing, HeadError, HeadLimits, MAX_HEADERS,
};
use kurral_proxy::http::rewrite::{
    downstream_response_head, upstream_request_head, BodyFraming, ResponseAdditions, KURRAL_KEY_PREFIX,
};
use kurral_proxy::provider::{route, Route};
use libfuzzer_sys::fuzz_target;

const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 8192, max_target_bytes: 2048 };
const LOOSE: HeadLimits = HeadLimits { max_head_bytes: 1 << 20, max_target_bytes: 1 << 20 };

/// The (name, value) of every field line of a head the proxy wrote, whether it parses or not.
fn field_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let fields = &head[..head.len() - 4]; // without the final CRLF CRLF
    fields.split(|&b| b == b'\n').skip(1).map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':').expect("a field line has a colon");
        (&line[..colon], &line[colon + 2..])
    })
}

fn fields(head: &[u8]) -> usize {
    field_lines(head).count()
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    let mut response = input;

    if let Ok(Some(req)) = parse_request_head(input, LIMITS) {
        response = &input[req.len..];
        let target = match route(req.method(input), req.target(input)) {
            Route::Proxy { upstream_target, .. } => upstream_target,
            _ => b"/v1/x",
        };
        let out = upstream_request_head(input, &req, target, "upstream.test");
        for (name, value) in field_lines(&out) {
            assert!(!starts_with_ignore_case(name, b"x-kurral-"), "{}", String::from_utf8_lossy(&out));
            if name.eq_ignore_ascii_case(b"x-api-key") {
                assert!(!trim(value).starts_with(KURRAL_KEY_PREFIX), "{}", String::from_utf8_lossy(&out));
            }
        }
        match parse_request_head(&out, LOOSE) {
            Ok(Some(up)) => {
                assert_eq!(up.len, out.len());
                assert_eq!(up.framing, req.framing);
                assert_eq!(up.target(&out), target);
                assert_eq!(up.method(&out), req.method(input));
                assert_eq!(up.header(&out, "host"), Some(&b"upstream.test"[..]));
            }
            // The proxy adds `accept-encoding` to a request that may already have MAX_HEADERS
            // fields: only its own parser's limit, not the upstream's, refuses that.
            Err(HeadError::TooManyHeaders) if fields(&out) > MAX_HEADERS => {}
            other => panic!("upstream head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
        }
    }

    let request_was_head = flags & 1 != 0;
    if let Ok(Some(resp)) = parse_response_head(response, 64 * 1024, request_was_head) {
        let body = match flags & 12 {
            4 => BodyFraming::Decoded,
            8 => BodyFraming::Rechunked,
            _ => BodyFraming::AsUpstream,
        };
        let add = ResponseAdditions { session_id: "s-1", request_id: "r-1", close: flags & 2 != 0, body, findings: None };
        let out = downstream_response_head(response, &resp, &add, 0);
        let ours: Vec<_> = field_lines(&out).filter(|(name, _)| starts_with_ignore_case(name, b"x-kurral-")).collect();
        assert_eq!(ours, [(&b"x-kurral-session-id"[..], &b"s-1"[..]), (b"x-kurral-request-id", b"r-1")]);
        match parse_response_head(&out, 1 << 20, request_was_head) {
            Ok(Some(down)) => {
                assert_eq!(down.len, out.len());
                assert_eq!(down.status, resp.status);
                assert_eq!(down.headers.len(), fields(&out));
                if add.close {
                    assert!(down.close);
                }
                if body == BodyFraming::Rechunked && !request_was_head && resp.framing != Framing::Empty {
                    assert_eq!(down.framing, Framing::Chunked);
                }
            }
            // The two ids can take an upstream head over MAX_HEADERS: the proxy's own limit.
            Err(HeadError::TooManyHeaders) if fields(&out) > MAX_HEADERS => {}
            other => panic!("downstream head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
        }
    }
});
