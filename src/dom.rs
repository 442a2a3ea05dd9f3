//! Parsing a JSON body into simd-json's borrowed DOM, with each thread's parser buffers kept
//! from one parse to the next.
//!
//! `simd_json::to_borrowed_value` allocates four buffers per parse (a padded copy of the input,
//! the structural index, string scratch, the parser's stack) and grows them as it goes. Request
//! inspection and response reading parse on every call, so the worker keeps one set and reuses
//! it. Bodies past `REUSE_MAX` get their own buffers, so that one large body does not leave its
//! buffers held by the thread.
//!
//! Input nested deeper than `MAX_DEPTH` is refused before it is parsed: building the DOM, walking
//! it and dropping it each recurse once per level, and a body of a few hundred KB of `[` would
//! overflow a worker's stack and abort the process. A refused body is relayed as usual; it is
//! only not inspected, like any body that is not JSON.

use std::cell::RefCell;

use simd_json::{BorrowedValue, Buffers, ErrorType};

/// Deepest nesting of arrays and objects parsed (serde_json's own limit is the same).
pub const MAX_DEPTH: usize = 128;

/// Largest input parsed with the thread's kept buffers.
const REUSE_MAX: usize = 64 * 1024;

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::new(REUSE_MAX / 4));
}

/// Parses `bytes` in place (simd-json unescapes strings into the input) into a DOM borrowing it.
pub fn parse(bytes: &mut [u8]) -> simd_json::Result<BorrowedValue<'_>> {
    if too_deep(bytes) {
        return Err(simd_json::Error::generic(ErrorType::Serde(format!("nested deeper than {MAX_DEPTH} levels"))));
    }
    if bytes.len() > REUSE_MAX {
        return simd_json::to_borrowed_value(bytes);
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => simd_json::value::borrowed::to_value_with_buffers(bytes, &mut buffers),
        // Only a parse started while another is running on this thread (none does today).
        Err(_) => simd_json::to_borrowed_value(bytes),
    })
}

/// Whether arrays and objects in `bytes` nest deeper than `MAX_DEPTH` (brackets inside strings
/// do not count). Input that is not JSON may pass; the parser refuses it.
fn too_deep(bytes: &[u8]) -> bool {
    // Without more opening brackets than the limit nothing can nest past it: the common case,
    // counted with SIMD and no walk.
    if memchr::memchr2_iter(b'[', b'{', bytes).count() <= MAX_DEPTH {
        return false;
    }
    let (mut depth, mut i) = (0usize, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // To the closing quote, over escapes: a string's text is most of a body.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                        Some(k) if bytes[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k + 1;
                            break;
                        }
                        None => return false,
                    }
                    if i >= bytes.len() {
                        return false;
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        // As serde_json and the providers' parsers read it. Past 32 members an object is a hash
        // map rather than a list: the same rule holds there.
        let wide: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        for body in [r#"{"model":"a","x":1,"model":"b"}"#.to_string(), format!(r#"{{"model":"a",{wide}"model":"b"}}"#)]
        {
            let mut bytes = body.into_bytes();
            let v = parse(&mut bytes).unwrap();
            assert_eq!(v.get("model").and_then(|m| m.as_str()), Some("b"));
            let reread: serde_json::Value = serde_json::to_value(&v).unwrap();
            assert_eq!(reread["model"], "b");
        }
    }

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

    /// `[` nested `n` deep around `inner`.
    fn nested(n: usize, inner: &str) -> Vec<u8> {
        format!("{}{inner}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
    }

    #[test]
    fn nesting_past_the_limit_is_refused_before_it_is_parsed() {
        assert!(parse(&mut nested(MAX_DEPTH, "1")).is_ok());
        assert!(parse(&mut nested(MAX_DEPTH + 1, "1")).is_err());
        let mut objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH + 1), "}".repeat(MAX_DEPTH + 1)).into_bytes();
        assert!(parse(&mut objects).is_err());
        // Many brackets side by side are not deep.
        let mut wide = format!("[{}]", vec!["[1]"; 10 * MAX_DEPTH].join(",")).into_bytes();
        assert_eq!(parse(&mut wide).unwrap().as_array().map(Vec::len), Some(10 * MAX_DEPTH));
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!(r#"["{}\"{}", "\\", {{"k": "[[["}}]"#, "[".repeat(500), "{".repeat(500));
        assert!(parse(&mut text.into_bytes()).is_ok());
        // A body that would overflow the stack of a worker thread (2 MiB) is refused, not a crash.
        let refused = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| parse(&mut nested(1_000_000, "1")).is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(refused);
    }
}
