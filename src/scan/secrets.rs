//! Credentials: provider keys (OpenAI, Anthropic, Google), AWS key ids and secret keys, GitHub,
//! GitLab and Slack tokens, Slack webhooks, private key blocks, JWTs, passwords in URLs.
//!
//! One aho-corasick pass finds each format's literal prefix; each hit is then checked: the
//! characters and length the format has, a word boundary before it, and that it is not a
//! placeholder from documentation (`sk-your-openai-key`, `AKIAIOSFODNN7EXAMPLE`, `xxxx`...): a
//! random key mixes upper case, lower case and digits, and a placeholder does not.

use aho_corasick::{AhoCorasick, MatchKind};

use super::{is_word, starts_word, take_back, take_while, Kind, Match};

#[derive(Clone, Copy)]
enum Anchor {
    OpenAi,
    Google,
    AwsKeyId,
    AwsSecretName,
    GitHub,
    GitHubPat,
    GitLab,
    Slack,
    SlackWebhook,
    PrivateKey,
    Jwt,
    Url,
}

const ANCHORS: &[(&str, Anchor)] = &[
    ("sk-", Anchor::OpenAi),
    ("AIza", Anchor::Google),
    ("AKIA", Anchor::AwsKeyId),
    ("ASIA", Anchor::AwsKeyId),
    ("ecret_access_key", Anchor::AwsSecretName),
    ("ECRET_ACCESS_KEY", Anchor::AwsSecretName),
    ("ecretAccessKey", Anchor::AwsSecretName),
    ("ecret_key", Anchor::AwsSecretName),
    ("ECRET_KEY", Anchor::AwsSecretName),
    ("ghp_", Anchor::GitHub),
    ("gho_", Anchor::GitHub),
    ("ghu_", Anchor::GitHub),
    ("ghs_", Anchor::GitHub),
    ("ghr_", Anchor::GitHub),
    ("github_pat_", Anchor::GitHubPat),
    ("glpat-", Anchor::GitLab),
    ("xoxb-", Anchor::Slack),
    ("xoxp-", Anchor::Slack),
    ("xoxa-", Anchor::Slack),
    ("xoxr-", Anchor::Slack),
    ("xoxs-", Anchor::Slack),
    ("hooks.slack.com/services/", Anchor::SlackWebhook),
    ("-----BEGIN ", Anchor::PrivateKey),
    ("eyJ", Anchor::Jwt),
    ("://", Anchor::Url),
];

pub struct Secrets {
    anchors: AhoCorasick,
}

impl Secrets {
    pub fn new() -> Secrets {
        let anchors = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(ANCHORS.iter().map(|(p, _)| p))
            .expect("the secret anchors compile");
        Secrets { anchors }
    }

    pub fn find(&self, text: &str, out: &mut Vec<Match>) {
        let b = text.as_bytes();
        let mut covered = 0;
        for hit in self.anchors.find_iter(b) {
            if hit.start() < covered {
                continue;
            }
            let at = hit.start();
            let found = match ANCHORS[hit.pattern().as_usize()].1 {
                Anchor::OpenAi => openai(b, at),
                Anchor::Google => fixed(b, at, 4, 35, Kind::GoogleApiKey, |c| is_word(c) || c == b'-'),
                Anchor::AwsKeyId => aws_key_id(b, at),
                Anchor::AwsSecretName => aws_secret(b, hit.end()),
                Anchor::GitHub => token(b, at, 4, 36, Kind::GithubToken, |c| c.is_ascii_alphanumeric()),
                Anchor::GitHubPat => token(b, at, 11, 60, Kind::GithubToken, is_word),
                Anchor::GitLab => token(b, at, 6, 20, Kind::GitlabToken, |c| is_word(c) || c == b'-'),
                Anchor::Slack => slack(b, at),
                Anchor::SlackWebhook => slack_webhook(b, at),
                Anchor::PrivateKey => private_key(b, at),
                Anchor::Jwt => jwt(b, at),
                Anchor::Url => url_password(b, at),
            };
            if let Some(m) = found {
                // A URL's password may itself be a token of a known format: read on into it.
                if m.kind != Kind::UrlCredentials {
                    covered = m.range.end;
                }
                out.push(m);
            }
        }
    }
}

