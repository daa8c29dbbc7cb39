//! Ingest micro-benchmarks on the load generator's realistic batches (512 spans of ~400 bytes,
//! 10 attributes):
//!
//! - `decode/prost`: `ExportTraceServiceRequest::decode` alone, the baseline;
//! - `decode/prost_observe`: prost plus `observe_traces`, what ingest cost before the fast path;
//! - `decode/fast_observe`: the zero-copy reader, which does both;
//! - `engine/ingest`: the correlation engine taking a batch of observations, per span.
//!
//! Throughput is in spans. `scripts/bench` divides `prost` by `fast_observe` for its
//! `ingest_vs_prost` figure.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use crosstalk::config::Config;
use crosstalk::correlate::{Effects, Engine, Received};
use crosstalk::normalize::otlp::observe_traces;
use crosstalk::normalize::otlp_fast::observe_traces_protobuf;
use crosstalk::normalize::{Extractor, Tally};
use crosstalk::telemetry::metrics::Metrics;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[path = "../src/bin/crosstalk-loadgen/payload.rs"]
#[allow(dead_code)]
mod payload;

/// A few distinct encoded batches, so that one hot payload does not flatter the caches.
fn batches() -> Vec<Vec<u8>> {
    let mut generator = payload::Generator::new(payload::Shape::default(), 7);
    let now = payload::now_ns();
    (0..8)
        .map(|_| generator.batch(now).encode_to_vec())
        .collect()
}

fn decode(c: &mut Criterion) {
    let batches = batches();
    let spans = payload::Shape::default().spans as u64;
    let bytes: usize = batches.iter().map(Vec::len).sum();
    eprintln!(
        "payload: {} bytes per span on average",
        bytes / batches.len() / spans as usize
    );
    let ex = Extractor::new(&Config::default_config());
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(spans));
    let mut i = 0;
    let mut next = || {
        i = (i + 1) % batches.len();
        &batches[i][..]
    };
    group.bench_function("prost", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(next())).map(black_box))
    });
    group.bench_function("prost_observe", |b| {
        b.iter(|| {
            let request = ExportTraceServiceRequest::decode(black_box(next())).ok();
            let mut tally = Tally::default();
            let request = request.unwrap_or_default();
            black_box(observe_traces(&request, &ex, 1, &mut tally))
        })
    });
    group.bench_function("fast_observe", |b| {
        b.iter(|| {
            let mut tally = Tally::default();
            black_box(observe_traces_protobuf(
                black_box(next()),
                &ex,
                1,
                &mut tally,
            ))
        })
    });
    group.finish();
}

fn engine(c: &mut Criterion) {
    let config = Config::default_config();
    let ex = Extractor::new(&config);
    let batches: Vec<_> = batches()
        .iter()
        .map(|b| {
            let mut tally = Tally::default();
            observe_traces_protobuf(b, &ex, 1, &mut tally).unwrap_or_default()
        })
        .collect();
    let spans = batches[0].len() as u64;
    let mut engine = Engine::new(&config, Arc::new(Metrics::new()));
    // Warm: every binding of the batches known, as in steady state.
    for b in &batches {
        engine.ingest(b.clone(), Received::now(), &mut Effects::default());
    }
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(spans));
    let mut i = 0;
    group.bench_function("ingest", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % batches.len();
                batches[i].clone()
            },
            |batch| {
                let mut fx = Effects::default();
                engine.ingest(batch, Received::now(), &mut fx);
                fx
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, engine);
criterion_main!(benches);
