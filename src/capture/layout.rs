//! The capture store's keys: which column family holds what, and how keys are built and read.
//!
//! Column families, not key prefixes in one keyspace: each kind of key has its own access pattern
//! and size (records are KiB to MiB, index entries a few dozen bytes with empty values), so each
//! gets its own memtables, compaction and bloom filter, and a scan of one kind never steps over
//! another. A record, its indexes and the aggregates it changes are written in one `WriteBatch`,
//! which is atomic across column families.
//!
//! | family           | key                                               | value            |
//! |------------------|---------------------------------------------------|------------------|
//! | `call`           | U ‖ call id                                       | `CallRecord`     |
//! | `session`        | U ‖ session id                                    | `SessionSummary` |
//! | `agent`          | U ‖ agent                                         | `AgentSummary`   |
//! | `agent_sessions` | U ‖ P(agent) ‖ env tag ‖ !started_ms ‖ session id | empty            |
//! | `session_calls`  | U ‖ P(session id) ‖ started_ms ‖ call id           | empty            |
//! | `by_time`        | latest started_ms ‖ U ‖ call id                   | (started_ms ‖ P(call key))* |
//!
//! - `U` is the user, `P(x)`: a 4-byte big-endian length then the bytes. Every user's keys start
//!   with U, and a length-prefixed part is never a prefix of another, so one user's range never
//!   holds another's key: isolation is in the keys, a lookup under one user cannot reach another.
//! - Ids (call, session) are their 16 UUID bytes (any other string: its bytes). They come last in
//!   a key, where nothing needs their length, or length-prefixed.
//! - Times are milliseconds since the Unix epoch, big-endian, so byte order is time order;
//!   `!started_ms` (bitwise not) makes the newest session come first in a forward scan.
//! - `agent_sessions` holds two entries per session: env tag 0 (any env) and the tag of the
//!   session's env, so "newest first" with or without an env filter is one range scan.
//! - `by_time` orders every call by start time across users; retention walks it from the oldest.
//!   The writer adds one entry per minute of start times in a batch, not one per call (a
//!   memtable insert per call saved): its key is the latest start of that group and that call's
//!   `call` key, its value each call's start and `call` key. An entry with an empty value, as
//!   stores written before hold, stands for the one call its key names. Retention removes a group
//!   once its latest start has expired, so a call can outlive its expiry by up to a minute.
//!
//! Record and summary values are versioned: a version byte, then the encoding (records: see
//! `record`; summaries: JSON).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::{CallRecord, Env};

pub const CF_CALL: &str = "call";
pub const CF_SESSION: &str = "session";
pub const CF_AGENT: &str = "agent";
pub const CF_AGENT_SESSIONS: &str = "agent_sessions";
pub const CF_SESSION_CALLS: &str = "session_calls";
pub const CF_BY_TIME: &str = "by_time";
/// Every family of this layout.
pub const FAMILIES: [&str; 6] = [CF_CALL, CF_SESSION, CF_AGENT, CF_AGENT_SESSIONS, CF_SESSION_CALLS, CF_BY_TIME];
/// The family of the first layout (key: the call id alone, no user, no indexes). A store that
/// still has it is migrated when opened for writing.
pub const CF_LEGACY_CALLS: &str = "calls";

/// The env tag of `agent_sessions` entries that list a session whatever its env.
pub const ANY_ENV: u8 = 0;

pub fn env_tag(env: Env) -> u8 {
    match env {
        Env::Production => 1,
        Env::Staging => 2,
        Env::Development => 3,
    }
}

/// Appends a length-prefixed part.
fn push_part(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    key.extend_from_slice(bytes);
}

/// A user's prefix: every key of that user starts with it.
pub fn user_prefix(user: &str) -> Vec<u8> {
    user_key(user, 40)
}

/// The user's prefix, with room for `rest` more bytes.
fn user_key(user: &str, rest: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + user.len() + rest);
    push_part(&mut k, user.as_bytes());
    k
}

/// Reads the user prefix at the start of `key`: the user and the rest of the key.
pub fn split_user(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let user = key.get(4..4 + len)?;
    Some((std::str::from_utf8(user).ok()?, &key[4 + len..]))
}

/// An id as stored in keys: its 16 UUID bytes, or its bytes when it is not a UUID.
pub fn id_bytes(id: &str) -> IdBytes<'_> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) => IdBytes::Uuid(u.into_bytes()),
        Err(_) => IdBytes::Text(id.as_bytes()),
    }
}