/// Looks random, as a generated key does: upper case, lower case and digits (a short key may
/// lack one case), no long run of one character, and none of the words placeholders are made of.
fn random_looking(s: &[u8]) -> bool {
    let has = |f: fn(&u8) -> bool| s.iter().any(f);
    let (upper, lower, digit) = (has(u8::is_ascii_uppercase), has(u8::is_ascii_lowercase), has(u8::is_ascii_digit));
    let classes = u8::from(upper) + u8::from(lower) + u8::from(digit);
    if !(classes == 3 || (s.len() < 30 && classes == 2 && digit)) {
        return false;
    }
    if s.windows(4).any(|w| w.iter().all(|&c| c == w[0])) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    let placeholder = ["example", "your", "xxxx", "placeholder", "redacted", "dummy", "abcdef", "123456"];
    !placeholder.iter().any(|p| memchr::memmem::find(&lower, p.as_bytes()).is_some())
}

fn key_char(c: u8) -> bool {
    is_word(c) || c == b'-'
}

/// `sk-...`: OpenAI (`sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-`) or Anthropic (`sk-ant-api03-`).
fn openai(b: &[u8], at: usize) -> Option<Match> {
    if at > 0 && (key_char(b[at - 1])) {
        return None;
    }
    let end = take_while(b, at + 3, key_char);
    let body = &b[at + 3..end];
    if body.starts_with(b"ant-") {
        // sk-ant-<kind>-<secret>
        let kind_end = take_while(body, 4, |c| c.is_ascii_alphanumeric());
        let secret = body.get(kind_end + 1..)?;
        return (body.get(kind_end) == Some(&b'-') && secret.len() >= 32 && random_looking(secret))
            .then_some(Match { kind: Kind::AnthropicApiKey, range: at..end });
    }
    (body.len() >= 32 && random_looking(body)).then_some(Match { kind: Kind::OpenaiApiKey, range: at..end })
}

/// A prefix of `prefix` bytes then exactly `len` key characters.
fn fixed(b: &[u8], at: usize, prefix: usize, len: usize, kind: Kind, ok: fn(u8) -> bool) -> Option<Match> {
    let end = take_while(b, at + prefix, ok);
    (starts_word(b, at) && end - at - prefix == len && random_looking(&b[at + prefix..end]))
        .then_some(Match { kind, range: at..end })
}

/// A prefix of `prefix` bytes then at least `min` token characters.
fn token(b: &[u8], at: usize, prefix: usize, min: usize, kind: Kind, ok: fn(u8) -> bool) -> Option<Match> {
    if at > 0 && key_char(b[at - 1]) {
        return None;
    }
    let end = take_while(b, at + prefix, ok);
    (end - at - prefix >= min && random_looking(&b[at + prefix..end])).then_some(Match { kind, range: at..end })
}

