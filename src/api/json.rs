//! Response shapes of the read API (API.md "Read API"); the command line's `--json` prints the
//! same.

use serde_json::{json, Value};

use crate::capture::layout::to_hex;
use crate::capture::summary::{AgentSummary, SessionSummary};
use crate::capture::CallRecord;

/// A `Call`: the record's fields as stored (they follow the API's names), with `findings`
/// always present as a list.
pub fn call(record: &CallRecord) -> Value {
    let mut v = serde_json::to_value(record).expect("a record always serializes");
    if let Value::Object(map) = &mut v {
        map.entry("findings").or_insert_with(|| json!([]));
    }
    v
}

pub fn cursor(next: Option<&[u8]>) -> Value {
    next.map_or(Value::Null, |n| Value::String(to_hex(n)))
}

pub fn agents(list: &[AgentSummary]) -> Value {
    json!({ "agents": list.iter().map(AgentSummary::to_json).collect::<Vec<_>>() })
}

pub fn sessions(list: &[SessionSummary], next: Option<&[u8]>) -> Value {
    json!({
        "sessions": list.iter().map(SessionSummary::to_json).collect::<Vec<_>>(),
        "next_cursor": cursor(next),
    })
}

pub fn session(summary: &SessionSummary, calls: &[CallRecord], next: Option<&[u8]>) -> Value {
    json!({
        "session": summary.to_json(),
        "calls": calls.iter().map(call).collect::<Vec<_>>(),
        "next_cursor": cursor(next),
    })
}
