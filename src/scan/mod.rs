//! Security scanning of every call: leaked secrets, personal data, prompt injection and risky
//! tool calls, found in the prompt, the tool results, the answer and the tool calls.
//!
//! Scanning runs on the capture path, never on the relay path: the request is scanned once it
//! has gone upstream (or before, when the key blocks on findings), the answer once its last byte
//! was relayed. It reads the content whatever the retention level; only the findings are kept.
//!
//! - `secrets`, `pii`, `injection`, `tools`: the detectors, each a set of literal anchors found
//!   by one multi-pattern pass (memchr, aho-corasick) and checked where they hit (format,
//!   checksum, boundaries, placeholders), so ordinary text costs one fast pass per detector.
//! - `units`: the texts of a call and where each was (system, message, tool result, answer,
//!   tool call, with its index).
//! - `redact`: excerpts with secrets and personal data masked, and the replacement of detected
//!   secrets in content a record keeps. A matched secret is never stored.
//!
//! The scanner is compiled once at start and shared by all workers.

mod excerpt;
mod injection;
mod pii;
pub mod redact;
mod secrets;
mod tools;
pub mod units;

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub use redact::Redactor;
pub use units::{Place, Unit};

/// Findings kept per call; past this the record says how many more there were.
pub const MAX_FINDINGS: usize = 64;
/// Text scanned per call. Scanning runs on the worker thread (after the relay, but beside other
/// connections), so a huge conversation must not hold it for long: past this much text (about
/// 4 ms of scanning) the rest is left unscanned and the record says so. New turns are scanned
/// first.
pub const SCAN_BUDGET: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Secret,
    Pii,
    Injection,
    Tool,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Secret => "secret",
            Category::Pii => "pii",
            Category::Injection => "injection",
            Category::Tool => "tool",
        }
    }
}

macro_rules! kinds {
    ($($kind:ident = $name:literal, $category:ident, $severity:ident;)*) => {
        /// What a finding is. The name is what the read API, the CLI and the block error show.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Kind { $($kind,)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            pub fn name(self) -> &'static str {
                match self { $(Kind::$kind => $name,)* }
            }

            pub fn category(self) -> Category {
                match self { $(Kind::$kind => Category::$category,)* }
            }

            /// Severity wherever it is found; `severity_at` raises or lowers injection by place.
            fn base_severity(self) -> Severity {
                match self { $(Kind::$kind => Severity::$severity,)* }
            }

            pub fn from_name(name: &str) -> Option<Kind> {
                match name { $($name => Some(Kind::$kind),)* _ => None }
            }
        }
    };
}

kinds! {
    OpenaiApiKey = "openai_api_key", Secret, High;
    AnthropicApiKey = "anthropic_api_key", Secret, High;
    GoogleApiKey = "google_api_key", Secret, High;
    AwsAccessKeyId = "aws_access_key_id", Secret, High;
    AwsSecretAccessKey = "aws_secret_access_key", Secret, High;
    GithubToken = "github_token", Secret, High;
    GitlabToken = "gitlab_token", Secret, High;
    SlackToken = "slack_token", Secret, High;
    SlackWebhook = "slack_webhook", Secret, High;
    PrivateKey = "private_key", Secret, High;
    Jwt = "jwt", Secret, Medium;
    UrlCredentials = "url_credentials", Secret, High;
    Email = "email", Pii, Low;
    PhoneNumber = "phone_number", Pii, Low;
    PaymentCard = "payment_card", Pii, High;
    UsSsn = "us_ssn", Pii, High;
    UkNino = "uk_nino", Pii, High;
    Iban = "iban", Pii, Medium;
    InstructionOverride = "instruction_override", Injection, High;
    RolePlayMarker = "role_play_marker", Injection, Medium;
    HiddenUnicodeTags = "hidden_unicode_tags", Injection, High;
    ZeroWidthRun = "zero_width_run", Injection, Medium;
    BidiOverride = "bidi_override", Injection, Medium;
    DestructiveShell = "destructive_shell", Tool, High;
    DownloadAndExecute = "download_and_execute", Tool, High;
    DestructiveSql = "destructive_sql", Tool, High;
    CredentialFileRead = "credential_file_read", Tool, High;
    ReverseShell = "reverse_shell", Tool, High;
}

impl Kind {
    /// Masked in excerpts (secrets and personal data); the rest is shown as found.
    pub fn masked(self) -> bool {
        matches!(self.category(), Category::Secret | Category::Pii)
    }

    /// The severity of this kind found at `place`: injection is the more dangerous where the
    /// model reads it as data (tool results, tool definitions: indirect injection), and the less
    /// where the model itself wrote it.
    pub fn severity_at(self, place: Place) -> Severity {
        let base = self.base_severity();
        if self.category() != Category::Injection {
            return base;
        }
        match place {
            Place::ToolResult | Place::ToolDefinition => Severity::High,
            Place::Answer | Place::ToolCall => Severity::Medium.min(base),
            _ => base,
        }
    }
}

