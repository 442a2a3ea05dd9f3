//! Conformance of the usage scanner (`kurral_proxy::usage`) with recorded provider response bodies.
//!
//! Every body in `tests/fixtures/usage/` is one response as a client receives it (OpenAI Chat
//! Completions and Responses, Anthropic Messages, Gemini generateContent and
//! streamGenerateContent, streamed or not). `tests/fixtures/usage/expected.json` says, for each
//! one, how to read it (shape, event stream or not), the wire quirk it covers, and what the scanner
//! must find: the normalized usage (every field, null where the provider sent none), the model,
//! the answer text, the tool calls, and where the model is priced, the cost computed by hand from
//! `pricing.json`.
//!
//! A relay hands the scanner whatever pieces the network delivered, so each body is fed whole, at
//! every two-piece split, one byte at a time and in random multi-piece splits: every way must give
//! the same facts. Usage must also survive the prefilter when no content is kept.

// Only the fixtures, not the socket harness: this suite is pure code and builds without RocksDB.
#[path = "common/usage_fixtures.rs"]
mod usage_fixtures;

use std::collections::BTreeSet;

use kurral_proxy::pricing::PriceTable;
use kurral_proxy::usage::{Caps, ResponseFacts, ResponseInspector, Usage};
use usage_fixtures::{fixtures_dir, load_cases, Case, EXPECTATIONS};

/// The caps of a record that keeps content (retention `metadata` or `full`).
const CONTENT: Caps = Caps { content: true, text: 4096, arguments: 4096, scan: false };
/// The caps of a record that keeps no content (retention `none`).
const NO_CONTENT: Caps = Caps::USAGE_ONLY;
/// Feeds `pieces` in order, as a relay would, and returns what the scanner read.
fn scan<'a>(case: &Case, caps: Caps, pieces: impl IntoIterator<Item = &'a [u8]>) -> ResponseFacts {
    let mut inspector = ResponseInspector::new(case.shape, case.event_stream, caps);
    for piece in pieces {
        inspector.feed(piece);
    }
    inspector.finish()
}

fn scan_whole(case: &Case, caps: Caps) -> ResponseFacts {
    scan(case, caps, [case.body.as_slice()])
}

fn normalized(case: &Case, facts: &ResponseFacts) -> Option<Usage> {
    facts.usage_raw.as_ref().and_then(|raw| case.shape.normalize(raw))
}

fn tool_calls(facts: &ResponseFacts) -> Vec<(Option<String>, String, String)> {
    facts.tool_calls.iter().map(|t| (t.id.clone(), t.name.clone(), t.arguments.clone())).collect()
}

/// Every way the scanner's reading of `case` differs from the expectations.
fn differences(case: &Case, facts: &ResponseFacts) -> Vec<String> {
    let mut out = Vec::new();
    let usage = normalized(case, facts);
    if usage != case.usage {
        out.push(format!("usage: expected {:?}, got {:?} (usage_raw {:?})", case.usage, usage, facts.usage_raw));
    }
    if facts.model != case.model {
        out.push(format!("model: expected {:?}, got {:?}", case.model, facts.model));
    }
    if facts.text != case.text || facts.text_truncated {
        out.push(format!("text: expected {:?}, got {:?} (truncated: {})", case.text, facts.text, facts.text_truncated));
    }
    if tool_calls(facts) != case.tool_calls || facts.tool_calls.iter().any(|t| t.truncated) {
        out.push(format!("tool calls: expected {:?}, got {:?}", case.tool_calls, facts.tool_calls));
    }
    if facts.skipped != 0 {
        out.push(format!("skipped: {} events or bodies were too large to read", facts.skipped));
    }
    out
}

fn fail_if_any(what: &str, failures: Vec<String>) {
    assert!(failures.is_empty(), "{what}:\n\n{}", failures.join("\n\n"));
}

/// A tiny xorshift64 generator: the same splits on every run, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Cuts `body` into random pieces: sometimes tiny, sometimes large, now and then empty.
fn random_pieces<'a>(body: &'a [u8], rng: &mut XorShift) -> Vec<&'a [u8]> {
    let largest = 1 + rng.below(body.len().clamp(1, 700));
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if rng.below(16) == 0 {
            pieces.push(&body[at..at]);
        }
        let end = (at + 1 + rng.below(largest)).min(body.len());
        pieces.push(&body[at..end]);
        at = end;
    }
    pieces
}

