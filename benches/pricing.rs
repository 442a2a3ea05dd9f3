//! Pricing a call: model resolution plus exact cost, as done once per captured call, and what a
//! record then does with the amounts (the total as a number, each amount as its exact decimal).
//! Three names: an exact canonical name, a dated snapshot (resolved by stripping the date) and an
//! unknown name (every suffix tried, then `None`).
//!
//! Run: `cargo bench --bench pricing`

use std::fmt::Write;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kurral_proxy::pricing::PriceTable;
use kurral_proxy::provider::Provider;
use kurral_proxy::usage::Usage;

/// A cached Anthropic call with both kinds of cache write, so every breakdown line is computed.
const USAGE: Usage = Usage {
    input_tokens: Some(50_000),
    output_tokens: Some(2_000),
    total_tokens: Some(52_000),
    cache_read_tokens: Some(40_000),
    cache_write_tokens: Some(9_000),
    cache_write_1h_tokens: Some(4_000),
    reasoning_tokens: Some(500),
};

fn pricing(c: &mut Criterion) {
    let table = PriceTable::builtin();
    let mut g = c.benchmark_group("pricing");
    for (label, provider, model) in [
        ("exact_name", Provider::Anthropic, "claude-sonnet-4-5"),
        ("dated_snapshot", Provider::Anthropic, "claude-sonnet-4-5-20250929"),
        ("gemini_resource_and_version", Provider::Google, "models/gemini-2.0-flash-001"),
        ("unknown_name", Provider::OpenAi, "gpt-4o-mini-realtime-2024-12-17"),
    ] {
        g.bench_function(format!("lookup/{label}"), |b| {
            b.iter(|| table.lookup(black_box(provider), black_box(model)).map(|p| p.model))
        });
        g.bench_function(format!("lookup_and_cost/{label}"), |b| {
            b.iter(|| table.cost(black_box(provider), black_box(model), black_box(&USAGE)))
        });
    }
    let cost = table.cost(Provider::Anthropic, "claude-sonnet-4-5", &USAGE).expect("a listed model");
    g.bench_function("usd/to_f64", |b| b.iter(|| black_box(cost.total).to_f64()));
    let mut text = String::with_capacity(64);
    g.bench_function("usd/decimal", |b| {
        b.iter(|| {
            text.clear();
            write!(text, "{}", black_box(cost.total)).unwrap();
            text.len()
        })
    });
    g.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
