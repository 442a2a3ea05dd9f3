//! The capture path after a call: encoding a record, which the worker that made it does
//! (`record/to_writer`: encode, then free the record's JSON trees), and writing batches of encoded
//! records to RocksDB with their session and agent aggregates, as the writer thread does.
//! Reported in records per second: `store_write` by wall time (what one writer sustains,
//! RocksDB's background flushes and compactions included, so it swings with them), `writer_cpu`
//! by the writer thread's own CPU time (steadier, but still moving by up to a third from one run
//! to the next as the memtables fill and flush: compare alternating runs of two binaries).
//!
//! Run: `cargo bench --bench capture` (needs the `store` feature, on by default).

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kurral_proxy::capture::store::{Store, StoreWriter};
use kurral_proxy::capture::{CallRecord, Durability, Encoded, RecordSink};

/// Records per batch, as the writer takes them under load (its batch limit).
const BATCH: usize = 512;

/// Sessions of the records written: `Some(n)`, n sessions named by the client, calls spread over
/// them in turn; `None`, a session per call named by the proxy (a client that sends no
/// `x-kurral-session-id`, as the load bench's).
type Sessions = Option<usize>;

/// A streamed chat call kept at retention `metadata`, as most records are.
fn record(i: usize, sessions: Sessions) -> CallRecord {
    let session_id = match sessions {
        Some(n) => format!("00000000-0000-4000-8000-{:012}", i % n),
        None => kurral_proxy::auth::headers::generated_session_id(),
    };
    let json = serde_json::json!({
        "id": uuid::Uuid::now_v7().to_string(),
        "session_id": session_id, "session_generated": sessions.is_none(),
        "user": "bench-user", "key_id": "key_0123456789", "agent": format!("agent-{}", i % 4),
        "env": "production", "provider": "openai", "endpoint": "chat.completions",
        "model": "gpt-4o", "response_model": "gpt-4o-2024-08-06", "stream": true,
        "status": 200, "upstream_status": 200, "outcome": "ok", "error": null,
        "started_at": "2026-12-01T12:00:00.000Z", "latency_ms": 812.5, "ttfb_ms": 301.2, "ttft_ms": 305.9,
        "retention": "metadata", "request_bytes": 4210, "response_bytes": 9876,
        "usage": {"input_tokens": 1200, "output_tokens": 800, "total_tokens": 2000, "cache_read_tokens": 1024,
                  "cache_write_tokens": null, "cache_write_1h_tokens": null, "reasoning_tokens": 0},
        "usage_raw": {"prompt_tokens": 1200, "completion_tokens": 800, "total_tokens": 2000,
                      "prompt_tokens_details": {"cached_tokens": 1024}},
        "cost_usd": 0.01052,
        "cost": {"model": "gpt-4o", "pricing_version": "2026-12-01", "long_context": false, "total_usd": 0.01052,
                 "total_exact": "0.01052", "breakdown": {"input": "0.00044", "cache_read": "0.00128",
                 "cache_write_5m": "0", "cache_write_1h": "0", "output": "0.008"}},
        "unpriced_model": false, "proxy_overhead_ms": 0.084, "stream_usage_added": true,
        "request": {"summary": "Summarize the attached quarterly report in three bullet points for the board, keeping every figure exact.", "messages": 6},
        "response": {"summary": "1. Revenue grew 12% quarter on quarter, to $4.1M. 2. Gross margin held at 71%. 3. Cash runway is 26 months.", "truncated": false},
        "tools": {"defined": ["search_docs", "get_weather"], "calls": [{"id": "call_1", "name": "search_docs", "arguments": "{\"query\":\"Q3 report\"}"}], "results": []}
    });
    serde_json::from_value(json).expect("a valid record")
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let r = record(0, Some(1));
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&r).encode()));
    let bytes = r.encode();
    g.bench_function("decode", |b| b.iter(|| CallRecord::decode(black_box(&bytes)).unwrap()));
    g.bench_function("to_writer", |b| {
        b.iter_batched(|| record(0, Some(1)), |r| drop(black_box(Encoded::new(r))), BatchSize::SmallInput)
    });
    g.finish();
}

fn write(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_write");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    for (name, durability, sessions) in [
        ("async/100_sessions", Durability::Async, Some(100)),
        ("async/session_per_call", Durability::Async, Some(usize::MAX)),
        ("async/generated_sessions", Durability::Async, None),
        ("sync/100_sessions", Durability::Sync, Some(100)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut writer = StoreWriter::new(store, durability);
        let mut n = 0usize;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let batch: Vec<Encoded> = (n..n + BATCH).map(|i| Encoded::new(record(i, sessions))).collect();
                    n += BATCH;
                    batch
                },
                |batch| writer.write_batch(&batch).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: one valid timespec out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn writer_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("writer_cpu");
    g.sample_size(20);
    // The last case has the batches the writer takes in the load bench at saturation (about 36
    // records: it collects for a millisecond between small batches), where each batch's own
    // costs (the log write, the agent's summary, the write group) weigh more per record.
    for (name, sessions, batch) in [
        ("async/100_sessions", Some(100), BATCH),
        ("async/session_per_call", Some(usize::MAX), BATCH),
        ("async/generated_sessions", None, BATCH),
        ("async/generated_sessions/batch_36", None, 36),
    ] {
        g.throughput(Throughput::Elements(batch as u64));
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut writer = StoreWriter::new(store, Durability::Async);
        let mut n = 0usize;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut cpu = Duration::ZERO;
                for _ in 0..iters {
                    let records: Vec<Encoded> = (n..n + batch).map(|i| Encoded::new(record(i, sessions))).collect();
                    n += batch;
                    let start = thread_cpu();
                    writer.write_batch(&records).unwrap();
                    // The writer drops the batch it wrote: that is its work too.
                    drop(records);
                    cpu += thread_cpu() - start;
                }
                cpu
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, write, writer_cpu);
criterion_main!(benches);
