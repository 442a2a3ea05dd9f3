//! One error type for everything that ends a call early, and the one place that decides which
//! HTTP status and JSON body the client gets for it.
//!
//! Every error knows which side failed (the client, the upstream, or the proxy itself), so that a
//! capture can say `rejected` versus `upstream_error`, and so that no internal detail (addresses,
//! OS errors) ever reaches a client: the message is chosen here, per kind.

use std::borrow::Cow;
use std::fmt;

/// Which party made the call fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse, or went away.
    Downstream,
    /// The provider could not be reached, misbehaved or took too long.
    Upstream,
    /// A fault of the proxy itself.
    Internal,
}

/// What went wrong, at the granularity that decides a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    /// The key is valid but may not do this (an unregistered agent under a key that requires
    /// registered agents).
    Forbidden,
    /// The key blocks requests with security findings, and this one had one.
    Blocked,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    ExpectationFailed,
    HeaderTooLarge,
    TooManyRequests,
    NotImplemented,
    BadGateway,
    GatewayTimeout,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden | ErrorKind::Blocked => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UriTooLong => 414,
            ErrorKind::ExpectationFailed => 417,
            ErrorKind::HeaderTooLarge => 431,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::NotImplemented => 501,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::GatewayTimeout => 504,
            ErrorKind::Internal => 500,
        }
    }

    /// The `error.type` field of the JSON body.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::ExpectationFailed => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::Blocked => "security_policy_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::HeaderTooLarge => "request_header_too_large",
            ErrorKind::TooManyRequests => "rate_limit_error",
            ErrorKind::NotImplemented => "not_implemented",
            ErrorKind::BadGateway => "upstream_error",
            ErrorKind::GatewayTimeout => "upstream_timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal_error",
        }
    }

    pub fn side(self) -> Side {
        match self {
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout => Side::Upstream,
            ErrorKind::Internal | ErrorKind::Unavailable => Side::Internal,
            _ => Side::Downstream,
        }
    }

    pub fn reason(self) -> &'static str {
        reason_phrase(self.status())
    }
}

/// An error that ends a call, with the message the client will read.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// Fields the answer carries besides the JSON body (`retry-after` on a 429).
    pub headers: Vec<(&'static str, String)>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        ProxyError { kind, message: message.into(), headers: Vec::new() }
    }

    /// The answer to a request refused for a security finding: the kind and where it was, never
    /// the matched text. `kinds` is the `x-kurral-findings` header's value.
    pub fn blocked(finding: &crate::scan::Finding, kinds: String) -> Self {
        let at = match finding.index {
            Some(i) => format!("{} {i}", finding.location.name()),
            None => finding.location.name().to_string(),
        };
        let message = format!(
            "request blocked: {} ({}, {} severity) in {at}",
            finding.kind.name(),
            finding.category.name(),
            finding.severity.name()
        );
        let mut e = Self::new(ErrorKind::Blocked, message);
        e.headers = vec![("x-kurral-findings", kinds)];
        e
    }

    /// The answer to a call refused by the user's limits.
    pub fn rate_limited(refusal: &crate::auth::Refusal) -> Self {
        use crate::auth::Refusal;
        let (message, retry_after, limit_name, limit) = match refusal {
            Refusal::Rate { limit, retry_after } => (
                format!("Rate limit exceeded: {limit} requests per minute"),
                retry_after.as_secs_f64().ceil().max(1.0) as u64,
                "x-kurral-ratelimit-limit-requests",
                *limit,
            ),
            Refusal::Concurrency { limit } => (
                format!("Rate limit exceeded: at most {limit} concurrent requests"),
                1,
                "x-kurral-ratelimit-limit-concurrent",
                *limit,
            ),
        };
        let mut e = Self::new(ErrorKind::TooManyRequests, message);
        e.headers = vec![("retry-after", retry_after.to_string()), (limit_name, limit.to_string())];
        e
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorKind::Unauthorized, "missing or invalid Kurral API key")
    }

    pub fn not_found() -> Self {
        Self::new(ErrorKind::NotFound, "no such route")
    }

    pub fn bad_gateway(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadGateway, message)
    }

    pub fn gateway_timeout() -> Self {
        Self::new(ErrorKind::GatewayTimeout, "upstream did not answer in time")
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// `{"error":{"type":"...","message":"..."}}`
    pub fn json_body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": { "type": self.kind.error_type(), "message": self.message }
        }))
        .expect("a JSON object of two strings always serializes")
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.kind.error_type(), self.message)
    }
}

impl std::error::Error for ProxyError {}

/// Reason phrases for the statuses the proxy itself produces; upstream reason phrases are relayed
/// as the upstream sent them.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_documented_shape() {
        let e = ProxyError::bad_request("x-kurral-agent header required");
        let v: serde_json::Value = serde_json::from_slice(&e.json_body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "x-kurral-agent header required");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn sides() {
        assert_eq!(ErrorKind::BadGateway.side(), Side::Upstream);
        assert_eq!(ErrorKind::GatewayTimeout.side(), Side::Upstream);
        assert_eq!(ErrorKind::PayloadTooLarge.side(), Side::Downstream);
        assert_eq!(ErrorKind::Internal.side(), Side::Internal);
    }
}
