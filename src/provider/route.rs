//! Proxy path → provider, endpoint and upstream path.
//!
//! `/api/proxy/{provider}/{rest}` goes to `{upstream}/{rest}` with the query kept as sent
//! (Gemini's `alt=sse` and `key=` live there). The five documented endpoints are recognized by
//! method and path; anything else under a provider prefix is forwarded as `Other`.

use super::{Endpoint, Provider};

const PROXY_PREFIX: &[u8] = b"/api/proxy/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /api/proxy/health`, answered by the proxy.
    Health,
    Proxy {
        provider: Provider,
        endpoint: Endpoint,
        /// The upstream path and query, starting with `/`.
        upstream_target: &'a [u8],
        /// For Gemini, the model named in the path.
        path_model: Option<&'a [u8]>,
    },
    NotFound,
}

pub fn route<'a>(method: &[u8], target: &'a [u8]) -> Route<'a> {
    let Some(rest) = target.strip_prefix(PROXY_PREFIX) else {
        return Route::NotFound;
    };
    let (path, _query) = split_query(rest);
    if path == b"health" {
        return if method == b"GET" || method == b"HEAD" { Route::Health } else { Route::NotFound };
    }
    let Some(slash) = rest.iter().position(|&b| b == b'/') else {
        return Route::NotFound;
    };
    let Some(provider) = std::str::from_utf8(&rest[..slash]).ok().and_then(Provider::from_name) else {
        return Route::NotFound;
    };
    let upstream_target = &rest[slash..];
    let (upstream_path, _) = split_query(upstream_target);
    if upstream_path.len() <= 1 || has_dot_segment(upstream_path) {
        return Route::NotFound;
    }
    let (endpoint, path_model) = endpoint_of(provider, method, upstream_path);
    Route::Proxy { provider, endpoint, upstream_target, path_model }
}

fn endpoint_of<'a>(provider: Provider, method: &[u8], path: &'a [u8]) -> (Endpoint, Option<&'a [u8]>) {
    if method != b"POST" {
        return (Endpoint::Other, None);
    }
    match provider {
        Provider::OpenAi => match path {
            b"/v1/chat/completions" => (Endpoint::ChatCompletions, None),
            b"/v1/responses" => (Endpoint::Responses, None),
            _ => (Endpoint::Other, None),
        },
        Provider::Anthropic => match path {
            b"/v1/messages" => (Endpoint::Messages, None),
            _ => (Endpoint::Other, None),
        },
        Provider::Google => {
            // The seed documents v1beta; current google-genai SDKs call v1 by default.
            let model_action = [&b"/v1beta/models/"[..], b"/v1/models/", b"/v1alpha/models/"]
                .iter()
                .find_map(|prefix| path.strip_prefix(*prefix));
            let Some(model_action) = model_action else {
                return (Endpoint::Other, None);
            };
            let Some(colon) = model_action.iter().rposition(|&b| b == b':') else {
                return (Endpoint::Other, None);
            };
            let (model, action) = (&model_action[..colon], &model_action[colon + 1..]);
            if model.is_empty() || model.contains(&b'/') {
                return (Endpoint::Other, None);
            }
            match action {
                b"generateContent" => (Endpoint::GenerateContent, Some(model)),
                b"streamGenerateContent" => (Endpoint::StreamGenerateContent, Some(model)),
                _ => (Endpoint::Other, Some(model)),
            }
        }
    }
}

fn split_query(target: &[u8]) -> (&[u8], &[u8]) {
    match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q..]),
        None => (target, b""),
    }
}

/// `..` segments (raw or percent-encoded) could climb out of the provider's prefix at the
/// upstream; no provider API uses them.
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|seg| {
        seg == b".."
            || seg == b"."
            || seg.windows(3).any(|w| w.eq_ignore_ascii_case(b"%2e") || w.eq_ignore_ascii_case(b"%2f"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(method: &str, target: &str) -> (Provider, Endpoint, String, Option<String>) {
        match route(method.as_bytes(), target.as_bytes()) {
            Route::Proxy { provider, endpoint, upstream_target, path_model } => (
                provider,
                endpoint,
                String::from_utf8(upstream_target.to_vec()).unwrap(),
                path_model.map(|m| String::from_utf8(m.to_vec()).unwrap()),
            ),
            other => panic!("{method} {target}: {other:?}"),
        }
    }

    #[test]
    fn the_documented_routes() {
        let cases = [
            (
                "/api/proxy/openai/v1/chat/completions",
                Provider::OpenAi,
                Endpoint::ChatCompletions,
                "/v1/chat/completions",
                None,
            ),
            ("/api/proxy/openai/v1/responses", Provider::OpenAi, Endpoint::Responses, "/v1/responses", None),
            ("/api/proxy/anthropic/v1/messages", Provider::Anthropic, Endpoint::Messages, "/v1/messages", None),
            (
                "/api/proxy/google/v1beta/models/gemini-2.0-flash:generateContent?key=K",
                Provider::Google,
                Endpoint::GenerateContent,
                "/v1beta/models/gemini-2.0-flash:generateContent?key=K",
                Some("gemini-2.0-flash"),
            ),
            (
                "/api/proxy/google/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                Provider::Google,
                Endpoint::StreamGenerateContent,
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                Some("gemini-2.5-pro"),
            ),
            (
                "/api/proxy/google/v1/models/gemini-2.5-flash:generateContent",
                Provider::Google,
                Endpoint::GenerateContent,
                "/v1/models/gemini-2.5-flash:generateContent",
                Some("gemini-2.5-flash"),
            ),
            ("/api/proxy/openai/v1/embeddings", Provider::OpenAi, Endpoint::Other, "/v1/embeddings", None),
            (
                "/api/proxy/anthropic/v1/messages/count_tokens",
                Provider::Anthropic,
                Endpoint::Other,
                "/v1/messages/count_tokens",
                None,
            ),
        ];
        for (target, provider, endpoint, upstream, model) in cases {
            let got = proxied("POST", target);
            assert_eq!(got, (provider, endpoint, upstream.to_string(), model.map(str::to_string)), "{target}");
        }
        assert_eq!(proxied("GET", "/api/proxy/openai/v1/models").1, Endpoint::Other);
    }

    #[test]
    fn health_and_not_found() {
        assert_eq!(route(b"GET", b"/api/proxy/health"), Route::Health);
        for target in [
            "/",
            "/api/proxy/",
            "/api/proxy/azure/v1/chat/completions",
            "/api/proxy/openai",
            "/api/proxy/openai/",
            "/api/proxy/openai/../admin",
            "/api/proxy/openai/v1/%2e%2e/x",
            "/api/proxy/openai/v1/%2E%2E/x",
            "/api/proxy/openai/v1/%2E./x",
            "/api/proxy/openai/v1%2Fchat/completions",
            "/api/proxy/openai/v1/./chat/completions",
            "/api/agents",
            "http://evil/api/proxy/openai/v1/chat/completions",
        ] {
            assert_eq!(route(b"POST", target.as_bytes()), Route::NotFound, "{target}");
        }
    }
}
