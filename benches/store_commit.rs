//! The store's write path alone: new binding rows (a per-request service's one row per request)
//! committed in groups of 512, as the engine hands them over, into a fresh store on disk.
//!
//! Prints rows per second over `CROSSTALK_BINDINGS` (default 500,000) rows, median of three
//! runs, then one line `store_rows_per_s=N`. What the end-to-end `new_bindings_per_s` in
//! `scripts/bench` can reach at most, with nothing else on the core.

use std::time::Instant;

use crosstalk::correlate::Effects;
use crosstalk::correlate::engine::{BindingRow, ScopeRow};
use crosstalk::normalize::{Signal, SpanId, TraceId};
use crosstalk::store::Store;

const BATCH: usize = 512;
const SCOPE: &str = "service.instance.id=pod-1|service.name=agent-backend|service.namespace=agents";

fn row(n: u64) -> BindingRow {
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&(n / 64 + 1).to_be_bytes());
    BindingRow {
        watch: "agent_factory".into(),
        scope_key: SCOPE.into(),
        instance: format!("fx-{:016x}-{:08x}", n / BATCH as u64, n % BATCH as u64),
        user: format!("user-{:07}", n % 5000),
        tenant: None,
        first_ns: 1_796_317_097_574_910_905 + n * 1000,
        last_ns: 1_796_317_097_577_910_905 + n * 1000,
        last_start_ns: 1_796_317_097_574_910_905 + n * 1000,
        last_end_ns: 1_796_317_097_577_910_905 + n * 1000,
        trace_id: TraceId::from_bytes(&trace),
        span_id: SpanId::from_bytes(&(n + 1).to_be_bytes()),
        signal: Signal::Span,
        evidence_scope_key: SCOPE.into(),
    }
}

/// Rows per second committing `rows` rows into a fresh store.
fn run(rows: u64) -> f64 {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let mut store = Store::open(dir.path()).expect("a fresh store opens");
    let scope = ScopeRow {
        scope_key: SCOPE.into(),
        identity_json: r#"{"service.name":"agent-backend"}"#.into(),
    };
    let batches: Vec<Effects> = (0..rows.div_ceil(BATCH as u64))
        .map(|b| Effects {
            scopes: if b == 0 { vec![scope.clone()] } else { vec![] },
            bindings: (b * BATCH as u64..((b + 1) * BATCH as u64).min(rows))
                .map(row)
                .collect(),
            ..Effects::default()
        })
        .collect();
    let start = Instant::now();
    for (i, fx) in batches.iter().enumerate() {
        store
            .commit(fx, &[], i as u64)
            .expect("the commit succeeds");
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rows = std::env::var("CROSSTALK_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let mut runs: Vec<f64> = (0..3).map(|_| run(rows)).collect();
    runs.sort_by(f64::total_cmp);
    for r in &runs {
        println!("{rows} rows in batches of {BATCH}: {r:.0} rows/s");
    }
    println!("store_rows_per_s={:.0}", runs[1]);
}
