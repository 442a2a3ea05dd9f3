//! The detectors against a labelled corpus (`tests/fixtures/security/corpus.jsonl`): positive
//! examples of every kind and benign look-alikes (documentation keys, placeholders, numbers that
//! fail their checksum, the word "ignore" in prose, safe shell and SQL). Prints the detection
//! rate per kind and every miss and false positive, and holds them to thresholds.

use std::collections::BTreeMap;

use kurral_proxy::scan::{Kind, Match, Place, Scanner};
use serde::Deserialize;

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

#[test]
fn detection_rate_and_false_positives() {
    let corpus = include_str!("fixtures/security/corpus.jsonl");
    let scanner = Scanner::new();
    let mut per_kind: BTreeMap<&str, (u32, u32)> = BTreeMap::new(); // (expected, found)
    let (mut benign, mut benign_flagged, mut extra) = (0, 0, 0);
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
            assert!(Kind::from_name(want).is_some(), "{}: unknown kind {want}", case.id);
            let e = per_kind.entry(Kind::from_name(want).unwrap().name()).or_default();
            e.0 += 1;
            if kinds.contains(&want.as_str()) {
                e.1 += 1;
            } else {
                report.push(format!("MISS  {:<16} {}", want, case.id));
            }
        }
        let unexpected: Vec<&str> = kinds.iter().filter(|k| !case.expect.iter().any(|e| e == *k)).copied().collect();
        if case.expect.is_empty() {
            benign += 1;
            benign_flagged += u32::from(!unexpected.is_empty());
        }
        extra += unexpected.len();
        for k in unexpected {
            report.push(format!("FALSE {:<16} {}", k, case.id));
        }
    }
    let (expected, detected) = per_kind.values().fold((0, 0), |(a, b), (e, f)| (a + e, b + f));
    println!("{:<22} {:>8} {:>8} {:>7}", "kind", "expected", "found", "rate");
    for (kind, (e, f)) in &per_kind {
        println!("{kind:<22} {e:>8} {f:>8} {:>6.1}%", 100.0 * f64::from(*f) / f64::from(*e));
    }
    let rate = f64::from(detected) / f64::from(expected);
    println!("detected {detected} of {expected} ({:.1}%)", 100.0 * rate);
    println!("benign lines flagged: {benign_flagged} of {benign}; unexpected findings in all lines: {extra}");
    for r in &report {
        println!("{r}");
    }
    assert_eq!(per_kind.len(), Kind::ALL.len(), "every kind has positive examples");
    assert!(rate >= 0.97, "detection rate {rate:.3} under 97%");
    for (kind, (e, f)) in &per_kind {
        assert!(f64::from(*f) / f64::from(*e) >= 0.90, "{kind}: {f} of {e} detected");
    }
    assert!(benign_flagged <= benign / 100, "{benign_flagged} of {benign} benign lines flagged (at most 1%)");
    assert!(extra <= 3, "{extra} unexpected findings");
}
