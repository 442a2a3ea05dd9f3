//! The capture record of one call, and its encoding in the store.
//!
//! Field names follow the `Call` shape of the read API. Usage, cost, content and tools come from
//! the usage scanner (`usage`), the request inspector (`inspect`) and the price table
//! (`pricing`).
//!
//! In the store a record is one version byte, then:
//! - version 2 (written now): MessagePack, each struct as an array of its fields in declaration
//!   order, every field present (none skipped, so positions hold). Field names are most of a
//!   record's JSON, so this halves it, and encoding is quicker: fewer bytes for the worker to
//!   write and for the writer to copy into the log and the memtable. A field added later goes
//!   last, with `#[serde(default)]`, so that shorter records still read.
//! - version 1 (stores written before): JSON; read, never written.
//!
//! The read API's JSON (human-readable serializers) leaves out the last few fields when empty or
//! false, as it always has.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::layout::started_ms;
use super::summary::Contribution;
use crate::pricing::Cost;
use crate::scan::Finding;
use crate::usage::Usage;

/// Version byte of the current record encoding (MessagePack, positional).
pub const RECORD_VERSION: u8 = 2;
/// Version byte of the JSON records of earlier stores.
pub const RECORD_VERSION_JSON: u8 = 1;

/// Bytes reserved for a record's encoding before it is written: a metadata record's size.
const ENCODE_CAPACITY: usize = 1024;

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(default)]
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
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// Findings past the per-call cap, counted only.
    #[serde(default)]
    pub findings_dropped: u32,
    /// Part of the call's text was not scanned (past the per-call scan budget).
    #[serde(default)]
    pub scan_incomplete: bool,
}

impl Serialize for CallRecord {
    // A field named in the pattern below but not serialized is an unused binding: refused.
    #[deny(unused_variables)]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every field named here, so that a field added to the struct and not here fails to build.
        let CallRecord {
            id,
            session_id,
            user,
            key_id,
            agent,
            env,
            provider,
            endpoint,
            model,
            stream,
            status,
            upstream_status,
            outcome,
            error,
            started_at,
            latency_ms,
            ttfb_ms,
            ttft_ms,
            retention,
            request_bytes,
            response_bytes,
            response_model,
            usage,
            usage_raw,
            cost_usd,
            cost,
            unpriced_model,
            proxy_overhead_ms,
            session_generated,
            stream_usage_added,
            request,
            response,
            tools,
            findings,
            findings_dropped,
            scan_incomplete,
        } = self;
        // JSON leaves out a field marked `omit if` when that holds; the positional encoding
        // writes every field, and its array's length is the number of fields listed.
        let readable = s.is_human_readable();
        macro_rules! fields {
            ($($f:ident $(omit if $empty:expr)?),* $(,)?) => {{
                let mut st = s.serialize_struct("CallRecord", [$(stringify!($f)),*].len())?;
                $(
                    if false $(|| (readable && $empty))? {
                        st.skip_field(stringify!($f))?;
                    } else {
                        st.serialize_field(stringify!($f), $f)?;
                    }
                )*
                st.end()
            }};
        }
        fields!(
            id, session_id, user, key_id, agent, env, provider, endpoint, model, stream, status, upstream_status,
            outcome, error, started_at, latency_ms, ttfb_ms, ttft_ms, retention, request_bytes, response_bytes,
            response_model, usage, usage_raw, cost_usd, cost, unpriced_model, proxy_overhead_ms,
            session_generated omit if !session_generated,
            stream_usage_added, request, response, tools,
            findings omit if findings.is_empty(),
            findings_dropped omit if *findings_dropped == 0,
            scan_incomplete omit if !scan_incomplete,
        )
    }
}