/// `id_bytes`' answer, without an allocation. Compare ids as byte strings (through `Deref`), as
/// keys order them.
#[derive(Debug, Clone, Copy)]
pub enum IdBytes<'a> {
    Uuid([u8; 16]),
    Text(&'a [u8]),
}

impl std::ops::Deref for IdBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            IdBytes::Uuid(b) => b,
            IdBytes::Text(t) => t,
        }
    }
}

pub fn call_key(user: &str, call_id: &str) -> Vec<u8> {
    id_key(user, &id_bytes(call_id))
}

pub fn session_key(user: &str, session_id: &str) -> Vec<u8> {
    id_key(user, &id_bytes(session_id))
}

/// A `call` or `session` key from the id as stored (`id_bytes`).
pub fn id_key(user: &str, id: &[u8]) -> Vec<u8> {
    let mut k = user_key(user, id.len());
    k.extend_from_slice(id);
    k
}

pub fn agent_key(user: &str, agent: &str) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(agent.as_bytes());
    k
}

/// The range of one agent's sessions under one env tag; entries continue with
/// `!started_ms ‖ session id` (the position).
pub fn agent_sessions_prefix(user: &str, agent: &str, tag: u8) -> Vec<u8> {
    // Room for a position: most keys built here get one (`agent_sessions_key`).
    let mut k = user_key(user, 4 + agent.len() + 1 + 8 + 16);
    push_part(&mut k, agent.as_bytes());
    k.push(tag);
    k
}

/// A whole `agent_sessions` entry: the prefix, then the position, the session id as stored
/// (`id_bytes`). `!started_ms` makes the newest session come first.
pub fn agent_sessions_key(user: &str, agent: &str, tag: u8, started_ms: u64, session_id: &[u8]) -> Vec<u8> {
    let mut k = agent_sessions_prefix(user, agent, tag);
    k.extend_from_slice(&(!started_ms).to_be_bytes());
    k.extend_from_slice(session_id);
    k
}

/// The session id bytes in an `agent_sessions` position (the part after the time).
pub fn position_session(position: &[u8]) -> Option<&[u8]> {
    position.get(8..).filter(|s| !s.is_empty())
}

/// The range of one session's calls; entries continue with `started_ms ‖ call id`.
pub fn session_calls_prefix(user: &str, session_id: &str) -> Vec<u8> {
    session_calls_start(user, &id_bytes(session_id))
}

/// A whole `session_calls` entry: the prefix, then `started_ms ‖ call id`, ids as stored
/// (`id_bytes`).
pub fn session_calls_key(user: &str, session_id: &[u8], started_ms: u64, call_id: &[u8]) -> Vec<u8> {
    let mut k = session_calls_start(user, session_id);
    k.extend_from_slice(&started_ms.to_be_bytes());
    k.extend_from_slice(call_id);
    k
}

/// `session_calls_prefix` from the session id as stored, with room for a position.
fn session_calls_start(user: &str, session_id: &[u8]) -> Vec<u8> {
    let mut k = user_key(user, 4 + session_id.len() + 8 + 16);
    push_part(&mut k, session_id);
    k
}

/// Start times grouped into one `by_time` entry: calls of a batch that started in the same minute.
pub const BY_TIME_GROUP_MS: u64 = 60_000;

/// The key of a `by_time` entry: the group's latest start, then that call's `call` key.
pub fn by_time_key(latest_ms: u64, call_key: &[u8]) -> Vec<u8> {
    [&latest_ms.to_be_bytes()[..], call_key].concat()
}

/// A `by_time` key read back: the group's latest start, then a `call` key (U ‖ call id).
pub fn split_by_time(key: &[u8]) -> Option<(u64, &[u8])> {
    let ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    Some((ms, &key[8..]))
}

/// Adds a call to the value of a `by_time` entry.
pub fn push_by_time_call(value: &mut Vec<u8>, started_ms: u64, call_key: &[u8]) {
    value.extend_from_slice(&started_ms.to_be_bytes());
    push_part(value, call_key);
}

/// The calls a `by_time` entry stands for, as (start, `call` key): those its value lists, or the
/// one its key names when the value is empty. None when the entry is malformed.
pub fn by_time_calls<'a>(key: &'a [u8], value: &'a [u8]) -> Option<Vec<(u64, &'a [u8])>> {
    if value.is_empty() {
        return split_by_time(key).map(|call| vec![call]);
    }
    let mut calls = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let ms = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        calls.push((ms, rest.get(12..12 + len)?));
        rest = &rest[12 + len..];
    }
    Some(calls)
}

