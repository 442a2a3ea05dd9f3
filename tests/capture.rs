//! End to end through the proxy and the mock upstream: the usage, cost, content and tool calls a
//! record keeps, for every provider and endpoint, streamed and not; the include_usage rewrite
//! being invisible to the client; partial usage when a stream is cut or abandoned; no provider
//! credential in any record at any retention level.

mod common;

use std::net::SocketAddr;

use common::client::{request, send, Conn};
use common::harness::{Proxy, ANTHROPIC_KEY, GOOGLE_KEY, OPENAI_KEY};
use common::mock_upstream::{tokens, MockUpstream, TEXT, TOOL_ARGS};
use kurral_proxy::capture::{CallRecord, Outcome};
use kurral_proxy::usage::Usage;

const CHAT: &str = "/api/proxy/openai/v1/chat/completions";
const RESPONSES: &str = "/api/proxy/openai/v1/responses";
const MESSAGES: &str = "/api/proxy/anthropic/v1/messages";
const GEMINI: &str = "/api/proxy/google/v1beta/models/gemini-2.5-flash";

fn openai_usage() -> Usage {
    Usage {
        input_tokens: Some(tokens::INPUT),
        output_tokens: Some(tokens::OUTPUT),
        total_tokens: Some(tokens::TOTAL),
        cache_read_tokens: Some(tokens::CACHED),
        cache_write_tokens: None,
        cache_write_1h_tokens: None,
        reasoning_tokens: Some(tokens::REASONING),
    }
}

/// Anthropic counts cache reads and writes apart from `input_tokens`; normalized input has them.
fn anthropic_usage() -> Usage {
    let input = tokens::INPUT + tokens::CACHED + tokens::CACHE_WRITE;
    Usage {
        input_tokens: Some(input),
        output_tokens: Some(tokens::OUTPUT),
        total_tokens: Some(input + tokens::OUTPUT),
        cache_read_tokens: Some(tokens::CACHED),
        cache_write_tokens: Some(tokens::CACHE_WRITE),
        cache_write_1h_tokens: Some(tokens::CACHE_WRITE_1H),
        reasoning_tokens: None,
    }
}

fn gemini_usage() -> Usage {
    Usage {
        input_tokens: Some(tokens::INPUT),
        output_tokens: Some(tokens::OUTPUT),
        total_tokens: Some(tokens::TOTAL),
        ..Usage::default()
    }
}

// Costs computed by hand from pricing.json's rates (USD per million tokens).
/// gpt-4o-mini: 18 uncached × 0.15 + 5 cached × 0.075 + 7 output × 0.60.
const GPT_4O_MINI_COST: &str = "0.000007275";
/// claude-sonnet-4: 23 × 3 + 5 reads × 0.30 + 8 5m-writes × 3.75 + 3 1h-writes × 6 + 7 × 15.
const SONNET_4_COST: &str = "0.0002235";
/// gemini-2.5-flash: 23 × 0.30 + 7 × 2.50.
const GEMINI_FLASH_COST: &str = "0.0000244";

struct Call<'a> {
    path: &'a str,
    body: &'a str,
    extra: Vec<(&'a str, &'a str)>,
}

fn provider_auth(path: &str) -> (&'static str, String) {
    if path.contains("/anthropic/") {
        ("x-api-key", ANTHROPIC_KEY.to_string())
    } else if path.contains("/google/") {
        ("x-goog-api-key", GOOGLE_KEY.to_string())
    } else {
        ("Authorization", format!("Bearer {OPENAI_KEY}"))
    }
}

fn call(proxy: &Proxy, c: &Call<'_>) -> common::client::Response {
    let (auth_name, auth_value) = provider_auth(c.path);
    let mut fields = proxy.kurral("capture-agent");
    fields.push((auth_name, &auth_value));
    fields.extend(c.extra.iter().copied());
    send(proxy.addr, &request("POST", c.path, &fields, c.body.as_bytes()))
}

