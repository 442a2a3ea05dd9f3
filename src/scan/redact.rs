//! Keeping detected secrets out of stored content.
//!
//! Each secret the scanner found in a call (in any turn of its conversation) is replaced by a
//! marker, `[REDACTED:openai_api_key]`, wherever a record would keep it: summaries, tool
//! arguments and results, and the whole bodies kept under retention `full`. A body holds text
//! JSON-escaped, so each secret is also searched in its escaped form (a private key's line
//! breaks are `\n` there).
//!
//! A streamed answer can split a secret across events; no single piece of the stored body then
//! matches it. `Redactor::body` says whether every secret the body should hold was found in it,
//! so the caller can withhold a body it could not clean.

use std::borrow::Cow;

use memchr::memmem;

use super::excerpt::marker;
use super::Kind;

#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// (kind, secret as found, secret JSON-escaped when that differs).
    secrets: Vec<(Kind, String, Option<String>)>,
}

impl Redactor {
    pub fn add(&mut self, kind: Kind, secret: &str) {
        if secret.is_empty() || self.secrets.iter().any(|(_, s, _)| s == secret) {
            return;
        }
        let escaped = serde_json::to_string(secret).expect("a string serializes");
        let escaped = &escaped[1..escaped.len() - 1];
        let escaped = (escaped != secret).then(|| escaped.to_string());
        self.secrets.push((kind, secret.to_string(), escaped));
        // Longest first: a secret containing another is replaced whole.
        self.secrets.sort_by_key(|(_, s, _)| std::cmp::Reverse(s.len()));
    }

    pub fn extend(&mut self, other: &Redactor) {
        for (kind, secret, _) in &other.secrets {
            self.add(*kind, secret);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for (kind, secret, _) in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), &marker(*kind)));
            }
        }
        out
    }

    /// A body as it went over the wire, with every secret replaced in its plain and its
    /// JSON-escaped forms. Returns the body and whether each of `expected` (secrets known to be
    /// in this body's text) was found and replaced.
    pub fn body(&self, body: &[u8], expected: &[&str]) -> (Vec<u8>, bool) {
        let mut out = body.to_vec();
        let mut missing: Vec<&str> = expected.to_vec();
        for (kind, secret, escaped) in &self.secrets {
            let forms = std::iter::once(secret.as_str()).chain(escaped.as_deref());
            for form in forms {
                if let Some(replaced) = replace_bytes(&out, form.as_bytes(), marker(*kind).as_bytes()) {
                    out = replaced;
                    missing.retain(|m| *m != secret);
                }
            }
        }
        // A secret also counts as handled when a longer one containing it was replaced.
        missing.retain(|m| memmem::find(&out, m.as_bytes()).is_some() || !self.inside_longer(m));
        (out, missing.is_empty())
    }

    fn inside_longer(&self, secret: &str) -> bool {
        self.secrets.iter().any(|(_, s, _)| s.len() > secret.len() && s.contains(secret))
    }

    /// The secrets, for a caller that must check a body holds none of them.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(|(_, s, _)| s.as_str())
    }
}

fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let finder = memmem::Finder::new(needle);
    let mut hits = finder.find_iter(hay).peekable();
    hits.peek()?;
    let mut out = Vec::with_capacity(hay.len());
    let mut last = 0;
    for at in hits {
        if at < last {
            continue;
        }
        out.extend_from_slice(&hay[last..at]);
        out.extend_from_slice(with);
        last = at + needle.len();
    }
    out.extend_from_slice(&hay[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_escaped_forms_are_replaced() {
        let mut r = Redactor::default();
        let key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49\n-----END EC PRIVATE KEY-----";
        r.add(Kind::PrivateKey, key);
        r.add(Kind::OpenaiApiKey, "sk-Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f");
        let body =
            serde_json::json!({"content": format!("{key} and sk-Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f")}).to_string();
        let (clean, complete) = r.body(body.as_bytes(), &r.secrets().collect::<Vec<_>>());
        let clean = String::from_utf8(clean).unwrap();
        assert!(complete);
        assert_eq!(clean, r#"{"content":"[REDACTED:private_key] and [REDACTED:openai_api_key]"}"#);
        assert_eq!(r.text("x sk-Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f"), "x [REDACTED:openai_api_key]");
    }

    #[test]
    fn a_secret_split_across_events_is_reported_missing() {
        let mut r = Redactor::default();
        let key = "sk-Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f";
        r.add(Kind::OpenaiApiKey, key);
        let stream = "data: {\"delta\":\"sk-Ab3dEf9hIj2\"}\n\ndata: {\"delta\":\"LmN0pQr5tUv8wXy1zAb4cDe7f\"}\n\n";
        let (_, complete) = r.body(stream.as_bytes(), &[key]);
        assert!(!complete);
    }
}
