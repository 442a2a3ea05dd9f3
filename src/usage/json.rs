//! Byte-level reading of a JSON object's top-level members, with their exact offsets.
//!
//! The include_usage rewrite must change one member of a request or a stream chunk and leave
//! every other byte as the client or the provider wrote it, so it works on offsets rather than
//! on a parsed and re-serialized value. Also home to the scanner's prefilter (`Needle`), run on
//! every event before it is parsed, and to the reading of a cut JSON array (`array_items`).

use std::ops::Range;
use std::sync::OnceLock;

use memchr::memmem::Finder;

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

/// Whether, from `i` on, optional whitespace, a colon and an object's opening brace follow.
pub fn object_follows(data: &[u8], i: usize) -> bool {
    let i = skip_ws(data, i);
    data.get(i) == Some(&b':') && data.get(skip_ws(data, i + 1)) == Some(&b'{')
}

/// The spans of the complete items of a JSON array, up to where it is cut short (or ends).
/// Nothing when `buf` does not start (after whitespace) with `[`.
pub fn array_items(buf: &[u8]) -> Vec<Range<usize>> {
    let mut items = Vec::new();
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'[') {
        return items;
    }
    i = skip_ws(buf, i + 1);
    while let Some(end) = skip_value(buf, i) {
        // A scalar at the cut end may be incomplete; only a delimiter proves it whole.
        let next = skip_ws(buf, end);
        if next >= buf.len() && !matches!(buf[i], b'{' | b'[' | b'"') {
            break;
        }
        items.push(i..end);
        match buf.get(next) {
            Some(b',') => i = skip_ws(buf, next + 1),
            _ => break,
        }
    }
    items
}

/// A quoted key (or value) searched for in every event: the prefilter's test, its searcher built
/// once. A quoted key cannot appear inside a JSON string (its quotes would be escaped there), so
/// text content never matches; the test may say yes for a key nested anywhere, never no for one
/// that is there.
pub struct Needle {
    quoted: &'static [u8],
    finder: OnceLock<Finder<'static>>,
}

impl Needle {
    pub const fn new(quoted: &'static [u8]) -> Needle {
        Needle { quoted, finder: OnceLock::new() }
    }

    fn finder(&self) -> &Finder<'static> {
        self.finder.get_or_init(|| Finder::new(self.quoted))
    }

    pub fn in_(&self, data: &[u8]) -> bool {
        self.finder().find(data).is_some()
    }

    /// The needle followed (after optional whitespace and the colon) by an object, not `null`.
    pub fn with_object(&self, data: &[u8]) -> bool {
        let mut from = 0;
        while let Some(at) = self.finder().find(&data[from..]) {
            let after = from + at + self.quoted.len();
            if object_follows(data, after) {
                return true;
            }
            from = after;
        }
        false
    }
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
    fn array_items_up_to_a_cut() {
        let buf = b"[{\"a\": [1]}\r\n,{\"b\":\"]\"}\r\n,{\"c\":";
        let items: Vec<&[u8]> = array_items(buf).into_iter().map(|r| &buf[r]).collect();
        assert_eq!(items, vec![&b"{\"a\": [1]}"[..], b"{\"b\":\"]\"}"]);
        assert_eq!(array_items(b"[1, 2]").len(), 2);
        assert_eq!(array_items(b"[1, 2").len(), 1, "a number at the cut may be incomplete");
        assert!(array_items(b"{}").is_empty());
    }

    #[test]
    fn prefilter_finds_object_values_only() {
        static USAGE: Needle = Needle::new(b"\"usage\"");
        assert!(USAGE.with_object(br#"{"usage" : {"a":1}}"#));
        assert!(USAGE.with_object(br#"{"x":{"usage":null},"usage":{}}"#));
        assert!(!USAGE.with_object(br#"{"usage":null}"#));
        assert!(!USAGE.with_object(br#"{"content":"say \"usage\": {"}"#));
    }
}
