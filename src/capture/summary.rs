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
//! Encoding: one version byte, then JSON. Fields added within a version default when absent.

use serde::{Deserialize, Serialize};

use super::layout::rfc3339_ms;
use super::record::{CallRecord, Env, Outcome};
use crate::pricing::Usd;
use crate::scan::{Category, Finding};

/// Version byte of the current summary encoding.
pub const SUMMARY_VERSION: u8 = 1;

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
    #[serde(flatten)]
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
    #[serde(flatten)]
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
    let mut out = vec![SUMMARY_VERSION];
    serde_json::to_writer(&mut out, value).expect("a summary always serializes");
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&SUMMARY_VERSION, json)) => serde_json::from_slice(json).map_err(|e| format!("bad summary: {e}")),
        Some((v, _)) => Err(format!("unknown summary version {v}")),
        None => Err("empty summary".into()),
    }
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
}
