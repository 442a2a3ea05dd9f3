//! The two heads the proxy writes: the request head sent upstream and the response head sent
//! back downstream. Bodies are never rebuilt; only these heads are.
//!
//! Upstream, the proxy removes everything that is its own (every `x-kurral-*` field and a legacy
//! `X-API-Key` that holds a Kurral key), every hop-by-hop field, and sets Host to the upstream's.
//! Provider credentials (`Authorization`, an Anthropic `x-api-key`, `x-goog-api-key`) pass byte
//! for byte.

use super::head::{trim, HeaderSpan, RequestHead, ResponseHead};

/// Prefix of every Kurral key. A legacy `X-API-Key` holding a value with this prefix is a Kurral
/// key; any other value is Anthropic's provider key and is forwarded untouched.
pub const KURRAL_KEY_PREFIX: &[u8] = b"kr_";

/// Fields that describe one connection, not the message (RFC 9110 7.6.1), plus `Expect`, which
/// the proxy answers itself.
const HOP_BY_HOP: [&[u8]; 7] =
    [b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"proxy-authorization", b"expect"];

/// True for a field that belongs to the proxy and must never reach a provider.
pub fn is_kurral_field(name: &[u8], value: &[u8]) -> bool {
    starts_with_ignore_case(name, b"x-kurral-")
        || (name.eq_ignore_ascii_case(b"x-api-key") && trim(value).starts_with(KURRAL_KEY_PREFIX))
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Field names the message's own `Connection` header nominates as hop-by-hop.
fn nominated<'a>(headers: &[HeaderSpan], buf: &'a [u8]) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"connection"))
        .flat_map(|h| h.value.get(buf).split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// The head sent upstream: `METHOD target HTTP/1.1`, Host set to `authority`, the client's
/// end-to-end fields in their order, then `accept-encoding: identity` so that bodies arrive in a
/// form the usage scanner can read.
pub fn upstream_request_head(buf: &[u8], head: &RequestHead, target: &[u8], authority: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len + authority.len() + 64);
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let nominated = nominated(&head.headers, buf);
    for h in &head.headers {
        let (name, value) = (h.name.get(buf), h.value.get(buf));
        if name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"accept-encoding")
            || is_hop_by_hop(name)
            || is_kurral_field(name, value)
            || nominated.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_field(&mut out, name, value);
    }
    out.extend_from_slice(b"accept-encoding: identity\r\n\r\n");
    out
}

/// An upstream request head (as `upstream_request_head` wrote it) for a body the proxy changed:
/// its framing fields replaced by `content-length: len`.
pub fn with_content_length(head: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 24);
    let body_start = head.len() - 2;
    for line in head[..body_start].split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        out.extend_from_slice(line);
    }
    push_field(&mut out, b"content-length", len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// What the proxy adds to a relayed response head.
pub struct ResponseAdditions<'a> {
    pub session_id: &'a str,
    pub request_id: &'a str,
    /// The proxy closes the client connection after this response.
    pub close: bool,
    /// How the body that follows is framed for the client.
    pub body: BodyFraming,
    /// The kinds of security findings made on the request (`x-kurral-findings`), if any.
    pub findings: Option<&'a str>,
}

/// How a relayed response body is framed downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// The upstream's framing, bytes as they came.
    AsUpstream,
    /// The payload alone, delimited by close (an HTTP/1.0 client cannot read chunked framing).
    Decoded,
    /// The payload in the proxy's own chunks (the body's length changes on the way).
    Rechunked,
}