/// Makes one call through a fresh proxy and returns the response and its record.
fn one(c: Call<'_>) -> (common::client::Response, CallRecord) {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let resp = call(&proxy, &c);
    let mut records = proxy.stop_and_records();
    assert_eq!(records.len(), 1);
    (resp, records.remove(0))
}

fn cost(rec: &CallRecord) -> String {
    rec.cost.as_ref().expect("priced").total.to_string()
}

#[test]
fn openai_chat_usage_and_cost_streamed_and_not() {
    let (resp, rec) = one(Call {
        path: CHAT,
        body: r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        extra: vec![],
    });
    assert_eq!(resp.status, 200);
    assert_eq!(rec.usage, Some(openai_usage()));
    assert_eq!(cost(&rec), GPT_4O_MINI_COST);
    assert!((rec.cost_usd.unwrap() - 7.275e-6).abs() < 1e-15);
    assert_eq!(rec.usage_raw.as_ref().unwrap()["prompt_tokens_details"]["cached_tokens"], tokens::CACHED);
    assert_eq!(rec.cost.as_ref().unwrap().pricing_version, kurral_proxy::pricing::PriceTable::builtin().version());

    // The client asked for usage: the stream passes untouched and the usage is read from it.
    let asked = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (resp, rec) = one(Call { path: CHAT, body: asked, extra: vec![] });
    assert!(resp.text().contains("\"choices\":[],\"usage\":{"), "the client gets the usage it asked for");
    assert!(!rec.stream_usage_added);
    assert_eq!(rec.usage, Some(openai_usage()));
    assert_eq!(cost(&rec), GPT_4O_MINI_COST);
    assert!(rec.stream && rec.ttft_ms.is_some());
}

/// Normalizes what differs between two answers of the mock: ids and timestamps.
fn normalize_ids(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("\"created\":") {
        out.push_str(&rest[..i + 10]);
        rest = rest[i + 10..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('0');
    }
    out.push_str(rest);
    let mut s = out;
    while let Some(i) = s.find("chatcmpl-mock") {
        let end = s[i + 13..].find('"').map_or(s.len(), |j| i + 13 + j);
        s.replace_range(i..end, "chatcmpl-X");
    }
    s
}

#[test]
fn include_usage_rewrite_is_invisible_to_the_client() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    for body in [
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":null,"messages":[]}"#,
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[],"tools":[{"type":"function","function":{"name":"get_weather"}}]}"#,
    ] {
        // What the upstream sends this client when nobody rewrites its request.
        let auth = format!("Bearer {OPENAI_KEY}");
        let direct =
            send(mock.addr(), &request("POST", "/v1/chat/completions", &[("Authorization", &auth)], body.as_bytes()));
        assert!(!direct.text().contains("usage"), "the mock, like OpenAI, sends no usage unasked");
        let through = call(&proxy, &Call { path: CHAT, body, extra: vec![] });
        assert_eq!(through.status, 200);
        assert!(through.complete, "the re-chunked stream ends cleanly");
        assert_eq!(normalize_ids(&through.text()), normalize_ids(&direct.text()), "{body}");
        let forwarded = mock.received().last().unwrap().body_json();
        assert_eq!(forwarded["stream_options"]["include_usage"], true, "the upstream was asked for usage");
    }
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 3);
    for rec in &records {
        assert!(rec.stream_usage_added);
        assert_eq!(rec.usage, Some(openai_usage()));
        assert_eq!(cost(rec), GPT_4O_MINI_COST);
    }
    assert_eq!(records[2].tools.as_ref().unwrap()["calls"][0]["arguments"], TOOL_ARGS);
}

#[test]
fn include_usage_rewrite_can_be_switched_off() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| c.capture.openai_stream_usage = false);
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    let resp = call(&proxy, &Call { path: CHAT, body, extra: vec![] });
    assert_eq!(resp.status, 200);
    assert_eq!(mock.received()[0].body, body.as_bytes(), "relayed byte for byte");
    let rec = &proxy.stop_and_records()[0];
    assert!(!rec.stream_usage_added);
    assert_eq!(rec.usage, None, "OpenAI sends no usage unasked: none is made up");
    assert_eq!(rec.cost_usd, None);
}

