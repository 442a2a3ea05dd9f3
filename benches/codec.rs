//! Codec throughput: request head parse + rewrite, response head parse, chunked decoding.
//! Reported in bytes per second of input (criterion `Throughput::Bytes`).
//!
//! Run: `cargo bench --bench codec`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kurral_proxy::http::body::BodyDecoder;
use kurral_proxy::http::head::{parse_request_head, parse_response_head, Framing, HeadLimits};
use kurral_proxy::http::rewrite::upstream_request_head;

/// The head the official openai Python SDK sends through the proxy (header set and sizes as
/// observed; values are stand-ins).
const SDK_HEAD: &str = "POST /api/proxy/openai/v1/chat/completions HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n\
Content-Type: application/json\r\nUser-Agent: OpenAI/Python 2.8.1\r\nX-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 2.8.1\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n\
X-Kurral-API-Key: kr_live_0123456789abcdefghijklmnopqrstuvwxyzABCD\r\nx-kurral-agent: support-bot\r\n\
x-kurral-session-id: 0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b\r\nX-Stainless-Async: false\r\n\
x-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\nContent-Length: 1234\r\n\r\n";

const SDK_RESPONSE_HEAD: &str = "HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\n\
Content-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\
access-control-expose-headers: X-Request-ID\r\nopenai-organization: org-123\r\nopenai-processing-ms: 215\r\n\
openai-version: 2020-10-01\r\nx-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n\
x-request-id: req_0123456789abcdef\r\ncf-cache-status: DYNAMIC\r\nServer: cloudflare\r\n\r\n";

const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 32 * 1024, max_target_bytes: 8 * 1024 };

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("head");
    let req = SDK_HEAD.as_bytes();
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("parse_request", |b| b.iter(|| parse_request_head(black_box(req), LIMITS).unwrap().unwrap()));
    g.bench_function("parse_and_rewrite_request", |b| {
        b.iter(|| {
            let h = parse_request_head(black_box(req), LIMITS).unwrap().unwrap();
            upstream_request_head(req, &h, b"/v1/chat/completions", "api.openai.com")
        })
    });
    let resp = SDK_RESPONSE_HEAD.as_bytes();
    g.throughput(Throughput::Bytes(resp.len() as u64));
    g.bench_function("parse_response", |b| {
        b.iter(|| parse_response_head(black_box(resp), 64 * 1024, false).unwrap().unwrap())
    });
    g.finish();
}

/// A chunked SSE body as OpenAI streams it: one small chunk per event.
fn sse_chunked_body(events: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..events {
        let event = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1721631035,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        );
        out.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn chunked(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunked");
    let small = sse_chunked_body(1000);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("decode_sse_events", |b| {
        b.iter(|| {
            let mut d = BodyDecoder::new(Framing::Chunked, u64::MAX);
            let mut n = 0usize;
            let used = d.decode(black_box(&small), &mut |p| n += p.len()).unwrap();
            assert!(d.is_done());
            (used, n)
        })
    });
    // Large chunks, as a request body upload arrives.
    let mut big = Vec::new();
    for _ in 0..16 {
        big.extend_from_slice(b"10000\r\n");
        big.extend(std::iter::repeat_n(b'x', 0x10000));
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("decode_64k_chunks", |b| {
        b.iter(|| {
            let mut d = BodyDecoder::new(Framing::Chunked, u64::MAX);
            d.decode(black_box(&big), &mut |p| {
                black_box(p);
            })
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, heads, chunked);
criterion_main!(benches);
