//! Per-session and per-agent aggregates, kept up to date by the writer as records arrive.
//!
//! Tokens and calls are integers; cost is summed exactly (`Usd`, 1e-15 USD units), never as
//! floats, so a session of a million calls totals to the cent what its calls say. A call whose
//! model is not priced adds nothing to the cost and counts in `unpriced_calls`, so a reader can
//! tell a complete total from a lower bound.
//!
//! A session belongs to the agent and env of the first call recorded for it; later calls under
//! the same session id with another agent still count in the session, and in their own agent's
//! call counts, but the session stays listed under its first agent. `started_at` is the earliest
//! call start seen, `last_at` the latest.
//!
//! Encoding: one version byte, then the summary as positional MessagePack (version 2: each
//! struct an array of its fields in declaration order, the totals nested), as call records are
//! stored. A field added later goes last in its struct with `#[serde(default)]`, so that a shorter
//! stored array still reads. Version 1 (JSON, the totals' fields beside the others) still reads.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::layout::rfc3339_ms;
use super::record::{CallRecord, Env, Outcome};
use crate::pricing::Usd;
use crate::scan::{Category, Finding};

/// Version byte of the current summary encoding.
pub const SUMMARY_VERSION: u8 = 2;
/// Version byte of summaries written as JSON, with the totals flattened into the summary.
const SUMMARY_VERSION_JSON: u8 = 1;

/// What one call adds to the sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contribution {
    pub error: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Usd,
    pub unpriced: bool,
    pub findings: FindingCounts,
}

/// Security findings counted by category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingCounts {
    #[serde(default)]
    pub secret: u64,
    #[serde(default)]
    pub pii: u64,
    #[serde(default)]
    pub injection: u64,
    #[serde(default)]
    pub tool: u64,
}

impl FindingCounts {
    pub fn of(findings: &[Finding]) -> FindingCounts {
        let mut c = FindingCounts::default();
        for f in findings {
            *match f.category {
                Category::Secret => &mut c.secret,
                Category::Pii => &mut c.pii,
                Category::Injection => &mut c.injection,
                Category::Tool => &mut c.tool,
            } += 1;
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.secret + self.pii + self.injection + self.tool
    }

    fn add(&mut self, o: &FindingCounts) {
        self.secret += o.secret;
        self.pii += o.pii;
        self.injection += o.injection;
        self.tool += o.tool;
    }
}

impl Contribution {
    pub fn of(r: &CallRecord) -> Contribution {
        let usage = r.usage.unwrap_or_default();
        Contribution {
            error: r.outcome != Outcome::Ok,
            input_tokens: usage.input_tokens.unwrap_or(0),
            output_tokens: usage.output_tokens.unwrap_or(0),
            cost: r.cost.as_ref().map_or(Usd::ZERO, |c| c.total),
            unpriced: r.unpriced_model,
            findings: FindingCounts::of(&r.findings),
        }
    }
}

/// Sums shared by sessions and agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub calls: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Exact sum of the priced calls' costs.
    pub cost: Usd,
    #[serde(default)]
    pub unpriced_calls: u64,
    /// Security findings of the calls, by category.
    #[serde(default)]
    pub findings: FindingCounts,
}