/// `text` cut to at most `cap` bytes at a character boundary.
fn capped(text: &str, cap: usize) -> &str {
    let mut end = cap.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[test]
fn every_fixture_file_has_exactly_one_expectation() {
    let cases = load_cases();
    let listed: Vec<&str> = cases.iter().map(|c| c.file.as_str()).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(unique.len(), listed.len(), "a fixture is listed twice in expected.json");
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/usage")
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        // `.gitattributes` keeps git from touching the bodies' line ends.
        .filter(|name| name != EXPECTATIONS && !name.starts_with('.'))
        .collect();
    let listed: BTreeSet<String> = unique.into_iter().map(str::to_string).collect();
    assert_eq!(on_disk, listed, "fixture files and expected.json disagree");
    for case in &cases {
        assert!(!case.body.is_empty(), "{}: empty body", case.file);
        assert!(case.text.len() < CONTENT.text, "{}: expected text longer than the test's text cap", case.file);
    }
}

#[test]
fn whole_bodies_give_the_expected_usage_model_text_and_tool_calls() {
    let mut failures = Vec::new();
    for case in load_cases() {
        let diffs = differences(&case, &scan_whole(&case, CONTENT));
        if !diffs.is_empty() {
            failures.push(format!("{} ({}):\n  {}", case.file, case.quirk, diffs.join("\n  ")));
        }
    }
    fail_if_any("fixtures read differently from their expectations", failures);
}

#[test]
fn every_two_piece_split_gives_the_same_facts_as_the_whole_body() {
    let mut failures = Vec::new();
    for case in load_cases() {
        let whole = scan_whole(&case, CONTENT);
        let body = case.body.as_slice();
        if let Some(at) = (0..=body.len()).find(|&at| scan(&case, CONTENT, [&body[..at], &body[at..]]) != whole) {
            let split = scan(&case, CONTENT, [&body[..at], &body[at..]]);
            failures
                .push(format!("{}: split at byte {at} gives\n  {split:?}\nwhole body gives\n  {whole:?}", case.file));
        }
    }
    fail_if_any("two-piece splits changed what was read", failures);
}

#[test]
fn one_byte_at_a_time_gives_the_same_facts_as_the_whole_body() {
    let mut failures = Vec::new();
    for case in load_cases() {
        let whole = scan_whole(&case, CONTENT);
        let bytewise = scan(&case, CONTENT, case.body.chunks(1));
        if bytewise != whole {
            failures.push(format!(
                "{}: one byte at a time gives\n  {bytewise:?}\nwhole body gives\n  {whole:?}",
                case.file
            ));
        }
    }
    fail_if_any("feeding one byte at a time changed what was read", failures);
}

#[test]
fn random_multi_piece_splits_give_the_same_facts_as_the_whole_body() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut failures = Vec::new();
    for case in load_cases() {
        let whole = scan_whole(&case, CONTENT);
        for round in 0..200 {
            let pieces = random_pieces(&case.body, &mut rng);
            let split = scan(&case, CONTENT, pieces.iter().copied());
            if split != whole {
                let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
                failures.push(format!(
                    "{}: random split {round} (piece sizes {sizes:?}) gives\n  {split:?}\nwhole body gives\n  {whole:?}",
                    case.file
                ));
                break;
            }
        }
    }
    fail_if_any("random multi-piece splits changed what was read", failures);
}

#[test]
fn usage_only_caps_read_the_same_usage_however_the_body_is_split() {
    let mut failures = Vec::new();
    for case in load_cases() {
        let with_content = scan_whole(&case, CONTENT);
        let body = case.body.as_slice();
        let mut runs = vec![("whole body".to_string(), scan_whole(&case, NO_CONTENT))];
        runs.push(("one byte at a time".to_string(), scan(&case, NO_CONTENT, body.chunks(1))));
        for at in 0..=body.len() {
            runs.push((format!("split at byte {at}"), scan(&case, NO_CONTENT, [&body[..at], &body[at..]])));
        }
        for (how, facts) in runs {
            let mut diffs = Vec::new();
            if facts.usage_raw != with_content.usage_raw {
                diffs.push(format!("usage_raw {:?}, with content {:?}", facts.usage_raw, with_content.usage_raw));
            }
            // The model prices the usage: wherever there is usage, it must be read too.
            if with_content.usage_raw.is_some() && facts.model != with_content.model {
                diffs.push(format!("model {:?}, with content {:?}", facts.model, with_content.model));
            }
            if !facts.text.is_empty() || !facts.tool_calls.is_empty() {
                diffs.push(format!("content read although none is kept: {:?} {:?}", facts.text, facts.tool_calls));
            }
            if !diffs.is_empty() {
                failures.push(format!("{} ({how}): {}", case.file, diffs.join("; ")));
                break;
            }
        }
    }
    fail_if_any("without content caps the prefilter lost usage", failures);
}

