//! The chunked decoder: never panics, never consumes past the end of the body, and gives the
//! same result however the input is split (the first byte picks the split point).
#![no_main]

use kurral_proxy::http::chunked::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let split = (split as usize).min(input.len());

    let mut whole = ChunkedDecoder::new(1 << 20);
    let mut whole_data = Vec::new();
    let whole_res = whole.decode(input, &mut |d| whole_data.extend_from_slice(d));

    let mut parts = ChunkedDecoder::new(1 << 20);
    let mut parts_data = Vec::new();
    let first = parts.decode(&input[..split], &mut |d| parts_data.extend_from_slice(d));
    let parts_res = match first {
        Ok(n) if parts.is_done() => Ok(n),
        Ok(n) => parts.decode(&input[split..], &mut |d| parts_data.extend_from_slice(d)).map(|m| n + m),
        Err(e) => Err(e),
    };
    match (whole_res, parts_res) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(whole_data, parts_data);
            assert_eq!(whole.is_done(), parts.is_done());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("split changed the result: {a:?} vs {b:?}"),
    }
});