#[test]
fn openai_responses_usage_streamed_and_not() {
    for stream in [false, true] {
        let body = format!(r#"{{"model":"gpt-4o-mini","input":"hi","stream":{stream}}}"#);
        let (resp, rec) = one(Call { path: RESPONSES, body: &body, extra: vec![] });
        assert_eq!(resp.status, 200);
        assert_eq!(rec.usage, Some(openai_usage()), "stream: {stream}");
        assert_eq!(cost(&rec), GPT_4O_MINI_COST);
        assert_eq!(rec.response.as_ref().unwrap()["summary"], TEXT);
        assert_eq!(rec.request.as_ref().unwrap()["summary"], "hi");
    }
}

#[test]
fn anthropic_usage_with_cache_writes_streamed_and_not() {
    for stream in [false, true] {
        let body = format!(
            r#"{{"model":"claude-sonnet-4-20250514","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let (resp, rec) = one(Call { path: MESSAGES, body: &body, extra: vec![] });
        assert_eq!(resp.status, 200);
        assert_eq!(rec.usage, Some(anthropic_usage()), "stream: {stream}");
        assert_eq!(cost(&rec), SONNET_4_COST, "stream: {stream}");
        assert_eq!(rec.usage_raw.as_ref().unwrap()["output_tokens"], tokens::OUTPUT, "latest wins, never summed");
        assert_eq!(rec.response.as_ref().unwrap()["summary"], TEXT);
    }
}

#[test]
fn gemini_usage_in_every_form() {
    for (suffix, stream) in
        [(":generateContent", false), (":streamGenerateContent?alt=sse", true), (":streamGenerateContent", true)]
    {
        let path = format!("{GEMINI}{suffix}");
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
        let (resp, rec) = one(Call { path: &path, body, extra: vec![] });
        assert_eq!(resp.status, 200, "{suffix}");
        assert_eq!(rec.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(rec.stream, stream);
        assert_eq!(rec.usage, Some(gemini_usage()), "{suffix}: the last usageMetadata wins");
        assert_eq!(cost(&rec), GEMINI_FLASH_COST, "{suffix}");
        assert_eq!(rec.response.as_ref().unwrap()["summary"], TEXT, "{suffix}");
    }
}

#[test]
fn tool_calls_and_results_for_every_provider() {
    let chat = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"weather?"},
        {"role":"assistant","tool_calls":[{"id":"call_0","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
        {"role":"tool","tool_call_id":"call_0","content":"rainy"}],
        "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#;
    let messages = r#"{"model":"claude-sonnet-4-5","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"weather?"},
        {"role":"assistant","content":[{"type":"tool_use","id":"toolu_0","name":"get_weather","input":{}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_0","content":"rainy"}]}],
        "tools":[{"name":"get_weather","input_schema":{"type":"object"}}]}"#;
    let gemini = r#"{"contents":[{"role":"user","parts":[{"text":"weather?"}]},
        {"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{}}}]},
        {"role":"user","parts":[{"functionResponse":{"name":"get_weather","response":{"sky":"rainy"}}}]}],
        "tools":[{"functionDeclarations":[{"name":"get_weather","parameters":{"type":"OBJECT"}}]}]}"#;
    let responses = r#"{"model":"gpt-4o-mini","stream":true,"input":[{"role":"user","content":"weather?"},
        {"type":"function_call","call_id":"call_0","name":"get_weather","arguments":"{}"},
        {"type":"function_call_output","call_id":"call_0","output":"rainy"}],
        "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}]}"#;
    let gemini_path = format!("{GEMINI}:streamGenerateContent?alt=sse");
    for (path, body, result_id, call_id) in [
        (CHAT, chat, "call_0", Some("call_1")),
        (RESPONSES, responses, "call_0", Some("call_1")),
        (MESSAGES, messages, "toolu_0", Some("toolu_1")),
        (gemini_path.as_str(), gemini, "get_weather", None),
    ] {
        for retention in ["metadata", "full"] {
            let (resp, rec) = one(Call { path, body, extra: vec![("x-kurral-retention", retention)] });
            assert_eq!(resp.status, 200, "{path}");
            let tools = rec.tools.as_ref().unwrap_or_else(|| panic!("{path}: no tools"));
            assert_eq!(tools["defined"], serde_json::json!(["get_weather"]), "{path}");
            let calls = tools["calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{path}: {tools}");
            assert_eq!(calls[0]["name"], "get_weather", "{path}");
            assert_eq!(calls[0]["id"].as_str(), call_id, "{path}");
            let args: serde_json::Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, serde_json::json!({"city": "Paris"}), "{path}: arguments assembled from fragments");
            assert_eq!(tools["results"][0]["tool_call_id"], result_id, "{path}");
            assert!(tools["results"][0]["content"].as_str().unwrap().contains("rainy"), "{path}");
            assert_eq!(tools.get("schemas").is_some(), retention == "full", "{path}: schemas only under full");
        }
    }
}

fn records_text(records: &[CallRecord]) -> String {
    records.iter().map(|r| serde_json::to_string(r).unwrap()).collect::<Vec<_>>().join("\n")
}

#[test]
fn content_by_retention_and_no_credential_anywhere() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| c.capture.max_content_bytes = 64);
    let long_question = format!("tell me {}", "more ".repeat(40));
    let chat = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{long_question}"}}]}}"#);
    let gemini_key_path = format!("{GEMINI}:generateContent?key={GOOGLE_KEY}");
    for retention in ["none", "metadata", "full"] {
        call(&proxy, &Call { path: CHAT, body: &chat, extra: vec![("x-kurral-retention", retention)] });
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        call(&proxy, &Call { path: MESSAGES, body, extra: vec![("x-kurral-retention", retention)] });
        call(
            &proxy,
            &Call {
                path: &gemini_key_path,
                body: r#"{"contents":[]}"#,
                extra: vec![("x-kurral-retention", retention)],
            },
        );
    }
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 9);
    for rec in &records[..3] {
        assert!(rec.request.is_none() && rec.response.is_none() && rec.tools.is_none(), "none keeps no content");
        assert!(rec.usage.is_some(), "none still keeps usage");
    }
    let meta = &records[3];
    let summary = meta.request.as_ref().unwrap()["summary"].as_str().unwrap();
    assert!(summary.starts_with("tell me more") && summary.len() <= 256);
    assert_eq!(meta.response.as_ref().unwrap()["summary"], TEXT);
    let full = &records[6];
    let kept = full.request.as_ref().unwrap();
    assert_eq!(kept["truncated"], true, "the body is over the 64-byte cap");
    assert_eq!(kept["body"].as_str().unwrap(), &chat[..64]);
    assert_eq!(full.response.as_ref().unwrap()["truncated"], true);
    let all = records_text(&records);
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, proxy.key.as_str()] {
        assert!(!all.contains(secret), "a credential reached a record");
    }
}