/// `AKIA`/`ASIA` and 16 upper-case letters or digits; AWS's documentation keys end in `EXAMPLE`.
fn aws_key_id(b: &[u8], at: usize) -> Option<Match> {
    let end = take_while(b, at + 4, |c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let id = &b[at..end];
    let ok = starts_word(b, at)
        && (end == b.len() || !is_word(b[end]))
        && id.len() == 20
        && !id.ends_with(b"EXAMPLE")
        && id[4..].iter().any(u8::is_ascii_digit);
    ok.then_some(Match { kind: Kind::AwsAccessKeyId, range: at..end })
}

/// A secret access key: 40 base64 characters after a name such as `aws_secret_access_key =`,
/// `"SecretAccessKey": "` or `{"name": "AWS_SECRET_ACCESS_KEY", "value": "`.
fn aws_secret(b: &[u8], name_end: usize) -> Option<Match> {
    let separator = |c: u8| matches!(c, b' ' | b'\t' | b'"' | b'\'' | b'`' | b':' | b'=' | b'\\' | b',');
    let mut start = take_while(b, name_end, separator);
    if b[start..].len() >= 5 && b[start..start + 5].eq_ignore_ascii_case(b"value") {
        start = take_while(b, start + 5, separator);
    }
    if start - name_end > 24 {
        return None;
    }
    let base64 = |c: u8| c.is_ascii_alphanumeric() || c == b'/' || c == b'+';
    let end = take_while(b, start, base64);
    let secret = &b[start..end];
    (secret.len() == 40 && random_looking(secret))
        .then_some(Match { kind: Kind::AwsSecretAccessKey, range: start..end })
}

/// `xox[baprs]-` then digit groups and a random tail, dash separated.
fn slack(b: &[u8], at: usize) -> Option<Match> {
    if at > 0 && key_char(b[at - 1]) {
        return None;
    }
    let end = take_while(b, at + 5, |c| c.is_ascii_alphanumeric() || c == b'-');
    let body = &b[at + 5..end];
    let digits = body.iter().filter(|c| c.is_ascii_digit()).count();
    (body.len() >= 20
        && digits >= 8
        && body.contains(&b'-')
        && !body.to_ascii_lowercase().windows(4).any(|w| w == b"xxxx"))
    .then_some(Match { kind: Kind::SlackToken, range: at..end })
}

/// `https://hooks.slack.com/services/T.../B.../secret`.
fn slack_webhook(b: &[u8], at: usize) -> Option<Match> {
    let start = if b[..at].ends_with(b"https://") { at - 8 } else { at };
    let path = at + "hooks.slack.com/services/".len();
    let end = take_while(b, path, |c| c.is_ascii_alphanumeric() || c == b'/');
    let parts: Vec<&[u8]> = b[path..end].split(|&c| c == b'/').collect();
    let ok = parts.len() == 3
        && parts[0].first() == Some(&b'T')
        && parts[1].first() == Some(&b'B')
        && parts[0].len() >= 8
        && parts[1].len() >= 8
        && parts[2].len() >= 20
        && random_looking(parts[2]);
    ok.then_some(Match { kind: Kind::SlackWebhook, range: start..end })
}

/// A PEM private key block, to its END line or, cut, to the end of the text. A block announced
/// but holding no key material (a mention in documentation) is not one.
fn private_key(b: &[u8], at: usize) -> Option<Match> {
    let label_end = memchr::memmem::find(&b[at + 11..(at + 80).min(b.len())], b"-----")? + at + 11;
    let label = &b[at + 11..label_end];
    if !label.ends_with(b"PRIVATE KEY") && !label.ends_with(b"PRIVATE KEY BLOCK") {
        return None;
    }
    let body_start = label_end + 5;
    let end_line = memchr::memmem::find(&b[body_start..], b"-----END ").map(|i| body_start + i);
    let body_end = end_line.unwrap_or(b.len());
    let material =
        b[body_start..body_end].iter().filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/')).count();
    if material < 40 {
        return None;
    }
    let end = match end_line {
        Some(e) => memchr::memmem::find(&b[e + 9..], b"-----").map_or(b.len(), |i| e + 9 + i + 5),
        None => b.len(),
    };
    Some(Match { kind: Kind::PrivateKey, range: at..end })
}

/// `eyJ...` `.` `eyJ...` `.` signature: base64url JSON header and payload.
fn jwt(b: &[u8], at: usize) -> Option<Match> {
    if at > 0 && key_char(b[at - 1]) {
        return None;
    }
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let header_end = take_while(b, at, b64);
    if header_end - at < 10 || b.get(header_end) != Some(&b'.') || !b[header_end + 1..].starts_with(b"eyJ") {
        return None;
    }
    let payload_end = take_while(b, header_end + 1, b64);
    if payload_end - header_end < 10 || b.get(payload_end) != Some(&b'.') {
        return None;
    }
    let end = take_while(b, payload_end + 1, b64);
    (end - payload_end > 16).then_some(Match { kind: Kind::Jwt, range: at..end })
}

/// `scheme://user:password@host`: the password, unless it is a placeholder.
fn url_password(b: &[u8], at: usize) -> Option<Match> {
    let scheme_start = take_back(b, at, 20, |c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'));
    if at - scheme_start < 2 || !b[scheme_start].is_ascii_alphabetic() {
        return None;
    }
    let userinfo_start = at + 3;
    let stop =
        |c: u8| c.is_ascii_whitespace() || matches!(c, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`' | b'@');
    let userinfo_end = take_while(b, userinfo_start, |c| !stop(c));
    if b.get(userinfo_end) != Some(&b'@') {
        return None;
    }
    let userinfo = &b[userinfo_start..userinfo_end];
    let colon = memchr::memchr(b':', userinfo)?;
    let (user, password) = (&userinfo[..colon], &userinfo[colon + 1..]);
    let host_end = take_while(b, userinfo_end + 1, |c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-'));
    // `redis://:password@host` has no user.
    let _ = user;
    if password.is_empty() || host_end == userinfo_end + 1 || placeholder_password(password) {
        return None;
    }
    let start = userinfo_start + colon + 1;
    Some(Match { kind: Kind::UrlCredentials, range: start..userinfo_end })
}

fn placeholder_password(p: &[u8]) -> bool {
    let lower = p.to_ascii_lowercase();
    let words: [&[u8]; 9] = [b"password", b"passwd", b"pass", b"pwd", b"secret", b"changeme", b"pw", b"token", b"xxx"];
    words.contains(&lower.as_slice())
        || p.iter().all(|&c| c == b'*' || c == b'x' || c == b'X' || c == b'.')
        || matches!(p.first(), Some(b'$' | b'<' | b'{' | b'%' | b'['))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Kind, &str)> {
        let mut out = Vec::new();
        Secrets::new().find(text, &mut out);
        out.into_iter().map(|m| (m.kind, &text[m.range])).collect()
    }

    #[test]
    fn each_format_and_its_placeholder() {
        let cases: &[(&str, Option<(Kind, &str)>)] = &[
            (
                "key sk-proj-Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f end",
                Some((Kind::OpenaiApiKey, "sk-proj-Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f")),
            ),
            ("api_key=\"sk-your-openai-key\"", None),
            ("sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", None),
            ("the risk-assessment-framework-for-enterprise-2024 doc", None),
            ("AKIAQ3EGWPLM7ZT4X2NB", Some((Kind::AwsAccessKeyId, "AKIAQ3EGWPLM7ZT4X2NB"))),
            ("AKIAIOSFODNN7EXAMPLE", None),
            ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None),
            (
                "aws_secret_access_key = Zq8vT2mK9pL4xR7nB1cW6yH3jF0sD5gA8eU2iO4k",
                Some((Kind::AwsSecretAccessKey, "Zq8vT2mK9pL4xR7nB1cW6yH3jF0sD5gA8eU2iO4k")),
            ),
            ("postgres://admin:Xk9vQ2mP7t@db.internal:5432/app", Some((Kind::UrlCredentials, "Xk9vQ2mP7t"))),
            ("postgres://user:password@localhost/db", None),
            ("postgres://user:${DB_PASSWORD}@host/db", None),
            ("https://user@example.com/x", None),
            (
                "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
                None,
            ),
            ("files start with -----BEGIN RSA PRIVATE KEY----- and end", None),
        ];
        for (text, want) in cases {
            let got = found(text);
            assert_eq!(got.first().copied(), *want, "{text}");
        }
    }

    #[test]
    fn a_private_key_block_is_covered_to_its_end_line() {
        let block = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDx\n-----END OPENSSH PRIVATE KEY-----";
        let text = format!("here:\n{block}\nthanks");
        let got = found(&text);
        assert_eq!(got, [(Kind::PrivateKey, block)]);
    }

    #[test]
    fn anthropic_github_slack_jwt() {
        let ant = format!("sk-ant-api03-{}AA", "Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7fGh".repeat(2));
        assert_eq!(found(&ant), [(Kind::AnthropicApiKey, ant.as_str())]);
        assert_eq!(found("ghp_Ab3dEf9hIj2LmN0pQr5tUv8wXy1zAb4cDe7f")[0].0, Kind::GithubToken);
        assert!(found("ghp_xxxxxxxxxxxxxxxx").is_empty());
        assert_eq!(found("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx")[0].0, Kind::SlackToken);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(found(&format!("Bearer {jwt}")), [(Kind::Jwt, jwt)]);
    }
}
