//! Byte-level reading of a JSON object's top-level members, with their exact offsets.
//!
//! The include_usage rewrite must change one member of a request or a stream chunk and leave
//! every other byte as the client or the provider wrote it, so it works on offsets rather than
//! on a parsed and re-serialized value. Also home to the cheap prefilter test the scanner runs
//! before parsing an event.

use std::ops::Range;

/// One `"key": value` member of an object: the key's span (quotes included) and the value's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

impl Member {
    /// Whether the key, unescaped, is `name` (keys with escapes never match: none of the keys
    /// the proxy looks for has one).
    pub fn is(&self, buf: &[u8], name: &str) -> bool {
        buf[self.key.start + 1..self.key.end - 1] == *name.as_bytes()
    }
}

/// The object's members and the offset just after its opening brace, or None when `buf` (after
/// leading whitespace) is not one complete object.
pub fn object_members(buf: &[u8]) -> Option<(usize, Vec<Member>)> {
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let open = i;
    let mut members = Vec::new();
    i = skip_ws(buf, i);
    if buf.get(i) == Some(&b'}') {
        return (skip_ws(buf, i + 1) == buf.len()).then_some((open, members));
    }
    loop {
        let key_start = i;
        if buf.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(buf, i)?;
        i = skip_ws(buf, key_end);
        if buf.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(buf, i + 1);
        let value_end = skip_value(buf, i)?;
        members.push(Member { key: key_start..key_end, value: i..value_end });
        i = skip_ws(buf, value_end);
        match buf.get(i) {
            Some(b',') => i = skip_ws(buf, i + 1),
            Some(b'}') => return (skip_ws(buf, i + 1) == buf.len()).then_some((open, members)),
            _ => return None,
        }
    }
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while matches!(buf.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// `buf[i]` is a quote; returns the offset after the closing quote.
fn skip_string(buf: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', &buf[j..])?;
        if buf[k] == b'\\' {
            j = k + 2;
            if j > buf.len() {
                return None;
            }
        } else {
            return Some(k + 1);
        }
    }
}

/// Offset after the value starting at `buf[i]`; nested values are skipped by bracket depth.
fn skip_value(buf: &[u8], i: usize) -> Option<usize> {
    match *buf.get(i)? {
        b'"' => skip_string(buf, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < buf.len() {
                match buf[j] {
                    b'"' => {
                        j = skip_string(buf, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let len = buf[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                .unwrap_or(buf.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

/// Whether `"key"` appears followed (after optional whitespace and the colon) by an object.
/// A cheap test run before parsing: it may say yes for a key nested anywhere, never no for a
/// key that is there. A quoted key cannot appear inside a JSON string (its quotes would be
/// escaped), so text content never matches.
pub fn has_object_member(data: &[u8], quoted_key: &[u8]) -> bool {
    memchr::memmem::find_iter(data, quoted_key).any(|at| {
        let i = skip_ws(data, at + quoted_key.len());
        data.get(i) == Some(&b':') && data.get(skip_ws(data, i + 1)) == Some(&b'{')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(buf: &[u8]) -> Vec<(String, String)> {
        let (_, m) = object_members(buf).unwrap();
        m.iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&buf[m.key.clone()]).into_owned(),
                    String::from_utf8_lossy(&buf[m.value.clone()]).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn members_with_their_exact_spans() {
        let buf = br#" { "a" : 1 , "b":{"x":[1,"}]"]},"c\"d":"s\\",  "e":null } "#;
        let got = names(buf);
        assert_eq!(
            got,
            vec![
                ("\"a\"".into(), "1".into()),
                ("\"b\"".into(), r#"{"x":[1,"}]"]}"#.into()),
                ("\"c\\\"d\"".into(), r#""s\\""#.into()),
                ("\"e\"".into(), "null".into())
            ]
        );
        assert_eq!(names(b"{}"), vec![]);
    }

    #[test]
    fn incomplete_or_trailing_input_is_refused() {
        for bad in [&b""[..], b"[1]", b"{\"a\":1", b"{\"a\":1}x", b"{\"a\" 1}", b"{\"a\":\"x}", b"{a:1}", b"{\"a\":}"] {
            assert!(object_members(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn prefilter_finds_object_values_only() {
        assert!(has_object_member(br#"{"usage" : {"a":1}}"#, b"\"usage\""));
        assert!(!has_object_member(br#"{"usage":null}"#, b"\"usage\""));
        assert!(!has_object_member(br#"{"content":"say \"usage\": {"}"#, b"\"usage\""));
    }
}
