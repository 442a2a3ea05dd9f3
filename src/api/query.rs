//! Read API paths and query strings → `ApiQuery`. Pure: no store, no sockets.

use crate::capture::layout::from_hex;
use crate::capture::Env;
use crate::error::ProxyError;
use crate::scan::Severity;

/// Sessions per page when `limit` is absent: a screen's worth.
pub const DEFAULT_SESSIONS: usize = 50;
/// Most sessions per page: bounds the work and the answer of one request.
pub const MAX_SESSIONS: usize = 500;
/// Calls of a session per page when `limit` is absent, and at most. A call under retention
/// `full` can carry megabytes of content, so one answer holds a bounded number of them; a
/// longer session continues with `next_cursor`.
pub const DEFAULT_CALLS: usize = 1000;
pub const MAX_CALLS: usize = 1000;
/// Findings per answer when `limit` is absent, and at most.
pub const DEFAULT_FINDINGS: usize = 100;
pub const MAX_FINDINGS: usize = 1000;

/// Which route a path names, with its path parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRoute {
    Agents,
    Sessions { agent: String },
    Session { session_id: String },
    Call { call_id: String },
    Findings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiQuery {
    Agents,
    Sessions { agent: String, env: Option<Env>, limit: usize, cursor: Option<Vec<u8>> },
    Session { session_id: String, limit: usize, cursor: Option<Vec<u8>> },
    Call { call_id: String },
    Findings { agent: Option<String>, session: Option<String>, min_severity: Severity, limit: usize },
}

/// The route of a path (without its query), or `None` for a 404.
pub fn route(path: &str) -> Option<ApiRoute> {
    let rest = path.strip_prefix("/api/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let segment = |s: &str| percent_decode(s).filter(|v| !v.is_empty());
    match parts.as_slice() {
        ["agents"] => Some(ApiRoute::Agents),
        ["agents", agent, "sessions"] => Some(ApiRoute::Sessions { agent: segment(agent)? }),
        ["sessions", id] => Some(ApiRoute::Session { session_id: segment(id)? }),
        ["calls", id] => Some(ApiRoute::Call { call_id: segment(id)? }),
        ["findings"] => Some(ApiRoute::Findings),
        _ => None,
    }
}

/// Applies the query string to a route. Unknown parameters are refused so that a typo
/// (`limt=5`) is not silently ignored; an empty value is the same as an absent one.
pub fn parse_query(route: ApiRoute, params: &str) -> Result<ApiQuery, ProxyError> {
    let mut env = None;
    let mut limit = None;
    let mut cursor = None;
    let (mut agent, mut session, mut min_severity) = (None, None, Severity::Low);
    let allowed: &[&str] = match route {
        ApiRoute::Agents | ApiRoute::Call { .. } => &[],
        ApiRoute::Sessions { .. } => &["env", "limit", "cursor"],
        ApiRoute::Session { .. } => &["limit", "cursor"],
        ApiRoute::Findings => &["agent", "session", "min_severity", "limit"],
    };
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| bad(format!("invalid encoding in {name}")))?;
        if !allowed.contains(&name) {
            return Err(bad(format!("unknown query parameter {name}")));
        }
        if value.is_empty() {
            continue;
        }
        match name {
            "env" => {
                env = Some(
                    Env::parse(value.as_bytes())
                        .ok_or_else(|| bad("env must be production, staging or development"))?,
                )
            }
            "limit" => limit = Some(value.parse::<usize>().map_err(|_| bad("limit must be a positive integer"))?),
            "cursor" => cursor = Some(from_hex(&value).filter(|c| c.len() > 8).ok_or_else(|| bad("invalid cursor"))?),
            "agent" => agent = Some(value),
            "session" => session = Some(value),
            "min_severity" => {
                min_severity = match value.as_str() {
                    "low" => Severity::Low,
                    "medium" => Severity::Medium,
                    "high" => Severity::High,
                    _ => return Err(bad("min_severity must be low, medium or high")),
                }
            }
            _ => unreachable!("only allowed names reach here"),
        }
    }
    let limit_within = |default: usize, max: usize| match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(bad(format!("limit must be between 1 and {max}"))),
    };
    Ok(match route {
        ApiRoute::Agents => ApiQuery::Agents,
        ApiRoute::Call { call_id } => ApiQuery::Call { call_id },
        ApiRoute::Sessions { agent } => {
            ApiQuery::Sessions { agent, env, limit: limit_within(DEFAULT_SESSIONS, MAX_SESSIONS)?, cursor }
        }
        ApiRoute::Session { session_id } => {
            ApiQuery::Session { session_id, limit: limit_within(DEFAULT_CALLS, MAX_CALLS)?, cursor }
        }
        ApiRoute::Findings => {
            ApiQuery::Findings { agent, session, min_severity, limit: limit_within(DEFAULT_FINDINGS, MAX_FINDINGS)? }
        }
    })
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> ProxyError {
    ProxyError::bad_request(message)
}