impl Totals {
    fn add(&mut self, c: &Contribution) {
        self.calls += 1;
        self.errors += u64::from(c.error);
        self.input_tokens = self.input_tokens.saturating_add(c.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(c.output_tokens);
        self.cost += c.cost;
        self.unpriced_calls += u64::from(c.unpriced);
        self.findings.add(&c.findings);
    }

    /// `head` (an object) with the totals' fields added, as the read API shows them.
    fn json_with(&self, mut head: serde_json::Value) -> serde_json::Value {
        if let serde_json::Value::Object(map) = &mut head {
            map.insert("calls".into(), self.calls.into());
            map.insert("errors".into(), self.errors.into());
            map.insert("input_tokens".into(), self.input_tokens.into());
            map.insert("output_tokens".into(), self.output_tokens.into());
            map.insert("cost_usd".into(), self.cost.to_f64().into());
            map.insert("cost_exact".into(), self.cost.to_string().into());
            map.insert("unpriced_calls".into(), self.unpriced_calls.into());
            map.insert("findings".into(), self.findings.total().into());
            map.insert("findings_by_category".into(), serde_json::json!(self.findings));
        }
        head
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session_id: String,
    pub agent: String,
    pub env: Env,
    pub started_ms: u64,
    pub last_ms: u64,
    pub totals: Totals,
}

impl SessionSummary {
    pub fn new(session_id: &str, agent: &str, env: Env, ms: u64) -> SessionSummary {
        SessionSummary {
            session_id: session_id.to_string(),
            agent: agent.to_string(),
            env,
            started_ms: ms,
            last_ms: ms,
            totals: Totals::default(),
        }
    }

    pub fn add(&mut self, ms: u64, c: &Contribution) {
        self.started_ms = self.started_ms.min(ms);
        self.last_ms = self.last_ms.max(ms);
        self.totals.add(c);
    }

    /// The read API's `Session`.
    pub fn to_json(&self) -> serde_json::Value {
        self.totals.json_with(serde_json::json!({
            "session_id": self.session_id,
            "agent": self.agent,
            "env": self.env,
            "started_at": rfc3339_ms(self.started_ms),
            "last_at": rfc3339_ms(self.last_ms),
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub agent: String,
    pub first_ms: u64,
    pub last_ms: u64,
    /// Sessions whose first call came from this agent.
    pub sessions: u64,
    pub totals: Totals,
}

impl AgentSummary {
    pub fn new(agent: &str, ms: u64) -> AgentSummary {
        AgentSummary { agent: agent.to_string(), first_ms: ms, last_ms: ms, sessions: 0, totals: Totals::default() }
    }

    pub fn add(&mut self, ms: u64, new_session: bool, c: &Contribution) {
        self.first_ms = self.first_ms.min(ms);
        self.last_ms = self.last_ms.max(ms);
        self.sessions += u64::from(new_session);
        self.totals.add(c);
    }

    /// An entry of the read API's `agents` list.
    pub fn to_json(&self) -> serde_json::Value {
        self.totals.json_with(serde_json::json!({
            "agent": self.agent,
            "first_seen": rfc3339_ms(self.first_ms),
            "last_seen": rfc3339_ms(self.last_ms),
            "sessions": self.sessions,
        }))
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(SUMMARY_VERSION);
    rmp_serde::encode::write(&mut out, value).expect("a summary always serializes");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let bad = |e: &dyn std::fmt::Display| format!("bad summary: {e}");
    match bytes.split_first() {
        Some((&SUMMARY_VERSION, packed)) => rmp_serde::from_slice(packed).map_err(|e| bad(&e)),
        Some((&SUMMARY_VERSION_JSON, json)) => {
            let flat = serde_json::from_slice(json).map_err(|e| bad(&e))?;
            serde_json::from_value(nest_totals(flat)).map_err(|e| bad(&e))
        }
        Some((v, _)) => Err(format!("unknown summary version {v}")),
        None => Err("empty summary".into()),
    }
}

/// A version 1 summary's object with the fields of `Totals` moved into a nested `totals`.
fn nest_totals(flat: serde_json::Value) -> serde_json::Value {
    // The fields `Totals` had when version 1 was current; later ones are never in such a summary.
    const TOTALS: [&str; 7] =
        ["calls", "errors", "input_tokens", "output_tokens", "cost", "unpriced_calls", "findings"];
    let serde_json::Value::Object(mut fields) = flat else { return flat };
    let totals: serde_json::Map<String, serde_json::Value> =
        TOTALS.iter().filter_map(|&name| Some((name.to_string(), fields.remove(name)?))).collect();
    fields.insert("totals".into(), totals.into());
    fields.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::record::sample;
    use crate::usage::Usage;

    #[test]
    fn sums_are_exact_and_round_trip() {
        let mut r = sample("a");
        r.usage = Some(Usage { input_tokens: Some(10), output_tokens: Some(5), ..Default::default() });
        r.cost = Some(crate::pricing::Cost {
            model: "m".into(),
            pricing_version: "v".into(),
            long_context: false,
            total: "0.1".parse().unwrap(),
            breakdown: Default::default(),
        });
        let mut s = SessionSummary::new("s", "agent", Env::Production, 2000);
        for _ in 0..3 {
            s.add(2000, &Contribution::of(&r));
        }
        let mut failed = sample("b");
        failed.outcome = Outcome::UpstreamError;
        failed.unpriced_model = true;
        s.add(1000, &Contribution::of(&failed));
        assert_eq!((s.started_ms, s.last_ms), (1000, 2000));
        assert_eq!((s.totals.calls, s.totals.errors, s.totals.unpriced_calls), (4, 1, 1));
        assert_eq!((s.totals.input_tokens, s.totals.output_tokens), (30, 15));
        // 0.1 + 0.1 + 0.1 is 0.3 exactly here, unlike in f64.
        assert_eq!(s.totals.cost.to_string(), "0.3");
        assert_eq!(s.to_json()["cost_usd"], 0.3);
        assert_eq!(decode::<SessionSummary>(&encode(&s)).unwrap(), s);
        assert!(decode::<SessionSummary>(&[7, b'{', b'}']).is_err());
    }

    #[test]
    fn summaries_are_stored_compact_and_round_trip() {
        let mut s =
            SessionSummary::new("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", "support-bot", Env::Staging, 1_700_000_000_000);
        s.add(
            1_700_000_000_500,
            &Contribution {
                error: true,
                input_tokens: 1200,
                output_tokens: 80,
                cost: "0.000123".parse().unwrap(),
                unpriced: true,
                findings: FindingCounts { secret: 1, pii: 2, injection: 3, tool: 4 },
            },
        );
        let bytes = encode(&s);
        assert_eq!(bytes[0], SUMMARY_VERSION);
        let json = serde_json::to_vec(&s).unwrap();
        assert!(bytes.len() * 2 < json.len(), "{} bytes against {} as JSON", bytes.len(), json.len());
        assert_eq!(decode::<SessionSummary>(&bytes).unwrap(), s);
        let mut a = AgentSummary::new("support-bot", 5);
        a.add(9, true, &Contribution { input_tokens: 7, ..Default::default() });
        assert_eq!(decode::<AgentSummary>(&encode(&a)).unwrap(), a);
        assert!(decode::<SessionSummary>(&bytes[..bytes.len() - 3]).is_err(), "a summary cut short");
    }

    #[test]
    fn json_summaries_of_earlier_stores_still_read() {
        // As version 1 wrote them: JSON, the totals' fields beside the others; the oldest
        // without `unpriced_calls` and `findings`.
        let session = br#"{"session_id":"s1","agent":"bot","env":"production","started_ms":1000,"last_ms":2000,"calls":3,"errors":1,"input_tokens":30,"output_tokens":15,"cost":"0.3","unpriced_calls":1,"findings":{"secret":1,"pii":0,"injection":2,"tool":0}}"#;
        let s: SessionSummary = decode(&[&[1u8][..], session].concat()).unwrap();
        assert_eq!((s.session_id.as_str(), s.agent.as_str(), s.env), ("s1", "bot", Env::Production));
        assert_eq!((s.started_ms, s.last_ms), (1000, 2000));
        let t = &s.totals;
        assert_eq!((t.calls, t.errors, t.input_tokens, t.output_tokens, t.unpriced_calls), (3, 1, 30, 15, 1));
        assert_eq!((t.cost.to_string().as_str(), t.findings.secret, t.findings.injection), ("0.3", 1, 2));

        let agent = br#"{"agent":"bot","first_ms":5,"last_ms":9,"sessions":2,"calls":4,"errors":0,"input_tokens":8,"output_tokens":4,"cost":"0"}"#;
        let a: AgentSummary = decode(&[&[1u8][..], agent].concat()).unwrap();
        assert_eq!((a.agent.as_str(), a.first_ms, a.last_ms, a.sessions), ("bot", 5, 9, 2));
        assert_eq!((a.totals.calls, a.totals.input_tokens, a.totals.unpriced_calls), (4, 8, 0));
        assert_eq!(a.totals.findings, FindingCounts::default());
    }

    #[test]
    fn a_compact_summary_from_before_a_totals_field_was_added_reads_with_its_default() {
        // A session whose totals array ends before `unpriced_calls` and `findings`.
        let old = ("s", "bot", Env::Production, 1u64, 2u64, (3u64, 0u64, 10u64, 5u64, "0.5"));
        let bytes = [&[SUMMARY_VERSION][..], &rmp_serde::to_vec(&old).unwrap()].concat();
        let s: SessionSummary = decode(&bytes).unwrap();
        assert_eq!((s.totals.calls, s.totals.input_tokens, s.totals.unpriced_calls), (3, 10, 0));
        assert_eq!(s.totals.cost.to_string(), "0.5");
        assert_eq!(s.totals.findings, FindingCounts::default());
    }
}
