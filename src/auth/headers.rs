//! The Kurral request fields, checked in the seed's order: the key (401), then the agent (400),
//! then the optional session id, retention and env (400 naming the bad value).

use std::sync::Arc;

use crate::capture::{Env, Retention};
use crate::error::ProxyError;
use crate::http::head::{trim, RequestHead};
use crate::http::rewrite::KURRAL_KEY_PREFIX;

use super::store::KeyTable;

/// The seed: "Agent key (min 3 chars)".
pub const MIN_AGENT_LEN: usize = 3;
/// Agent names are stored and listed; anything longer is a mistake, not a name.
pub const MAX_AGENT_LEN: usize = 200;

/// Who is calling and how the call is to be recorded.
#[derive(Debug, Clone)]
pub struct CallIdentity {
    pub user: Arc<str>,
    pub key_id: Arc<str>,
    pub key_limits: super::KeyLimits,
    pub user_state: Arc<super::UserState>,
    pub agent: String,
    pub session_id: String,
    /// The client sent no session id: this one is new, made by the proxy.
    pub session_generated: bool,
    pub retention: Retention,
    pub env: Env,
}

/// Authenticates the call and validates the Kurral fields.
pub fn identify(buf: &[u8], head: &RequestHead, keys: &KeyTable) -> Result<CallIdentity, ProxyError> {
    let user = authenticate(buf, head, keys)?;
    let agent = match single(buf, head, "x-kurral-agent")? {
        Some(a) if a.len() >= MIN_AGENT_LEN => a,
        _ => return Err(ProxyError::bad_request("x-kurral-agent header required")),
    };
    if agent.len() > MAX_AGENT_LEN || !agent.iter().all(|&b| b.is_ascii_graphic() || b == b' ') {
        return Err(ProxyError::bad_request("invalid x-kurral-agent: printable ASCII, at most 200 characters"));
    }
    if user.registered_agents_only && !keys.agent_registered(&user.user, agent) {
        return Err(ProxyError::new(
            crate::error::ErrorKind::Forbidden,
            "this key accepts registered agents only; register the agent with `kurral-proxy agents register`",
        ));
    }
    let session_header = single(buf, head, "x-kurral-session-id")?;
    let session_generated = session_header.is_none();
    let session_id = match session_header {
        None => generated_session_id(),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| uuid::Uuid::try_parse(s).ok())
            .map(|u| u.hyphenated().to_string())
            .ok_or_else(|| ProxyError::bad_request("invalid x-kurral-session-id: must be a UUID"))?,
    };
    let retention = match single(buf, head, "x-kurral-retention")? {
        None => Retention::Metadata,
        Some(v) => Retention::parse(v)
            .ok_or_else(|| ProxyError::bad_request("invalid x-kurral-retention: use none, metadata or full"))?,
    };
    let env = match single(buf, head, "x-kurral-env")? {
        None => Env::Production,
        Some(v) => Env::parse(v)
            .ok_or_else(|| ProxyError::bad_request("invalid x-kurral-env: use production, staging or development"))?,
    };
    Ok(CallIdentity {
        user: user.user.clone(),
        key_id: user.id.clone(),
        key_limits: user.overrides,
        user_state: user.state.clone(),
        agent: String::from_utf8_lossy(agent).into_owned(),
        session_id,
        session_generated,
        retention,
        env,
    })
}

/// `X-Kurral-API-Key` first; the legacy `X-API-Key` only when its value is a Kurral key (an
/// Anthropic key in `x-api-key` is the provider's and is not ours to judge).
pub fn authenticate<'t>(buf: &[u8], head: &RequestHead, keys: &'t KeyTable) -> Result<&'t super::KeyInfo, ProxyError> {
    let key = match single(buf, head, "x-kurral-api-key")? {
        Some(k) => Some(k),
        None => head
            .headers
            .iter()
            .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"x-api-key"))
            .map(|h| trim(h.value.get(buf)))
            .find(|v| v.starts_with(KURRAL_KEY_PREFIX)),
    };
    key.and_then(|k| keys.lookup(k)).ok_or_else(ProxyError::unauthorized)
}

/// The trimmed value of a field that may appear at most once.
fn single<'a>(buf: &'a [u8], head: &RequestHead, name: &'static str) -> Result<Option<&'a [u8]>, ProxyError> {
    if head.header_count(buf, name) > 1 {
        return Err(ProxyError::bad_request(format!("duplicate {name} header")));
    }
    Ok(head.header(buf, name).map(trim).filter(|v| !v.is_empty()))
}