#[test]
fn small_text_and_argument_caps_truncate_content_at_char_boundaries_but_keep_usage() {
    let caps = Caps { content: true, text: 7, arguments: 5, scan: false };
    let mut failures = Vec::new();
    for case in load_cases() {
        let full = scan_whole(&case, CONTENT);
        for (how, facts) in
            [("whole body", scan_whole(&case, caps)), ("one byte at a time", scan(&case, caps, case.body.chunks(1)))]
        {
            let mut diffs = Vec::new();
            if facts.usage_raw != full.usage_raw {
                diffs.push(format!("usage_raw {:?}, uncapped {:?}", facts.usage_raw, full.usage_raw));
            }
            if facts.model != full.model {
                diffs.push(format!("model {:?}, uncapped {:?}", facts.model, full.model));
            }
            let want_text = capped(&full.text, caps.text);
            let want_truncated = full.text.len() > caps.text;
            if facts.text != want_text || facts.text_truncated != want_truncated {
                diffs.push(format!(
                    "text {:?} (truncated {}), expected {want_text:?} (truncated {want_truncated})",
                    facts.text, facts.text_truncated
                ));
            }
            let want_calls: Vec<_> = full
                .tool_calls
                .iter()
                .map(|t| {
                    let args = capped(&t.arguments, caps.arguments).to_string();
                    (t.id.clone(), t.name.clone(), args, t.arguments.len() > caps.arguments)
                })
                .collect();
            let got_calls: Vec<_> = facts
                .tool_calls
                .iter()
                .map(|t| (t.id.clone(), t.name.clone(), t.arguments.clone(), t.truncated))
                .collect();
            if got_calls != want_calls {
                diffs.push(format!("tool calls {got_calls:?}, expected {want_calls:?}"));
            }
            if !diffs.is_empty() {
                failures.push(format!("{} ({how}): {}", case.file, diffs.join("; ")));
                break;
            }
        }
    }
    fail_if_any("small caps changed more than the kept content", failures);
}

#[test]
fn normalized_usage_follows_the_read_api_token_semantics() {
    let mut failures = Vec::new();
    for case in load_cases() {
        let Some(u) = normalized(&case, &scan_whole(&case, CONTENT)) else { continue };
        let n = |v: Option<u64>| v.unwrap_or(0);
        let mut broken = Vec::new();
        if u.total_tokens != Some(n(u.input_tokens) + n(u.output_tokens)) {
            broken.push("total_tokens is not input_tokens + output_tokens");
        }
        if n(u.cache_read_tokens) + n(u.cache_write_tokens) > n(u.input_tokens) {
            broken.push("cache reads and writes are not part of input_tokens");
        }
        if n(u.cache_write_1h_tokens) > n(u.cache_write_tokens) {
            broken.push("1-hour cache writes are not part of cache_write_tokens");
        }
        if n(u.reasoning_tokens) > n(u.output_tokens) {
            broken.push("reasoning_tokens are not part of output_tokens");
        }
        if !broken.is_empty() {
            failures.push(format!("{}: {} in {u:?}", case.file, broken.join("; ")));
        }
    }
    fail_if_any("normalized usage breaks the read API's token semantics", failures);
}

#[test]
fn priced_fixtures_cost_exactly_what_was_computed_by_hand_from_pricing_json() {
    let table = PriceTable::builtin();
    let mut failures = Vec::new();
    let mut priced = BTreeSet::new();
    for case in load_cases() {
        let Some((total, by_hand)) = &case.cost else { continue };
        priced.insert(case.provider.name());
        // The expected model and usage: that the scanner reads them is what
        // `whole_bodies_give_the_expected_usage_model_text_and_tool_calls` proves.
        let model = case.model.as_deref().unwrap_or_else(|| panic!("{}: a priced case needs a model", case.file));
        let usage = case.usage.unwrap_or_else(|| panic!("{}: a priced case needs usage", case.file));
        match table.cost(case.provider, model, &usage) {
            None => failures.push(format!("{}: {model:?} is not priced by pricing.json", case.file)),
            Some(cost) if cost.total.to_string() != *total => failures.push(format!(
                "{}: cost {} (breakdown {:?}), by hand {total}: {by_hand}",
                case.file, cost.total, cost.breakdown
            )),
            Some(_) => {}
        }
    }
    assert_eq!(priced.len(), 3, "every provider has a priced fixture: {priced:?}");
    fail_if_any("costs differ from the by-hand computation", failures);
}
