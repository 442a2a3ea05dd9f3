//! Scanner throughput, in bytes per second of response body: SSE framing and prefilter over
//! chunks that carry no usage, whole streams per provider with their usage events (usage only,
//! and with the content a `metadata` record keeps), non-streamed bodies, the include_usage
//! filter, and request inspection.
//!
//! Run: `cargo bench --bench usage` (pure code: `--no-default-features` skips RocksDB).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kurral_proxy::inspect::inspect_request;
use kurral_proxy::usage::include_usage::UsageChunkFilter;
use kurral_proxy::usage::{Caps, ResponseInspector, Shape};

/// The size of one upstream read on the relay path.
const READ: usize = 16 * 1024;
const METADATA: Caps = Caps { content: true, text: 256, arguments: 256, scan: false };

fn chat_delta(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-AbCdEf0123456789\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\
         \"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_0123456789\",\"choices\":[{{\"index\":0,\
         \"delta\":{{\"content\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    )
}

fn chat_stream(events: usize) -> Vec<u8> {
    let mut s: String = (0..events).map(chat_delta).collect();
    s.push_str("data: {\"id\":\"chatcmpl-AbCdEf0123456789\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":800,\"total_tokens\":2000,\"prompt_tokens_details\":{\"cached_tokens\":1024},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn anthropic_stream(events: usize) -> Vec<u8> {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":5,\"cache_creation\":{\"ephemeral_5m_input_tokens\":10,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":1}}}\n\n");
    s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..events {
        s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token{i}\"}}}}\n\n"));
    }
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":800}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn gemini_stream(events: usize) -> Vec<u8> {
    (0..events)
        .map(|i| format!("data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \" token{i}\"}}],\"role\": \"model\"}},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 21,\"candidatesTokenCount\": {i},\"totalTokenCount\": {}}},\"modelVersion\": \"gemini-2.5-flash\"}}\r\n\r\n", 21 + i))
        .collect::<String>()
        .into_bytes()
}

fn responses_stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{i},\"item_id\":\"msg_0123\",\"output_index\":0,\"content_index\":0,\"delta\":\" token{i}\",\"logprobs\":[]}}\n\n"));
    }
    let text: String = (0..events).map(|i| format!(" token{i}")).collect();
    s.push_str(&format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-5-2025-08-07\",\"output\":[{{\"id\":\"msg_0123\",\"type\":\"message\",\"status\":\"completed\",\"content\":[{{\"type\":\"output_text\",\"annotations\":[],\"text\":\"{text}\"}}],\"role\":\"assistant\"}}],\"usage\":{{\"input_tokens\":1200,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":800,\"output_tokens_details\":{{\"reasoning_tokens\":384}},\"total_tokens\":2000}}}}}}\n\n"));
    s.into_bytes()
}

fn scan(shape: Shape, event_stream: bool, caps: Caps, body: &[u8]) -> bool {
    let mut ins = ResponseInspector::new(shape, event_stream, caps);
    for piece in body.chunks(READ) {
        ins.feed(black_box(piece));
    }
    ins.finish().usage_raw.is_some()
}

fn sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_scan");
    // Chunks without usage: framing and the prefilter alone (retention none).
    let deltas: Vec<u8> = (0..2000).flat_map(|i| chat_delta(i).into_bytes()).collect();
    g.throughput(Throughput::Bytes(deltas.len() as u64));
    g.bench_function("chunks_without_usage", |b| b.iter(|| scan(Shape::Chat, true, Caps::USAGE_ONLY, &deltas)));

    for (name, shape, body) in [
        ("openai_chat", Shape::Chat, chat_stream(800)),
        ("openai_responses", Shape::Responses, responses_stream(800)),
        ("anthropic", Shape::Messages, anthropic_stream(800)),
        ("gemini", Shape::Gemini, gemini_stream(800)),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        assert!(scan(shape, true, Caps::USAGE_ONLY, &body), "{name}: usage found");
        g.bench_function(format!("{name}/usage_only"), |b| b.iter(|| scan(shape, true, Caps::USAGE_ONLY, &body)));
        g.bench_function(format!("{name}/metadata"), |b| b.iter(|| scan(shape, true, METADATA, &body)));
    }
    g.finish();
}

fn whole_bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("extract_body");
    let answer = "word ".repeat(400);
    let chat = format!(
        "{{\n  \"id\": \"chatcmpl-1\",\n  \"object\": \"chat.completion\",\n  \"model\": \"gpt-4o-2024-08-06\",\n  \"choices\": [{{\"index\": 0, \"message\": {{\"role\": \"assistant\", \"content\": \"{answer}\"}}, \"finish_reason\": \"stop\"}}],\n  \"usage\": {{\"prompt_tokens\": 1200, \"completion_tokens\": 400, \"total_tokens\": 1600, \"prompt_tokens_details\": {{\"cached_tokens\": 1024}}}}\n}}"
    );
    let anthropic = format!(
        "{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[{{\"type\":\"text\",\"text\":\"{answer}\"}}],\"stop_reason\":\"end_turn\",\"usage\":{{\"input_tokens\":25,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":400}}}}"
    );
    for (name, shape, body) in [("openai_chat", Shape::Chat, chat), ("anthropic", Shape::Messages, anthropic)] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| b.iter(|| scan(shape, false, METADATA, body.as_bytes())));
    }
    g.finish();
}

fn filter(c: &mut Criterion) {
    let mut g = c.benchmark_group("include_usage_filter");
    let body: Vec<u8> = (0..2000)
        .flat_map(|i| {
            let e = chat_delta(i);
            e.replace("}]}\n\n", "}],\"usage\":null}\n\n").into_bytes()
        })
        .collect();
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chat_stream", |b| {
        b.iter(|| {
            let mut f = UsageChunkFilter::default();
            let mut out = Vec::with_capacity(READ);
            for piece in body.chunks(READ) {
                out.clear();
                f.feed(black_box(piece), &mut out);
            }
            f.finish(&mut out);
            out.len()
        })
    });
    g.finish();
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("inspect_request");
    let history: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{{\"role\":\"{}\",\"content\":\"message number {i} {}\"}}",
                if i % 2 == 0 { "user" } else { "assistant" },
                "lorem ipsum ".repeat(20)
            )
        })
        .collect();
    let body = format!(
        "{{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{}],\"tools\":[{{\"type\":\"function\",\"function\":{{\"name\":\"get_weather\",\"parameters\":{{\"type\":\"object\"}}}}}}]}}",
        history.join(",")
    );
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("openai_chat_40_messages", |b| {
        b.iter(|| inspect_request(&mut body.clone().into_bytes(), Shape::Chat, METADATA).messages)
    });
    g.bench_function("openai_chat_40_messages/usage_only", |b| {
        b.iter(|| inspect_request(&mut body.clone().into_bytes(), Shape::Chat, Caps::USAGE_ONLY).stream)
    });
    g.finish();
}

criterion_group!(benches, sse, whole_bodies, filter, requests);
criterion_main!(benches);