/// The session id of a call that named none (`x-kurral-session-id` absent): a UUIDv7, like call
/// ids, so that the store's session keys arrive in time order. RocksDB then appends them to its
/// memtables instead of searching a random place for each (`benches/capture.rs`,
/// `generated_sessions`).
pub fn generated_session_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::store::KeyStore;
    use crate::error::ErrorKind;
    use crate::http::head::{parse_request_head, HeadLimits};

    fn check(keys: &KeyTable, fields: &str) -> Result<CallIdentity, ProxyError> {
        let raw = format!("POST /api/proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let limits = HeadLimits { max_head_bytes: 8192, max_target_bytes: 8192 };
        let head = parse_request_head(raw.as_bytes(), limits).unwrap().unwrap();
        identify(raw.as_bytes(), &head, keys)
    }

    #[test]
    fn the_seed_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (key, _) = store.create("alice").unwrap();
        let keys = store.load().unwrap();
        let kind = |r: Result<CallIdentity, ProxyError>| r.map(|_| ()).map_err(|e| (e.kind, e.message.to_string()));

        let ok = check(&keys, &format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\n")).unwrap();
        assert_eq!(&*ok.user, "alice");
        assert_eq!((ok.retention, ok.env), (Retention::Metadata, Env::Production));
        assert!(uuid::Uuid::parse_str(&ok.session_id).is_ok(), "a session id is generated");

        let legacy = check(&keys, &format!("X-API-Key: {key}\r\nx-kurral-agent: bot\r\n")).unwrap();
        assert_eq!(&*legacy.user, "alice");
        let both =
            check(&keys, &format!("x-api-key: sk-ant-123\r\nX-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\n"));
        assert!(both.is_ok(), "an Anthropic x-api-key beside the Kurral key");

        let unauthorized = (ErrorKind::Unauthorized, "missing or invalid Kurral API key".to_string());
        assert_eq!(kind(check(&keys, "x-kurral-agent: bot\r\n")), Err(unauthorized.clone()));
        assert_eq!(kind(check(&keys, "x-api-key: sk-ant-123\r\nx-kurral-agent: bot\r\n")), Err(unauthorized.clone()));
        assert_eq!(kind(check(&keys, "X-Kurral-API-Key: kr_live_wrong\r\nx-kurral-agent: bot\r\n")), Err(unauthorized));

        let agent_required = Err((ErrorKind::BadRequest, "x-kurral-agent header required".to_string()));
        assert_eq!(kind(check(&keys, &format!("X-Kurral-API-Key: {key}\r\n"))), agent_required);
        assert_eq!(kind(check(&keys, &format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent: ab\r\n"))), agent_required);
        assert_eq!(kind(check(&keys, &format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent:    \r\n"))), agent_required);

        for (field, needle) in [
            ("x-kurral-session-id: not-a-uuid", "x-kurral-session-id"),
            ("x-kurral-retention: everything", "x-kurral-retention"),
            ("x-kurral-env: prod", "x-kurral-env"),
            ("x-kurral-agent: two", "duplicate x-kurral-agent"),
        ] {
            let r = check(&keys, &format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\n{field}\r\n"));
            let e = r.unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{field}");
            assert!(e.message.contains(needle), "{field}: {}", e.message);
        }

        let (strict, _) = store.create_key("alice", crate::auth::KeyLimits::default(), true).unwrap();
        store.register_agent("alice", "known-bot").unwrap();
        let keys2 = store.load().unwrap();
        let refused =
            check(&keys2, &format!("X-Kurral-API-Key: {strict}\r\nx-kurral-agent: other-bot\r\n")).unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(check(&keys2, &format!("X-Kurral-API-Key: {strict}\r\nx-kurral-agent: known-bot\r\n")).is_ok());
        assert!(check(&keys2, &format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent: other-bot\r\n")).is_ok());

        let sid = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
        let full = check(
            &keys,
            &format!("X-Kurral-API-Key: {key}\r\nx-kurral-agent: bot\r\nx-kurral-session-id: {sid}\r\nx-kurral-retention: full\r\nx-kurral-env: staging\r\n"),
        )
        .unwrap();
        assert_eq!((full.session_id.as_str(), full.retention, full.env), (sid, Retention::Full, Env::Staging));
    }
}