fn stream_fields<'a>(proxy: &'a Proxy, auth: &'a (&'static str, String)) -> Vec<(&'a str, &'a str)> {
    let mut fields = proxy.kurral("partial-agent");
    fields.push((auth.0, auth.1.as_str()));
    fields
}

#[test]
fn a_stream_cut_by_the_upstream_keeps_the_usage_seen() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let auth = provider_auth(MESSAGES);
    let mut fields = stream_fields(&proxy, &auth);
    // message_start (with input and cache counts) and the next event arrive, then the cut.
    fields.push(("x-mock-cut", "2"));
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":9,"stream":true,"messages":[]}"#;
    let resp = send(proxy.addr, &request("POST", MESSAGES, &fields, body.as_bytes()));
    assert!(!resp.complete, "the cut is visible to the client");
    let rec = &proxy.stop_and_records()[0];
    assert_eq!(rec.outcome, Outcome::UpstreamError);
    let usage = rec.usage.expect("partial usage");
    assert_eq!(usage.input_tokens, anthropic_usage().input_tokens);
    assert_eq!(usage.output_tokens, Some(tokens::OUTPUT_AT_START), "only what was seen");
    assert!(rec.cost_usd.is_some());
}

#[test]
fn a_client_that_leaves_mid_stream_leaves_a_record_with_usage_so_far() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let auth = provider_auth(MESSAGES);
    let mut fields = stream_fields(&proxy, &auth);
    fields.push(("x-mock-hold", "1"));
    // The rest comes event by event, so the proxy writes again after the client has gone.
    fields.push(("x-mock-delay-ms", "20"));
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":9,"stream":true,"messages":[]}"#;
    let addr: SocketAddr = proxy.addr;
    let mut conn = Conn::open(addr);
    conn.send(&request("POST", MESSAGES, &fields, body.as_bytes()));
    conn.read_until(b"message_start");
    drop(conn);
    std::thread::sleep(std::time::Duration::from_millis(50));
    mock.release();
    let records = proxy.stop_and_records();
    let rec = &records[0];
    assert_eq!(rec.outcome, Outcome::ClientCancelled);
    assert_eq!(rec.usage.and_then(|u| u.input_tokens), anthropic_usage().input_tokens);
}

