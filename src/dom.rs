//! Parsing a JSON body into simd-json's borrowed DOM, with each thread's parser buffers kept
//! from one parse to the next.
//!
//! `simd_json::to_borrowed_value` allocates four buffers per parse (a padded copy of the input,
//! the structural index, string scratch, the parser's stack) and grows them as it goes. Request
//! inspection and response reading parse on every call, so the worker keeps one set and reuses
//! it. Bodies past `REUSE_MAX` get their own buffers, so that one large body does not leave its
//! buffers held by the thread.

use std::cell::RefCell;

use simd_json::{BorrowedValue, Buffers};

/// Largest input parsed with the thread's kept buffers.
const REUSE_MAX: usize = 64 * 1024;

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::new(REUSE_MAX / 4));
}

/// Parses `bytes` in place (simd-json unescapes strings into the input) into a DOM borrowing it.
pub fn parse(bytes: &mut [u8]) -> simd_json::Result<BorrowedValue<'_>> {
    if bytes.len() > REUSE_MAX {
        return simd_json::to_borrowed_value(bytes);
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => simd_json::value::borrowed::to_value_with_buffers(bytes, &mut buffers),
        // Only a parse started while another is running on this thread (none does today).
        Err(_) => simd_json::to_borrowed_value(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    #[test]
    fn parses_reuse_buffers_and_large_or_bad_input_still_parses_or_fails() {
        for _ in 0..3 {
            let mut small = br#"{"a":"x\ny","b":[1,2,{"c":null}]}"#.to_vec();
            let v = parse(&mut small).unwrap();
            assert_eq!(v.get("a").and_then(|a| a.as_str()), Some("x\ny"));
            assert_eq!(v.get("b").and_then(|b| b.as_array()).map(Vec::len), Some(3));
        }
        let mut large = format!(r#"{{"s":"{}"}}"#, "z".repeat(REUSE_MAX)).into_bytes();
        assert_eq!(parse(&mut large).unwrap().get("s").and_then(|s| s.as_str()).map(str::len), Some(REUSE_MAX));
        assert!(parse(&mut b"{\"a\":".to_vec()).is_err());
        assert!(parse(&mut b"[1,2".to_vec()).is_err());
        let mut after_error = br#"[true]"#.to_vec();
        assert_eq!(parse(&mut after_error).unwrap().as_array().map(Vec::len), Some(1));
    }
}