/// One thing a detector found in one text: the byte range of the text it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub kind: Kind,
    pub range: Range<usize>,
}

/// A finding as a record keeps it: never the matched secret, only a masked excerpt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub category: Category,
    pub severity: Severity,
    /// Where it was: `system`, `tool_definition`, `request_message`, `tool_result`, `answer`,
    /// `tool_call`.
    pub location: Place,
    /// The message's index in the request's conversation (for `request_message`,
    /// `tool_result`), the tool's (for `tool_definition`) or the call's (for `tool_call`).
    pub index: Option<u32>,
    /// A short piece of the text around the match, secrets and personal data masked.
    pub excerpt: String,
}

/// All the detectors, compiled once.
pub struct Scanner {
    secrets: secrets::Secrets,
    injection: injection::Injection,
    tools: tools::Tools,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner { secrets: secrets::Secrets::new(), injection: injection::Injection::new(), tools: tools::Tools::new() }
    }

    /// Every match in `text`, ordered by position. Tool-call detectors run on tool calls only.
    pub fn matches(&self, text: &str, place: Place, out: &mut Vec<Match>) {
        out.clear();
        self.secrets.find(text, out);
        pii::find(text, out);
        self.injection.find(text, place, out);
        if place == Place::ToolCall {
            self.tools.find(text, out);
        }
        out.sort_by_key(|m| (m.range.start, std::cmp::Reverse(m.range.end)));
    }

    /// Scans the units of one call. Every unit's secrets go to `scan.redactor` (so content a
    /// record keeps never holds them, even from earlier turns); findings are reported for the
    /// units that are `new` in this call.
    pub fn scan(&self, units: &[Unit], scan: &mut CallScan) {
        let mut found = Vec::new();
        // What this call adds first: it is what findings are reported for.
        let ordered = units.iter().filter(|u| u.new).chain(units.iter().filter(|u| !u.new));
        for unit in ordered {
            if scan.scanned + unit.text.len() > SCAN_BUDGET {
                scan.incomplete = true;
                continue;
            }
            scan.scanned += unit.text.len();
            self.matches(&unit.text, unit.place, &mut found);
            let finding = |m: &Match| Finding {
                kind: m.kind,
                category: m.kind.category(),
                severity: m.kind.severity_at(unit.place),
                location: unit.place,
                index: unit.index,
                excerpt: excerpt::excerpt(&unit.text, m, &found),
            };
            for m in found.iter().filter(|m| m.kind.category() == Category::Secret) {
                scan.redactor.add(m.kind, &unit.text[m.range.clone()]);
                // An earlier turn's secret is sent upstream again: not reported again, but kept
                // aside, since it still blocks (history can be written by the client).
                if !unit.new && scan.held.is_none() {
                    scan.held = Some(finding(m));
                }
            }
            if !unit.new {
                continue;
            }
            for m in &found {
                scan.push(finding(m));
            }
        }
    }
}

/// End of the run of bytes from `from` that satisfy `f`.
fn take_while(b: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    from + b[from.min(b.len())..].iter().take_while(|&&c| f(c)).count()
}