/// The head relayed downstream: the upstream's status and end-to-end fields, the Kurral ids, and
/// the proxy's own connection decision.
pub fn downstream_response_head(
    buf: &[u8],
    head: &ResponseHead,
    add: &ResponseAdditions<'_>,
    body_room: usize,
) -> Vec<u8> {
    // Room for what is added (the Kurral ids, findings, framing) and for `body_room` bytes the
    // caller appends after the head.
    let mut out = Vec::with_capacity(head.len + 256 + body_room);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(&mut out, head.status);
    out.push(b' ');
    out.extend_from_slice(head.reason.get(buf));
    out.extend_from_slice(b"\r\n");
    let nominated = nominated(&head.headers, buf);
    for h in &head.headers {
        let (name, value) = (h.name.get(buf), h.value.get(buf));
        if is_hop_by_hop(name)
            || nominated.iter().any(|n| n.eq_ignore_ascii_case(name))
            || starts_with_ignore_case(name, b"x-kurral-")
            || (add.body != BodyFraming::AsUpstream
                && (name.eq_ignore_ascii_case(b"transfer-encoding") || name.eq_ignore_ascii_case(b"content-length")))
        {
            continue;
        }
        push_field(&mut out, name, value);
    }
    if add.body == BodyFraming::Rechunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    push_field(&mut out, b"x-kurral-session-id", add.session_id.as_bytes());
    push_field(&mut out, b"x-kurral-request-id", add.request_id.as_bytes());
    if let Some(kinds) = add.findings {
        push_field(&mut out, b"x-kurral-findings", kinds.as_bytes());
    }
    if add.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A complete response produced by the proxy itself (errors, health, read API).
pub fn local_response(status: u16, extra: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(&mut out, status);
    out.push(b' ');
    out.extend_from_slice(crate::error::reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra {
        push_field(&mut out, name.as_bytes(), value.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A status code's three digits (httparse takes only three-digit codes).
fn push_status(out: &mut Vec<u8>, status: u16) {
    debug_assert!((100..1000).contains(&status));
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse_request_head, parse_response_head, HeadLimits};

    const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 8192, max_target_bytes: 8192 };

    fn rewrite(raw: &str) -> String {
        let head = parse_request_head(raw.as_bytes(), LIMITS).unwrap().unwrap();
        String::from_utf8(upstream_request_head(raw.as_bytes(), &head, b"/v1/messages", "api.anthropic.com")).unwrap()
    }

    #[test]
    fn kurral_fields_are_removed_and_provider_credentials_kept() {
        let out = rewrite(
            "POST /api/proxy/anthropic/v1/messages HTTP/1.1\r\nHost: localhost:8080\r\n\
             X-Kurral-API-Key: kr_live_abc\r\nx-kurral-agent: bot\r\nX-Kurral-Session-Id: s\r\n\
             x-api-key: sk-ant-secret\r\nAuthorization: Bearer  sk-x \r\nContent-Length: 2\r\n\
             Accept-Encoding: gzip\r\nConnection: keep-alive, X-Trace\r\nX-Trace: 1\r\n\r\n{}",
        );
        assert_eq!(
            out,
            "POST /v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\nx-api-key: sk-ant-secret\r\n\
             Authorization: Bearer  sk-x\r\nContent-Length: 2\r\naccept-encoding: identity\r\n\r\n"
        );
    }

    #[test]
    fn legacy_kurral_key_in_x_api_key_is_removed() {
        let out =
            rewrite("POST / HTTP/1.1\r\nHost: a\r\nX-API-Key: kr_live_abc\r\nAuthorization: Bearer sk-ant\r\n\r\n");
        assert!(!out.contains("kr_live"), "{out}");
        assert!(out.contains("Authorization: Bearer sk-ant\r\n"));
    }

    #[test]
    fn field_classification() {
        assert!(is_kurral_field(b"X-KURRAL-ENV", b"staging"));
        assert!(is_kurral_field(b"x-api-key", b"kr_live_1"));
        assert!(!is_kurral_field(b"x-api-key", b"sk-ant-1"));
        assert!(!is_kurral_field(b"x-goog-api-key", b"kr_x"));
    }

    #[test]
    fn response_head_gets_ids_and_loses_hop_by_hop_fields() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse_response_head(raw.as_bytes(), 8192, false).unwrap().unwrap();
        let add = ResponseAdditions {
            session_id: "s1",
            request_id: "r1",
            close: false,
            body: BodyFraming::AsUpstream,
            findings: None,
        };
        let out = String::from_utf8(downstream_response_head(raw.as_bytes(), &head, &add, 0)).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\
             x-kurral-session-id: s1\r\nx-kurral-request-id: r1\r\n\r\n"
        );
        let add = ResponseAdditions { body: BodyFraming::Decoded, close: true, ..add };
        let out = String::from_utf8(downstream_response_head(raw.as_bytes(), &head, &add, 0)).unwrap();
        assert!(!out.contains("Transfer-Encoding"));
        assert!(out.ends_with("connection: close\r\n\r\n"));
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/event-stream\r\n\r\n";
        let head = parse_response_head(raw.as_bytes(), 8192, false).unwrap().unwrap();
        let add = ResponseAdditions { body: BodyFraming::Rechunked, close: false, ..add };
        let out = String::from_utf8(downstream_response_head(raw.as_bytes(), &head, &add, 0)).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
             x-kurral-session-id: s1\r\nx-kurral-request-id: r1\r\n\r\n"
        );
    }

    #[test]
    fn a_changed_body_gets_its_own_length() {
        let head = rewrite("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n");
        let out = String::from_utf8(with_content_length(head.as_bytes(), 42)).unwrap();
        assert_eq!(
            out,
            "POST /v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\nX-A: 1\r\naccept-encoding: identity\r\n\
             content-length: 42\r\n\r\n"
        );
        let head = rewrite("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}");
        let out = String::from_utf8(with_content_length(head.as_bytes(), 7)).unwrap();
        assert_eq!(out.matches("ength").count(), 1);
        assert!(out.ends_with("content-length: 7\r\n\r\n"));
    }

    #[test]
    fn local_response_is_complete() {
        let out = local_response(404, &[], b"{}", false);
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    }
}
