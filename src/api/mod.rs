//! The read API: a user's agents, sessions and calls over HTTP, authenticated with the same
//! Kurral key as proxied calls.
//!
//! ```text
//! GET /api/agents                                          {"agents":[Agent...]}
//! GET /api/agents/{agent}/sessions?env=&limit=&cursor=     {"sessions":[Session...],"next_cursor"}
//! GET /api/sessions/{session_id}?limit=&cursor=            {"session","calls":[Call...],"next_cursor"}
//! GET /api/calls/{call_id}                                 Call
//! GET /api/findings?agent=&session=&min_severity=&limit=   {"findings":[Finding + call...]}
//! ```
//!
//! - `query`: path and query string → `ApiQuery` (400 on a bad parameter, 404 on no route).
//! - `reader`: the reader threads that run queries against the store, off the worker threads.
//! - `json`: the response shapes (also printed by the command line's `--json`).
//!
//! A key sees only its own user's data: queries run under the key's user, and every store key
//! starts with the user, so another user's session or call id is simply not found (404, not
//! 403: a 403 would confirm that the id exists).

pub mod json;
pub mod query;
pub mod reader;

use std::sync::Arc;

use crate::auth::headers::authenticate;
use crate::auth::KeyTable;
use crate::error::{ErrorKind, ProxyError};
use crate::http::head::RequestHead;
use crate::http::rewrite::local_response;

pub use query::{parse_query, ApiQuery};
pub use reader::Readers;

const API_PREFIX: &[u8] = b"/api/";
const PROXY_PREFIX: &[u8] = b"/api/proxy/";

/// Whether a request target belongs to the read API (rather than the proxy routes).
pub fn handles(target: &[u8]) -> bool {
    target.starts_with(API_PREFIX) && !target.starts_with(PROXY_PREFIX)
}

/// A read request, checked: the user whose data it reads and what it asks.
#[derive(Debug)]
pub struct ApiRequest {
    pub user: Arc<str>,
    pub query: ApiQuery,
}

/// Checks a read request in order: route (404), method (405), key (401), parameters (400).
pub fn prepare(buf: &[u8], head: &RequestHead, keys: &KeyTable) -> Result<ApiRequest, ProxyError> {
    let target = std::str::from_utf8(head.target(buf)).map_err(|_| ProxyError::not_found())?;
    let (path, params) = target.split_once('?').unwrap_or((target, ""));
    let route = query::route(path).ok_or_else(ProxyError::not_found)?;
    if head.method(buf) != b"GET" {
        return Err(ProxyError::new(ErrorKind::MethodNotAllowed, "the read API answers GET only"));
    }
    let key = authenticate(buf, head, keys)?;
    let query = parse_query(route, params)?;
    Ok(ApiRequest { user: key.user.clone(), query })
}

/// The complete HTTP response to a read request (or to its refusal).
pub async fn respond(readers: Option<&Readers>, request: Result<ApiRequest, ProxyError>, close: bool) -> Vec<u8> {
    let answer = match (request, readers) {
        (Err(e), _) => Err(e),
        (Ok(_), None) => Err(ProxyError::new(ErrorKind::Unavailable, "no capture store to read")),
        (Ok(r), Some(readers)) => readers.ask(r).await,
    };
    match answer {
        Ok(body) => local_response(200, &[("cache-control", "no-store")], &body, close),
        Err(e) => local_response(e.status(), &[], &e.json_body(), close),
    }
}