/// Start of the run of bytes before `to` that satisfy `f`, at most `max` long.
fn take_back(b: &[u8], to: usize, max: usize, f: impl Fn(u8) -> bool) -> usize {
    to - b[..to].iter().rev().take(max).take_while(|&&c| f(c)).count()
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The byte before `at` is not part of a word (or there is none).
fn starts_word(b: &[u8], at: usize) -> bool {
    at == 0 || !is_word(b[at - 1])
}

/// What scanning one call found: its findings, and the secrets to keep out of stored content.
#[derive(Debug, Default)]
pub struct CallScan {
    pub findings: Vec<Finding>,
    /// Findings past `MAX_FINDINGS`, counted, not kept.
    pub dropped: u32,
    pub redactor: Redactor,
    /// Bytes of text scanned.
    pub scanned: usize,
    /// Some text was left unscanned (`SCAN_BUDGET`).
    pub incomplete: bool,
    /// The first secret in an earlier turn of the conversation: not a finding of this call,
    /// unless it blocks it.
    held: Option<Finding>,
}

impl CallScan {
    fn push(&mut self, f: Finding) {
        let same =
            |g: &Finding| g.kind == f.kind && g.location == f.location && g.index == f.index && g.excerpt == f.excerpt;
        if self.findings.iter().any(same) {
            return;
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        } else {
            self.dropped += 1;
        }
    }

    /// Adds another scan's findings and secrets (the response's to the request's).
    pub fn merge(&mut self, other: CallScan) {
        other.findings.into_iter().for_each(|f| self.push(f));
        self.dropped += other.dropped;
        self.scanned += other.scanned;
        self.incomplete |= other.incomplete;
        self.redactor.extend(&other.redactor);
    }

    /// The finding that blocks a request when the key enforces: a secret anywhere in what would
    /// be sent (earlier turns included: a client writes its own history), or a high-severity
    /// injection marker in what this request adds. A blocking secret from an earlier turn
    /// becomes one of the call's findings, so the refused call's record says why.
    pub fn blocking(&mut self) -> Option<Finding> {
        let blocks = |f: &&Finding| match f.category {
            Category::Secret => true,
            Category::Injection => f.severity == Severity::High,
            _ => false,
        };
        if let Some(f) = self.findings.iter().find(blocks) {
            return Some(f.clone());
        }
        let held = self.held.take()?;
        self.push(held.clone());
        Some(held)
    }

    /// The `x-kurral-findings` header's value: the kinds found, each once, in order found.
    pub fn header_value(&self) -> Option<String> {
        let mut kinds: Vec<&str> = Vec::new();
        for f in &self.findings {
            if !kinds.contains(&f.kind.name()) {
                kinds.push(f.kind.name());
            }
        }
        (!kinds.is_empty()).then(|| kinds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str, place: Place) -> Vec<&'static str> {
        let mut out = Vec::new();
        Scanner::new().matches(text, place, &mut out);
        out.iter().map(|m| m.kind.name()).collect()
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(*k));
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.name());
        }
    }

    #[test]
    fn injection_is_raised_in_tool_results_and_lowered_in_answers() {
        assert_eq!(Kind::RolePlayMarker.severity_at(Place::RequestMessage), Severity::Medium);
        assert_eq!(Kind::RolePlayMarker.severity_at(Place::ToolResult), Severity::High);
        assert_eq!(Kind::InstructionOverride.severity_at(Place::Answer), Severity::Medium);
        assert_eq!(Kind::Email.severity_at(Place::ToolResult), Severity::Low);
    }

    #[test]
    fn a_secret_in_an_old_turn_is_redacted_but_not_reported() {
        let key = "sk-proj-Xk29fLq8ZpR3vN7wT1yB6cM4hJ0dS5gA2eK9uQ";
        let units = vec![
            Unit { place: Place::RequestMessage, index: Some(0), text: format!("my key is {key}"), new: false },
            Unit { place: Place::RequestMessage, index: Some(2), text: "thanks".into(), new: true },
        ];
        let mut scan = CallScan::default();
        Scanner::new().scan(&units, &mut scan);
        assert!(scan.findings.is_empty());
        assert_eq!(scan.redactor.text(&format!("x {key} y")), "x [REDACTED:openai_api_key] y");
        // It still blocks, and then is the refused call's finding.
        let blocked = scan.blocking().expect("an earlier turn's secret blocks");
        assert_eq!((blocked.kind, blocked.index), (Kind::OpenaiApiKey, Some(0)));
        assert_eq!(scan.findings, [blocked]);
    }

    #[test]
    fn findings_name_place_index_and_mask_the_secret() {
        let key = "AKIAQ3EGWPLM7ZT4X2NB";
        let units = vec![Unit {
            place: Place::ToolResult,
            index: Some(3),
            text: format!("config: aws_access_key_id={key} region=us-east-1"),
            new: true,
        }];
        let mut scan = CallScan::default();
        Scanner::new().scan(&units, &mut scan);
        let f = &scan.findings[0];
        assert_eq!(
            (f.kind, f.location, f.index, f.severity),
            (Kind::AwsAccessKeyId, Place::ToolResult, Some(3), Severity::High)
        );
        assert!(!f.excerpt.contains(key), "{}", f.excerpt);
        assert!(f.excerpt.contains("[aws_access_key_id]"), "{}", f.excerpt);
        assert_eq!(scan.header_value().as_deref(), Some("aws_access_key_id"));
        assert!(scan.blocking().is_some());
    }

    #[test]
    fn new_turns_are_scanned_first_and_the_budget_is_kept() {
        let old = "a".repeat(SCAN_BUDGET);
        let units = vec![
            Unit { place: Place::RequestMessage, index: Some(0), text: old, new: false },
            Unit { place: Place::RequestMessage, index: Some(1), text: "mail bob@example.com".into(), new: true },
        ];
        let mut scan = CallScan::default();
        Scanner::new().scan(&units, &mut scan);
        assert_eq!(scan.findings.len(), 1, "the new turn was scanned");
        assert!(scan.incomplete && scan.scanned <= SCAN_BUDGET);
    }

    #[test]
    fn tool_detectors_only_read_tool_calls() {
        assert_eq!(kinds(r#"{"command":"rm -rf /"}"#, Place::ToolCall), ["destructive_shell"]);
        assert!(kinds("never run rm -rf / on a server", Place::RequestMessage).is_empty());
    }
}