/// The smallest key greater than every key that starts with `prefix` (the end of its range);
/// `None` when no such key exists (all bytes 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// When a call started, in ms since the epoch: its `started_at`, else the time in its UUIDv7 id,
/// else 0 (sorted first, never lost).
pub fn started_ms(record: &CallRecord) -> u64 {
    if let Ok(t) = humantime::parse_rfc3339_weak(&record.started_at) {
        if let Ok(d) = t.duration_since(UNIX_EPOCH) {
            return d.as_millis() as u64;
        }
    }
    uuid::Uuid::try_parse(&record.id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        })
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC, as records carry it.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Hex, for opaque cursors.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_range_never_holds_another_users_key() {
        // "al" + anything must not fall in "alice"'s range, nor the reverse.
        let alice = user_prefix("alice");
        let al = call_key("al", "ice-call");
        assert!(!al.starts_with(&alice));
        assert!(!call_key("alice", "x").starts_with(&user_prefix("al")));
        assert_eq!(split_user(&call_key("alice", "x")), Some(("alice", &b"x"[..])));
    }

    #[test]
    fn newest_session_sorts_first_and_ids_are_compact() {
        let sid = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
        let entry = |ms| agent_sessions_key("u", "agent", ANY_ENV, ms, &id_bytes(sid));
        assert!(entry(2000) < entry(1000));
        assert_eq!(id_bytes(sid).len(), 16);
        assert_eq!(&*id_bytes("s-1"), b"s-1");
        let prefix = agent_sessions_prefix("u", "agent", ANY_ENV);
        assert_eq!(position_session(&entry(5)[prefix.len()..]).unwrap(), &*id_bytes(sid));
    }

    #[test]
    fn whole_keys_are_their_prefix_then_their_position() {
        let (sid, cid) = ("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", "not-a-uuid");
        let uuid = uuid::Uuid::parse_str(sid).unwrap().into_bytes();
        assert_eq!(
            agent_sessions_key("u", "agent", 2, 77, &id_bytes(sid)),
            [&agent_sessions_prefix("u", "agent", 2)[..], &(!77u64).to_be_bytes(), &uuid].concat()
        );
        assert_eq!(
            session_calls_key("u", &id_bytes(sid), 77, &id_bytes(cid)),
            [&session_calls_prefix("u", sid)[..], &77u64.to_be_bytes(), b"not-a-uuid"].concat()
        );
        assert_eq!(session_calls_prefix("u", sid), [&user_prefix("u")[..], &[0, 0, 0, 16], &uuid].concat());
        assert_eq!(id_key("u", &id_bytes(sid)), session_key("u", sid));
    }

    #[test]
    fn by_time_entries_list_their_calls() {
        let (a, b) = (call_key("u", "call-a"), call_key("u", "call-b"));
        let mut value = Vec::new();
        push_by_time_call(&mut value, 5, &a);
        push_by_time_call(&mut value, 7, &b);
        let key = by_time_key(7, &b);
        assert_eq!(by_time_calls(&key, &value).unwrap(), vec![(5, &a[..]), (7, &b[..])]);
        // An entry of one call, as stores written before hold: the key names it.
        assert_eq!(by_time_calls(&by_time_key(3, &a), &[]).unwrap(), vec![(3, &a[..])]);
        // Cut short: refused, not read past the end.
        assert!(by_time_calls(&key, &value[..value.len() - 1]).is_none());
        assert!(by_time_calls(&key, &value[..10]).is_none());
        assert!(by_time_calls(&[1, 2], &[]).is_none());
    }

    #[test]
    fn prefix_end_bounds_the_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }

    #[test]
    fn start_time_from_the_record_or_its_id() {
        let mut r = crate::capture::record::sample("x");
        r.started_at = "2026-11-26T00:00:01.250Z".into();
        assert_eq!(rfc3339_ms(started_ms(&r)), "2026-11-26T00:00:01.250Z");
        r.started_at = "garbage".into();
        assert_eq!(started_ms(&r), 0);
        r.id = uuid::Uuid::now_v7().to_string();
        assert!(started_ms(&r).abs_diff(now_ms()) < 5_000);
    }
}
