//! The capture record of one call, and its encoding in the store.
//!
//! Field names follow the `Call` shape of the read API. Usage, cost, content and tools come from
//! the usage scanner (`usage`), the request inspector (`inspect`) and the price table
//! (`pricing`). Encoded as one version byte then JSON, so later versions can change the layout
//! and still read old records; fields added within a version default when absent.

use serde::{Deserialize, Serialize};

use super::layout::started_ms;
use super::summary::Contribution;
use crate::pricing::Cost;
use crate::scan::Finding;
use crate::usage::Usage;

/// Version byte of the current record encoding.
pub const RECORD_VERSION: u8 = 1;

/// Bytes reserved for a record's encoding before it is written.
const ENCODE_CAPACITY: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    UpstreamError,
    ClientCancelled,
    Timeout,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    None,
    Metadata,
    Full,
}

impl Retention {
    pub fn parse(v: &[u8]) -> Option<Retention> {
        match v {
            b"none" => Some(Retention::None),
            b"metadata" => Some(Retention::Metadata),
            b"full" => Some(Retention::Full),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Env {
    Production,
    Staging,
    Development,
}

impl Env {
    pub fn parse(v: &[u8]) -> Option<Env> {
        match v {
            b"production" => Some(Env::Production),
            b"staging" => Some(Env::Staging),
            b"development" => Some(Env::Development),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Our own id for the call (UUIDv7: time-ordered), returned as `x-kurral-request-id`.
    pub id: String,
    pub session_id: String,
    pub user: String,
    pub key_id: String,
    pub agent: String,
    pub env: Env,
    pub provider: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Status the upstream answered with, when it answered.
    pub upstream_status: Option<u16>,
    pub outcome: Outcome,
    /// Short reason when the outcome is not `ok`; never contains credentials.
    pub error: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub started_at: String,
    /// From the first byte of the request head to the last byte relayed to the client.
    pub latency_ms: f64,
    /// From request start to the upstream's response head.
    pub ttfb_ms: Option<f64>,
    /// From request start to the first body byte written to the client; streams only.
    pub ttft_ms: Option<f64>,
    pub retention: Retention,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes relayed to the client.
    pub response_bytes: u64,
    /// The model the provider says answered, when it names one (often a dated snapshot).
    #[serde(default)]
    pub response_model: Option<String>,
    /// Normalized token counts; null when the provider sent none (or the call never got that far).
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The provider's own usage object, verbatim (streams: merged by the provider's rule).
    #[serde(default)]
    pub usage_raw: Option<serde_json::Value>,
    /// Total cost in USD; null when the model is not priced or no usage was seen.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// The cost per token kind, exact, with the price table's version.
    #[serde(default)]
    pub cost: Option<Cost>,
    /// Usage was seen but the price table does not know the model.
    #[serde(default)]
    pub unpriced_model: bool,
    /// Time the proxy itself added: request handling before the upstream write (connecting
    /// excluded) plus the time from the upstream's response head to its relay.
    #[serde(default)]
    pub proxy_overhead_ms: Option<f64>,
    /// The client sent no session id; the proxy made this call's (so its session is new).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_generated: bool,
    /// The proxy asked the upstream for stream usage the client had not asked for
    /// (`stream_options.include_usage`), and removed it from what the client received.
    #[serde(default)]
    pub stream_usage_added: bool,
    /// Content by retention: null, summaries, or the complete bodies (see `capture::content`).
    #[serde(default)]
    pub request: Option<serde_json::Value>,
    #[serde(default)]
    pub response: Option<serde_json::Value>,
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// Security findings (`scan`): kind, severity, where, a masked excerpt; never the secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Findings past the per-call cap, counted only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub findings_dropped: u32,
    /// Part of the call's text was not scanned (past the per-call scan budget).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scan_incomplete: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl CallRecord {
    pub fn encode(&self) -> Vec<u8> {
        // A metadata record is 1-2 KiB: start there rather than grow (and copy) from nothing.
        let mut out = Vec::with_capacity(ENCODE_CAPACITY);
        out.push(RECORD_VERSION);
        serde_json::to_writer(&mut out, self).expect("a record always serializes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CallRecord, String> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, json)) => serde_json::from_slice(json).map_err(|e| format!("bad record: {e}")),
            Some((v, _)) => Err(format!("unknown record version {v}")),
            None => Err("empty record".into()),
        }
    }
}

/// A record as the writer thread takes it: already encoded, with the few fields its keys and
/// sums need beside the bytes.
///
/// The worker that finished the call encodes it (`CaptureSender::send`), so serializing a record
/// and freeing its JSON trees spread over the workers instead of queueing on the one writer,
/// which is left with what only it can do: the aggregates and the RocksDB batch.
#[derive(Debug)]
pub struct Encoded {
    pub id: String,
    pub user: String,
    pub session_id: String,
    pub agent: String,
    pub env: Env,
    /// When the call started, in ms since the epoch (`layout::started_ms`).
    pub started_ms: u64,
    /// The proxy made the session id for this call, so no stored session can have it.
    pub session_generated: bool,
    /// What the call adds to its session's and agent's sums.
    pub contribution: Contribution,
    /// `CallRecord::encode`; empty when the sink keeps no records (`--no-capture`).
    pub bytes: Vec<u8>,
}

impl Encoded {
    pub fn new(record: CallRecord) -> Encoded {
        let bytes = record.encode();
        Encoded::with_bytes(record, bytes)
    }

    /// Everything but the encoding, for a sink that keeps no records.
    pub fn unencoded(record: CallRecord) -> Encoded {
        Encoded::with_bytes(record, Vec::new())
    }

    fn with_bytes(record: CallRecord, bytes: Vec<u8>) -> Encoded {
        let started_ms = started_ms(&record);
        let contribution = Contribution::of(&record);
        Encoded {
            id: record.id,
            user: record.user,
            session_id: record.session_id,
            agent: record.agent,
            env: record.env,
            started_ms,
            session_generated: record.session_generated,
            contribution,
            bytes,
        }
    }
}

#[cfg(test)]
pub(crate) fn sample(id: &str) -> CallRecord {
    CallRecord {
        id: id.into(),
        session_id: "s".into(),
        user: "u".into(),
        key_id: "key_1".into(),
        agent: "agent".into(),
        env: Env::Production,
        provider: "openai".into(),
        endpoint: "chat.completions".into(),
        model: Some("gpt-4o".into()),
        stream: true,
        status: 200,
        upstream_status: Some(200),
        outcome: Outcome::Ok,
        error: None,
        started_at: "2026-11-26T00:00:00.000Z".into(),
        latency_ms: 12.5,
        ttfb_ms: Some(3.0),
        ttft_ms: Some(3.1),
        retention: Retention::Metadata,
        request_bytes: 10,
        response_bytes: 20,
        response_model: None,
        usage: None,
        usage_raw: None,
        cost_usd: None,
        cost: None,
        unpriced_model: false,
        proxy_overhead_ms: None,
        stream_usage_added: false,
        session_generated: false,
        request: None,
        response: None,
        tools: None,
        findings: Vec::new(),
        findings_dropped: 0,
        scan_incomplete: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_is_versioned() {
        let r = sample("a");
        let bytes = r.encode();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(CallRecord::decode(&bytes).unwrap(), r);
        assert!(CallRecord::decode(&[9, b'{', b'}']).is_err());
        assert!(CallRecord::decode(&[]).is_err());
        let json: serde_json::Value = serde_json::from_slice(&bytes[1..]).unwrap();
        assert_eq!(json["outcome"], "ok");
        assert_eq!(json["env"], "production");
    }
}
