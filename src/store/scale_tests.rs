//! Users at scale: one instance shared by 100,000 users, through the engine and the real store
//! with a restart in between. The count is exact up to 10,000, an estimate within ±2 % beyond,
//! never decreasing, persisted; and after the restart each observation touches bounded state.

use std::sync::Arc;

use super::Store;
use crate::config::Config;
use crate::correlate::engine::tests::{at, config, obs};
use crate::correlate::{Effects, Engine};
use crate::telemetry::metrics::Metrics;

/// Feed users `from..to` of instance `f`, committing every 1,000; the counts after each commit.
fn feed(e: &mut Engine, store: &mut Store, users: std::ops::Range<u64>) -> Vec<(u64, bool)> {
    let mut counts = Vec::new();
    let all: Vec<u64> = users.collect();
    for chunk in all.chunks(1000) {
        let mut fx = Effects::default();
        let batch = chunk
            .iter()
            .map(|i| obs(Some(&format!("user-{i}")), None, "f", *i, *i + 1, "p"))
            .collect();
        e.ingest(batch, at(1000), &mut fx);
        e.tick(at(1000), &mut fx);
        assert!(fx.findings.len() <= 1, "one finding row per commit at most");
        store.commit(&fx, &[], 1).unwrap();
        let f = &e.findings()[0];
        counts.push((f.user_count, f.user_count_exact));
    }
    counts
}

fn restart(cfg: &Config, store: &Store) -> Engine {
    let mut e = Engine::new(cfg, Arc::new(Metrics::new()));
    e.restore(store.restore().unwrap());
    e
}

#[test]
fn a_hundred_thousand_users_are_counted_within_two_percent_across_a_restart() {
    let cfg = config("exclusive", "global", "user");
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut e = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut counts = feed(&mut e, &mut store, 0..10_000);
    assert_eq!(counts.last(), Some(&(10_000, true)), "exact up to 10,000");
    counts.extend(feed(&mut e, &mut store, 10_000..50_000));
    let before = e.findings()[0].user_count;

    let mut e = restart(&cfg, &store);
    let f = e.findings()[0].clone();
    assert_eq!((f.user_count, f.user_count_exact), (before, false));
    // What one observation of the instance is judged against stays small, however many
    // bindings the store holds for it.
    assert!(e.max_uses_per_instance() <= 32);
    assert!(
        e.max_user_counter_bytes() < 16 * 1024,
        "the stored counter is a sketch of fixed size"
    );
    counts.extend(feed(&mut e, &mut store, 50_000..100_000));
    // Users seen before count once.
    counts.extend(feed(&mut e, &mut store, 0..5_000));

    assert!(
        counts.windows(2).all(|w| w[0].0 <= w[1].0),
        "the count decreased"
    );
    let e = restart(&cfg, &store);
    let f = &e.findings()[0];
    let error = (f.user_count as f64 - 100_000.0).abs() / 100_000.0;
    assert!(error <= 0.02, "{} users counted for 100,000", f.user_count);
    assert!(!f.user_count_exact);
    assert_eq!(f.users.len(), crate::correlate::finding::MAX_LISTED_USERS);
}