/// `%XX` decoding (and `+` as a space, as HTML forms send it); `None` on a broken escape or
/// a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(target: &str) -> Result<ApiQuery, u16> {
        let (path, params) = target.split_once('?').unwrap_or((target, ""));
        let r = route(path).ok_or(404u16)?;
        parse_query(r, params).map_err(|e| e.status())
    }

    #[test]
    fn routes_and_parameters() {
        let sessions = |env, limit, cursor| Ok(ApiQuery::Sessions { agent: "support bot".into(), env, limit, cursor });
        let cases: &[(&str, Result<ApiQuery, u16>)] = &[
            ("/api/agents", Ok(ApiQuery::Agents)),
            ("/api/agents/support%20bot/sessions", sessions(None, DEFAULT_SESSIONS, None)),
            ("/api/agents/support+bot/sessions?env=&limit=&cursor=", sessions(None, DEFAULT_SESSIONS, None)),
            ("/api/agents/support%20bot/sessions?env=staging&limit=5", sessions(Some(Env::Staging), 5, None)),
            (
                "/api/agents/support%20bot/sessions?cursor=000000000000000001ff",
                sessions(None, DEFAULT_SESSIONS, Some(vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff])),
            ),
            (
                "/api/sessions/abc",
                Ok(ApiQuery::Session { session_id: "abc".into(), limit: DEFAULT_CALLS, cursor: None }),
            ),
            ("/api/calls/abc", Ok(ApiQuery::Call { call_id: "abc".into() })),
            (
                "/api/findings?agent=support%20bot&min_severity=high&limit=7",
                Ok(ApiQuery::Findings {
                    agent: Some("support bot".into()),
                    session: None,
                    min_severity: Severity::High,
                    limit: 7,
                }),
            ),
            ("/api/findings?min_severity=critical", Err(400)),
            ("/api/findings?limit=1001", Err(400)),
            ("/api/agents/bot/sessions?env=prod", Err(400)),
            ("/api/agents/bot/sessions?limit=0", Err(400)),
            ("/api/agents/bot/sessions?limit=-1", Err(400)),
            ("/api/agents/bot/sessions?limit=501", Err(400)),
            ("/api/agents/bot/sessions?cursor=xyz", Err(400)),
            ("/api/agents/bot/sessions?cursor=00", Err(400)),
            ("/api/agents/bot/sessions?limt=5", Err(400)),
            ("/api/agents/bot/sessions?env=%zz", Err(400)),
            ("/api/calls/abc?limit=5", Err(400)),
            ("/api/agents/", Err(404)),
            ("/api/agents/bot", Err(404)),
            ("/api/agents//sessions", Err(404)),
            ("/api/sessions", Err(404)),
            ("/api/sessions/a/b", Err(404)),
            ("/api/nothing", Err(404)),
        ];
        for (target, want) in cases {
            assert_eq!(&parse(target), want, "{target}");
        }
    }
}
