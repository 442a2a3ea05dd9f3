//! Body framing: for each framing, the decoder never consumes more than it is given, gives one
//! answer however its input is split, and a fixed-length or close-delimited body is the input
//! itself. The first byte picks the framing (low 2 bits) and the split point (the rest); for
//! Content-Length the second byte is the length.
#![no_main]

use kurral_proxy::http::body::{BodyDecoder, BodyError};
use kurral_proxy::http::head::Framing;
use libfuzzer_sys::fuzz_target;

const MAX_BODY: u64 = 1 << 20;

/// Feeds `parts` in order; returns (bytes consumed or the error, payload, done, result at EOF).
fn run(framing: Framing, parts: &[&[u8]]) -> (Result<usize, BodyError>, Vec<u8>, bool, Result<(), BodyError>) {
    let mut d = BodyDecoder::new(framing, MAX_BODY);
    let mut data = Vec::new();
    let mut total = Ok(0);
    for part in parts {
        let r = d.decode(part, &mut |p| data.extend_from_slice(p));
        if let Ok(n) = r {
            assert!(n <= part.len(), "consumed {n} of {}", part.len());
            // Until the body is complete, the whole input is consumed.
            assert!(n == part.len() || d.is_done(), "stopped at {n} of {} before the end", part.len());
        }
        total = match (total, r) {
            (Ok(a), Ok(b)) => Ok(a + b),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if total.is_err() {
            break;
        }
    }
    let done = d.is_done();
    let eof = d.finish_at_eof();
    if eof.is_ok() {
        assert!(d.is_done());
        assert_eq!(d.decode(b"more", &mut |_| panic!("data after the end")), Ok(0));
    }
    (total, data, done, eof)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (framing, input) = match sel & 3 {
        0 => (Framing::Empty, rest),
        1 => match rest.split_first() {
            Some((&n, input)) => (Framing::Length(u64::from(n)), input),
            None => return,
        },
        2 => (Framing::Chunked, rest),
        _ => (Framing::Close, rest),
    };
    let split = (usize::from(sel >> 2) * input.len()) / 63;
    let (a, b) = input.split_at(split);

    let whole = run(framing, &[input]);
    let parts = run(framing, &[a, b]);
    let bytes = run(framing, &input.chunks(1).collect::<Vec<_>>());
    assert_eq!(whole, parts, "split at {split}");
    assert_eq!(whole, bytes, "byte by byte");

    let (res, payload, done, _) = whole;
    match framing {
        Framing::Empty | Framing::Length(_) => {
            let len = match framing {
                Framing::Length(n) => n as usize,
                _ => 0,
            };
            let n = len.min(input.len());
            assert_eq!(res, Ok(n));
            assert_eq!(payload, &input[..n]);
            assert_eq!(done, n == len);
        }
        Framing::Close => {
            assert_eq!(res, Ok(input.len()));
            assert_eq!(payload, input);
            assert!(!done);
        }
        Framing::Chunked => {
            // The payload is part of what was consumed; a complete body adds at least `0\r\n\r\n`.
            if let Ok(n) = res {
                assert!(payload.len() + if done { 5 } else { 0 } <= n);
            }
        }
    }
});
