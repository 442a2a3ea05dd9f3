//! The security scanner on arbitrary text: it never panics, every match lies within the text on
//! character boundaries, no excerpt holds a masked match's text, and the stored-content redactor
//! leaves no detected secret behind.
#![no_main]

use std::sync::OnceLock;

use kurral_proxy::scan::{CallScan, Category, Kind, Place, Scanner, Unit};
use libfuzzer_sys::fuzz_target;

const PLACES: [Place; 6] =
    [Place::System, Place::ToolDefinition, Place::RequestMessage, Place::ToolResult, Place::Answer, Place::ToolCall];

fn scanner() -> &'static Scanner {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    SCANNER.get_or_init(Scanner::new)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let place = PLACES[mode as usize % PLACES.len()];
    let mut found = Vec::new();
    scanner().matches(&text, place, &mut found);
    for m in &found {
        assert!(m.range.start <= m.range.end && m.range.end <= text.len());
        assert!(text.is_char_boundary(m.range.start) && text.is_char_boundary(m.range.end));
    }
    let unit = Unit { place, index: Some(0), text: text.to_string(), new: true };
    let mut scan = CallScan::default();
    scanner().scan(std::slice::from_ref(&unit), &mut scan);
    // Markers are taken out before searching: a short password may spell part of one.
    let unmarked = |s: &str| {
        let mut s = s.to_string();
        for k in Kind::ALL {
            s = s.replace(&format!("[REDACTED:{}]", k.name()), "\0").replace(&format!("[{}]", k.name()), "\0");
        }
        s
    };
    let clean = unmarked(&scan.redactor.text(&text));
    for m in found.iter().filter(|m| m.kind.category() == Category::Secret) {
        let secret = &text[m.range.clone()];
        assert!(!clean.contains(secret), "a detected secret survives redaction");
        for f in &scan.findings {
            assert!(!unmarked(&f.excerpt).contains(secret), "an excerpt holds a secret");
        }
    }
});