#[test]
fn an_unknown_model_has_no_cost_and_says_so() {
    let (_, rec) = one(Call { path: CHAT, body: r#"{"model":"my-local-llama","messages":[]}"#, extra: vec![] });
    assert_eq!(rec.usage, Some(openai_usage()));
    assert_eq!(rec.cost_usd, None, "never a made-up 0");
    assert!(rec.unpriced_model);
}

#[test]
fn a_model_given_twice_is_recorded_as_the_provider_reads_it() {
    // Providers' JSON parsers keep the last value of a repeated key: the record names that model
    // at every retention level. (The reading of top-level fields alone, used when neither content
    // nor scanning needs the whole body, has the same rule: `inspect`'s unit tests.)
    let body = r#"{"model":"my-local-llama","messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}"#;
    for retention in ["full", "metadata", "none"] {
        let (_, rec) = one(Call { path: CHAT, body, extra: vec![("x-kurral-retention", retention)] });
        assert_eq!(rec.model.as_deref(), Some("gpt-4o-mini"), "retention {retention}");
    }
}

#[test]
fn a_price_file_of_ones_own_is_used() {
    let mock = MockUpstream::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.json");
    std::fs::write(
        &file,
        r#"{"version":"team-2026-12","currency":"USD","unit":"per 1M tokens","providers":{"openai":{"models":{"my-local-llama":{"input":"1","output":"2"}}}}}"#,
    )
    .unwrap();
    let mut proxy = Proxy::start(&mock, |c| c.capture.pricing_file = Some(file.clone()));
    call(&proxy, &Call { path: CHAT, body: r#"{"model":"my-local-llama","messages":[]}"#, extra: vec![] });
    let rec = &proxy.stop_and_records()[0];
    let cost = rec.cost.as_ref().expect("priced by the team's file");
    assert_eq!(cost.pricing_version, "team-2026-12");
    // 23 input tokens (cached ones at the input rate: no cached price given) × 1 + 7 × 2.
    assert_eq!(cost.total.to_string(), "0.000037");
}

#[test]
fn every_call_shows_the_proxy_overhead() {
    let (_, rec) = one(Call { path: CHAT, body: r#"{"model":"gpt-4o-mini","messages":[]}"#, extra: vec![] });
    let overhead = rec.proxy_overhead_ms.expect("overhead recorded");
    assert!(overhead >= 0.0 && overhead <= rec.latency_ms);
}

/// The scanner conformance fixtures, served by a scripted upstream in small chunks and read
/// through the proxy: the record has each fixture's expected usage, model, cost and tool calls.
#[test]
fn every_conformance_fixture_end_to_end() {
    use common::raw_upstream::{header_value, RawUpstream, Script, Then};
    use common::usage_fixtures::{fixtures_dir, load_cases};
    use kurral_proxy::usage::Shape;

    let upstream = RawUpstream::start(|request| {
        let file = header_value(request, "x-fixture").expect("the test names its fixture");
        let body = std::fs::read(fixtures_dir().join(&file)).expect("fixture");
        let kind = if file.ends_with(".sse") { "text/event-stream" } else { "application/json" };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        for piece in body.chunks(61) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        Script::reply(out, Then::Close)
    });
    let mock = MockUpstream::start_plain();
    let url = kurral_proxy::upstream::UpstreamUrl::parse(&upstream.url()).unwrap();
    let mut proxy = Proxy::start(&mock, |c| c.upstreams = [url.clone(), url.clone(), url]);
    let cases = load_cases();
    for case in &cases {
        let path = match case.shape {
            Shape::Chat => CHAT.to_string(),
            Shape::Responses => RESPONSES.to_string(),
            Shape::Messages => MESSAGES.to_string(),
            _ => format!("{GEMINI}:streamGenerateContent"),
        };
        let body = format!(r#"{{"model":"{}","messages":[]}}"#, case.model.as_deref().unwrap_or("unknown"));
        let resp = call(&proxy, &Call { path: &path, body: &body, extra: vec![("x-fixture", case.file.as_str())] });
        assert_eq!(resp.status, 200, "{}", case.file);
        assert_eq!(
            resp.body,
            std::fs::read(fixtures_dir().join(&case.file)).unwrap(),
            "{}: relayed as sent",
            case.file
        );
    }
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), cases.len());
    for (case, rec) in cases.iter().zip(&records) {
        assert_eq!(rec.usage, case.usage, "{}: usage", case.file);
        assert_eq!(rec.response_model, case.model, "{}: model", case.file);
        let cost = rec.cost.as_ref().map(|c| c.total.to_string());
        assert_eq!(cost, case.cost.as_ref().map(|c| c.0.clone()), "{}: cost", case.file);
        let names: Vec<&str> = rec
            .tools
            .iter()
            .flat_map(|t| t["calls"].as_array().unwrap())
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = case.tool_calls.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(names, want, "{}: tool calls", case.file);
    }
}

#[test]
fn include_usage_rewrite_whatever_the_upstream_framing() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |_| {});
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    let auth = format!("Bearer {OPENAI_KEY}");
    let direct =
        send(mock.addr(), &request("POST", "/v1/chat/completions", &[("Authorization", &auth)], body.as_bytes()));
    for framing in ["close", "length", "chunked"] {
        let through = call(&proxy, &Call { path: CHAT, body, extra: vec![("x-mock-framing", framing)] });
        assert_eq!(through.status, 200, "{framing}");
        assert_eq!(through.header("transfer-encoding"), Some("chunked"), "{framing}: re-chunked");
        assert!(through.header("content-length").is_none(), "{framing}: the length changed");
        assert!(through.complete, "{framing}: ends with its last chunk");
        assert_eq!(normalize_ids(&through.text()), normalize_ids(&direct.text()), "{framing}");
    }
    // An HTTP/1.0 client gets the filtered stream delimited by close.
    let mut fields = proxy.kurral("capture-agent");
    fields.push(("Authorization", &auth));
    let mut raw = request("POST", CHAT, &fields, body.as_bytes());
    let line_end = raw.iter().position(|&b| b == b'\n').unwrap();
    raw.splice(line_end - 4..line_end - 1, b"1.0".iter().copied());
    let old = send(proxy.addr, &raw);
    assert_eq!(normalize_ids(&old.text()), normalize_ids(&direct.text()), "HTTP/1.0");
    let records = proxy.stop_and_records();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.usage == Some(openai_usage()) && r.outcome == Outcome::Ok));
}

#[test]
fn no_capture_relays_and_stores_nothing() {
    let mock = MockUpstream::start_plain();
    let mut proxy = Proxy::start(&mock, |c| c.capture.store = false);
    let resp = call(&proxy, &Call { path: CHAT, body: r#"{"model":"gpt-4o-mini","messages":[]}"#, extra: vec![] });
    assert_eq!(resp.status, 200);
    let read = send(proxy.addr, &request("GET", "/api/agents", &[("X-Kurral-API-Key", proxy.key.as_str())], b""));
    assert_eq!(read.status, 503, "no store to read: {}", read.text());
    proxy.server.take().unwrap().shutdown();
    let stored: Vec<_> = std::fs::read_dir(proxy.data_dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(stored.iter().all(|n| n == "keys.jsonl"), "only the key file: {stored:?}");
}

/// A store slower than the calls (a writer that takes 50 ms a batch) behind a channel of 4: the
/// channel fills, the calls wait for room (counted), the worker threads keep answering other
/// connections at once, and every record arrives.
#[test]
fn a_slow_store_makes_calls_wait_but_never_loses_a_record_or_blocks_a_worker() {
    use std::sync::{Arc, Mutex};

    struct SlowSink(Arc<Mutex<Vec<String>>>);
    impl kurral_proxy::capture::RecordSink for SlowSink {
        fn write_batch(&mut self, records: &[kurral_proxy::capture::Encoded]) -> std::io::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.0.lock().unwrap().extend(records.iter().map(|r| r.id.clone()));
            Ok(())
        }
    }

    let mock = MockUpstream::start_plain();
    let dir = tempfile::tempdir().unwrap();
    let mut config = kurral_proxy::config::Config::for_data_dir(dir.path());
    config.workers = 2;
    config.limits.requests_per_minute = 0;
    config.limits.max_concurrent = 0;
    config.capture_channel_capacity = 4;
    let url = kurral_proxy::upstream::UpstreamUrl::parse(&mock.url()).unwrap();
    config.upstreams = [url.clone(), url.clone(), url];
    let (key, _) = kurral_proxy::auth::KeyStore::new(dir.path()).create("alice").unwrap();
    let written = Arc::new(Mutex::new(Vec::new()));
    let server = kurral_proxy::server::start_with_sink(config, SlowSink(written.clone())).unwrap();
    let addr = server.addr;

    let auth = format!("Bearer {OPENAI_KEY}");
    let body = br#"{"model":"gpt-4o-mini","messages":[]}"#;
    let served = std::sync::atomic::AtomicUsize::new(0);
    let slowest_health = std::thread::scope(|s| {
        for _ in 0..8 {
            let (auth, key, served) = (&auth, &key, &served);
            s.spawn(move || {
                let fields =
                    [("X-Kurral-API-Key", key.as_str()), ("x-kurral-agent", "slow-agent"), ("Authorization", auth)];
                for _ in 0..25 {
                    let resp = send(addr, &request("POST", CHAT, &fields, body));
                    assert_eq!(resp.status, 200);
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        // While the calls wait for the store, the workers still answer at once.
        let mut slowest = std::time::Duration::ZERO;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let health = send(addr, b"GET /api/proxy/health HTTP/1.1\r\nHost: p\r\n\r\n");
            assert_eq!(health.status, 200);
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        slowest
    });
    let waits = server.capture_stats().full_waits.load(std::sync::atomic::Ordering::Relaxed);
    server.shutdown();
    let written = written.lock().unwrap();
    let unique: std::collections::HashSet<&String> = written.iter().collect();
    eprintln!(
        "slow store: {} records, {waits} waits for room, slowest health answer {slowest_health:?}",
        written.len()
    );
    assert_eq!(written.len(), 200, "every call's record arrived");
    assert_eq!(unique.len(), 200, "none twice");
    assert!(waits > 0, "the channel filled and the wait was counted");
    assert!(slowest_health < std::time::Duration::from_millis(500), "a worker was blocked: {slowest_health:?}");
}