impl CallRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Start with room for a metadata record rather than grow (and copy) from nothing.
        let mut out = Vec::with_capacity(ENCODE_CAPACITY);
        out.push(RECORD_VERSION);
        rmp_serde::encode::write(&mut out, self).expect("a record always serializes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CallRecord, String> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, packed)) => rmp_serde::from_slice(packed).map_err(|e| format!("bad record: {e}")),
            Some((&RECORD_VERSION_JSON, json)) => serde_json::from_slice(json).map_err(|e| format!("bad record: {e}")),
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

    /// A record whose every field differs from its default, content with nested JSON included.
    fn every_field_set() -> CallRecord {
        let cost = crate::pricing::Cost {
            model: "gpt-4o".into(),
            pricing_version: "2026-12-01".into(),
            long_context: true,
            total: "0.01052".parse().unwrap(),
            breakdown: crate::pricing::Breakdown { input: "0.00044".parse().unwrap(), ..Default::default() },
        };
        let finding = Finding {
            kind: crate::scan::Kind::OpenaiApiKey,
            category: crate::scan::Category::Secret,
            severity: crate::scan::Severity::High,
            location: crate::scan::units::Place::Answer,
            index: Some(3),
            excerpt: "sk-p…[masked] «é»".into(),
        };
        CallRecord {
            error: Some("upstream said \"no\"\n".into()),
            ttfb_ms: Some(f64::MIN_POSITIVE),
            retention: Retention::Full,
            request_bytes: u64::MAX,
            response_model: Some("gpt-4o-2024-08-06".into()),
            usage: Some(Usage { input_tokens: Some(1), reasoning_tokens: Some(u64::MAX), ..Usage::default() }),
            usage_raw: Some(serde_json::json!({"prompt_tokens": 1, "details": {"cached": [1, -2, 0.5, null, "x"]}})),
            cost_usd: Some(0.01052),
            cost: Some(cost),
            unpriced_model: true,
            proxy_overhead_ms: Some(0.084),
            session_generated: true,
            stream_usage_added: true,
            request: Some(serde_json::json!({"body": "{\"a\":1}", "truncated": true})),
            response: Some(serde_json::json!({"summary": "日本語 and emoji 🦀", "truncated": false})),
            tools: Some(serde_json::json!({"defined": ["search"], "calls": [], "results": []})),
            findings: vec![finding],
            findings_dropped: 7,
            scan_incomplete: true,
            outcome: Outcome::UpstreamError,
            env: Env::Staging,
            ..sample("0193a0b2-1c2d-7e3f-8a4b-5c6d7e8f9a0b")
        }
    }

    #[test]
    fn records_round_trip_in_the_compact_encoding() {
        for r in [sample("a"), every_field_set()] {
            let bytes = r.encode();
            assert_eq!(bytes[0], RECORD_VERSION);
            assert_eq!(CallRecord::decode(&bytes).unwrap(), r);
        }
        // Positional and without field names: well under the JSON's size.
        let r = every_field_set();
        assert!(r.encode().len() * 3 < serde_json::to_vec(&r).unwrap().len() * 2);
        assert!(CallRecord::decode(&[9, 0x90]).is_err());
        assert!(CallRecord::decode(&[]).is_err());
        let cut = r.encode();
        assert!(CallRecord::decode(&cut[..cut.len() / 2]).is_err(), "a record cut short is refused");
    }

    #[test]
    fn json_records_of_earlier_stores_still_read() {
        for r in [sample("a"), every_field_set()] {
            let mut v1 = vec![RECORD_VERSION_JSON];
            serde_json::to_writer(&mut v1, &r).unwrap();
            assert_eq!(CallRecord::decode(&v1).unwrap(), r);
        }
        // A version 1 record written before the scan fields existed.
        let mut old = serde_json::to_value(sample("b")).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| k != "stream_usage_added" && k != "tools");
        let bytes = [&[RECORD_VERSION_JSON][..], &serde_json::to_vec(&old).unwrap()].concat();
        let r = CallRecord::decode(&bytes).unwrap();
        assert!(!r.stream_usage_added && r.tools.is_none() && r.findings.is_empty());
    }

    #[test]
    fn a_compact_record_from_before_a_field_was_added_reads_with_its_default() {
        // The last field, `scan_incomplete` (false: one byte), removed as if it did not exist yet.
        let bytes = sample("a").encode();
        assert_eq!(&bytes[1..3], &[0xdc, 0], "an array (16-bit length) of the fields");
        assert_eq!(bytes[3], 36, "every field of the record, none left out");
        assert_eq!(bytes.last(), Some(&0xc2));
        let mut shorter = bytes[..bytes.len() - 1].to_vec();
        shorter[3] -= 1;
        assert_eq!(CallRecord::decode(&shorter).unwrap(), sample("a"));
    }

    #[test]
    fn the_read_apis_json_leaves_out_empty_scan_fields() {
        let json = serde_json::to_value(sample("a")).unwrap();
        for absent in ["session_generated", "findings", "findings_dropped", "scan_incomplete"] {
            assert!(json.get(absent).is_none(), "{absent}");
        }
        assert_eq!(json["outcome"], "ok");
        assert_eq!(json["env"], "production");
        assert_eq!(json["stream_usage_added"], false);
        let json = serde_json::to_value(every_field_set()).unwrap();
        assert_eq!(json["session_generated"], true);
        assert_eq!(json["findings"][0]["kind"], "openai_api_key");
        assert_eq!(json["findings_dropped"], 7);
        assert_eq!(json["scan_incomplete"], true);
        assert_eq!(json["cost"]["breakdown"]["input"], "0.00044");
    }
}
