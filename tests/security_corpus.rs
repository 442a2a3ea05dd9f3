//! The detectors against a labelled corpus (`tests/fixtures/security/corpus.jsonl`): positive
//! examples of every kind and benign look-alikes (documentation keys, placeholders, numbers that
//! fail their checksum, the word "ignore" in prose, safe shell and SQL). Prints the detection
//! rate per kind and every miss and false positive, and holds them to thresholds. A second,
//! held-out corpus (`holdout.jsonl`) was written apart from the detectors and is not used to tune
//! them; its thresholds are what the detectors reached on it when it was added.

use std::collections::BTreeMap;

use kurral_proxy::scan::{Kind, Match, Place, Scanner};
use serde::Deserialize;

/// Held-out thresholds: the figures measured when the corpus was added, rounded down.
const HOLDOUT_RATE: f64 = 0.98;
const HOLDOUT_BENIGN_FLAGGED: u32 = 1;

#[derive(Deserialize)]
struct Case {
    id: String,
    location: String,
    text: String,
    expect: Vec<String>,
}

fn place(name: &str) -> Place {
    match name {
        "request_message" => Place::RequestMessage,
        "tool_result" => Place::ToolResult,
        "answer" => Place::Answer,
        "tool_call" => Place::ToolCall,
        other => panic!("unknown location {other}"),
    }
}

/// Tool-call cases are arguments as JSON text: scanned by their string values, as the proxy does.
fn texts(case: &Case) -> Vec<String> {
    if case.location != "tool_call" {
        return vec![case.text.clone()];
    }
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match serde_json::from_str::<serde_json::Value>(&case.text) {
        Ok(v) => strings(&v, &mut out),
        Err(_) => out.push(case.text.clone()),
    }
    out
}

/// Detection per kind, and what was flagged that should not have been.
struct Stats {
    per_kind: BTreeMap<&'static str, (u32, u32)>,
    benign: u32,
    benign_flagged: u32,
    extra: usize,
}

impl Stats {
    fn rate(&self) -> f64 {
        let (e, f) = self.per_kind.values().fold((0, 0), |(a, b), (e, f)| (a + e, b + f));
        f64::from(f) / f64::from(e)
    }
}

fn evaluate(corpus: &str) -> Stats {
    let scanner = Scanner::new();
    let mut stats = Stats { per_kind: BTreeMap::new(), benign: 0, benign_flagged: 0, extra: 0 };
    let mut report = Vec::new();
    let mut found = Vec::<Match>::new();
    for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
        let case: Case = serde_json::from_str(line).expect("corpus line");
        let mut kinds: Vec<&str> = Vec::new();
        for text in texts(&case) {
            scanner.matches(&text, place(&case.location), &mut found);
            kinds.extend(found.iter().map(|m| m.kind.name()));
        }
        kinds.sort_unstable();
        kinds.dedup();
        for want in &case.expect {
            let kind = Kind::from_name(want).unwrap_or_else(|| panic!("{}: unknown kind {want}", case.id));
            let e = stats.per_kind.entry(kind.name()).or_default();
            e.0 += 1;
            if kinds.contains(&want.as_str()) {
                e.1 += 1;
            } else {
                report.push(format!("MISS  {:<22} {}", want, case.id));
            }
        }
        let unexpected: Vec<&str> = kinds.iter().filter(|k| !case.expect.iter().any(|e| e == *k)).copied().collect();
        if case.expect.is_empty() {
            stats.benign += 1;
            stats.benign_flagged += u32::from(!unexpected.is_empty());
        }
        stats.extra += unexpected.len();
        for k in unexpected {
            report.push(format!("FALSE {:<22} {}", k, case.id));
        }
    }
    println!("{:<22} {:>8} {:>8} {:>7}", "kind", "expected", "found", "rate");
    for (kind, (e, f)) in &stats.per_kind {
        println!("{kind:<22} {e:>8} {f:>8} {:>6.1}%", 100.0 * f64::from(*f) / f64::from(*e));
    }
    println!("detection rate {:.1}%", 100.0 * stats.rate());
    println!(
        "benign lines flagged: {} of {}; unexpected findings in all lines: {}",
        stats.benign_flagged, stats.benign, stats.extra
    );
    for r in &report {
        println!("{r}");
    }
    stats
}

/// The corpus the detectors were developed against.
#[test]
fn detection_rate_and_false_positives() {
    let stats = evaluate(include_str!("fixtures/security/corpus.jsonl"));
    assert_eq!(stats.per_kind.len(), Kind::ALL.len(), "every kind has positive examples");
    assert!(stats.rate() >= 0.97, "detection rate {:.3} under 97%", stats.rate());
    for (kind, (e, f)) in &stats.per_kind {
        assert!(f64::from(*f) / f64::from(*e) >= 0.90, "{kind}: {f} of {e} detected");
    }
    assert!(stats.benign_flagged <= stats.benign / 100, "more than 1% of benign lines flagged");
    assert!(stats.extra <= 3, "{} unexpected findings", stats.extra);
}

/// A held-out corpus, written apart from the detectors and never used to tune them: what they
/// do on text they have not seen.
#[test]
fn held_out_detection_rate_and_false_positives() {
    let stats = evaluate(include_str!("fixtures/security/holdout.jsonl"));
    assert_eq!(stats.per_kind.len(), Kind::ALL.len(), "every kind has positive examples");
    assert!(stats.rate() >= HOLDOUT_RATE, "detection rate {:.3} under {HOLDOUT_RATE}", stats.rate());
    assert!(stats.benign_flagged <= HOLDOUT_BENIGN_FLAGGED, "{} benign lines flagged", stats.benign_flagged);
}
