//! Security scanner throughput, in bytes per second of text: every detector over typical prompt
//! text (prose, code, logs, a fetched web page), as a user message and as a tool result; the
//! tool-call detectors over arguments; and a whole 40-message request, from its JSON body to its
//! findings (parse, units, scan), which is what the capture path pays per call.
//!
//! Run: `cargo bench --bench scan` (pure code: `--no-default-features` skips RocksDB).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kurral_proxy::inspect::inspect_request;
use kurral_proxy::scan::{CallScan, Place, Scanner};
use kurral_proxy::usage::{Caps, Shape};

/// Ordinary text of the kinds agents send: prose, a stack trace, code, numbers, a URL, markdown.
const PARAGRAPHS: &[&str] = &[
    "The quarterly report shows revenue grew by 12% to $4.2 million, driven mostly by the new \
     enterprise tier. Customer churn fell from 3.1% to 2.4% after the onboarding changes shipped in \
     March. Please summarise the main risks for the board and suggest two follow-up analyses.\n\n",
    "Traceback (most recent call last):\n  File \"/srv/app/worker.py\", line 212, in run\n    result = \
     self.handle(job)\n  File \"/srv/app/worker.py\", line 187, in handle\n    raise TimeoutError(f\"job \
     {job.id} exceeded 30s\")\nTimeoutError: job 84213 exceeded 30s\n\n",
    "fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    let path = \
     args.get(1).expect(\"usage: tool <file>\");\n    let text = std::fs::read_to_string(path).unwrap();\n    \
     println!(\"{} lines\", text.lines().count());\n}\n\n",
    "## Release notes (v2.8.0, 2026-11-20)\n- Faster cold start: the index now loads lazily.\n- Fixed a \
     crash when the config file is empty.\n- See https://docs.example.com/releases/2.8 for the full list; \
     you can ignore the warning about the deprecated flag for now.\n\n",
    "Order 55120 shipped on 14/11/2026 from the Rotterdam warehouse, tracking 1Z999AA10123456784, weight \
     2.4 kg, 3 items. The customer asked whether the previous instructions for gift wrapping were \
     applied; the packing slip says yes.\n\n",
];

fn text(len: usize) -> String {
    let mut s = String::with_capacity(len + 512);
    let mut i = 0;
    while s.len() < len {
        s.push_str(PARAGRAPHS[i % PARAGRAPHS.len()]);
        i += 1;
    }
    s
}

fn chat_body(messages: usize) -> Vec<u8> {
    let mut msgs = Vec::new();
    for i in 0..messages {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let content = PARAGRAPHS[i % PARAGRAPHS.len()];
        msgs.push(serde_json::json!({ "role": role, "content": content }));
    }
    serde_json::to_vec(&serde_json::json!({ "model": "gpt-4o", "messages": msgs })).unwrap()
}

fn detectors(c: &mut Criterion) {
    let scanner = Scanner::new();
    let mut g = c.benchmark_group("scan_text");
    for len in [4 * 1024, 64 * 1024] {
        let t = text(len);
        g.throughput(Throughput::Bytes(t.len() as u64));
        let mut out = Vec::new();
        g.bench_function(format!("prompt_{}k", len / 1024), |b| {
            b.iter(|| {
                scanner.matches(black_box(&t), Place::RequestMessage, &mut out);
                out.len()
            })
        });
        g.bench_function(format!("tool_result_{}k", len / 1024), |b| {
            b.iter(|| {
                scanner.matches(black_box(&t), Place::ToolResult, &mut out);
                out.len()
            })
        });
    }
    let args = r#"pip install -r requirements.txt && pytest -q tests/ --maxfail=1 && git commit -am "fix flaky test" "#
        .repeat(8);
    g.throughput(Throughput::Bytes(args.len() as u64));
    let mut out = Vec::new();
    g.bench_function("tool_call_arguments", |b| {
        b.iter(|| {
            scanner.matches(black_box(&args), Place::ToolCall, &mut out);
            out.len()
        })
    });
    g.finish();
}

fn whole_request(c: &mut Criterion) {
    let scanner = Scanner::new();
    let body = chat_body(40);
    let caps = Caps { content: true, text: 1 << 20, arguments: 1 << 20, scan: true };
    let mut g = c.benchmark_group("scan_request");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chat_40_messages", |b| {
        b.iter(|| {
            let info = inspect_request(&mut body.clone(), Shape::Chat, caps);
            let mut scan = CallScan::default();
            scanner.scan(&info.units, &mut scan);
            scan.findings.len()
        })
    });
    g.finish();
}

criterion_group!(benches, detectors, whole_request);
criterion_main!(benches);
