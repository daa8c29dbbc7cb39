//! What a failed commit costs the engine, against the size of the store: reloading the engine
//! from the store (how a failed commit was undone before the per-batch undo log) versus undoing
//! the failed group from the log. Builds a store of `CROSSTALK_BINDINGS` (default 1,000,000)
//! (instance, user) bindings through the real engine and SQLite store, then prints
//! `reload_ms=` and `undo_us=` (a group of 256 batches of 8 observations, new and known users).

use std::sync::Arc;
use std::time::Instant;

use crosstalk::config::Config;
use crosstalk::correlate::{Effects, Engine, Received};
use crosstalk::normalize::{Observation, Resource, Signal, WatchedId};
use crosstalk::store::Store;
use crosstalk::telemetry::metrics::Metrics;

fn observation(resource: &Arc<Resource>, user: &str, instance: &str) -> Observation {
    Observation {
        signal: Signal::Span,
        start_ns: 1,
        end_ns: 2,
        trace_id: None,
        span_id: None,
        resource: resource.clone(),
        user: Some(user.into()),
        tenant: None,
        watched: vec![WatchedId {
            watch: 0,
            id: instance.into(),
            origin: None,
        }],
        delivery: None,
    }
}

fn main() {
    let n: usize = std::env::var("CROSSTALK_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut cfg = Config::from_toml(
        "[[watch]]\nname = \"w\"\nattribute = \"a\"\npolicy = \"exclusive\"\nretention = \"1000d\"\n",
    )
    .expect("config");
    cfg.limits.max_tracked_instances = n * 2;
    let resource = Arc::new(Resource::from_identity(
        [("service.name".to_owned(), "api".to_owned())].into(),
        None,
        None,
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path()).expect("store");
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new()));
    engine.keep_undo_log();
    let received = Received::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
        let mut fx = Effects::default();
        let batch = chunk
            .iter()
            .map(|i| observation(&resource, &format!("u{i}"), &format!("i{i}")))
            .collect();
        engine.ingest(batch, received, &mut fx);
        store.commit(&fx, &[], received.wall_ns).expect("commit");
        engine.committed(engine.undo_mark());
    }

    let started = Instant::now();
    let mut reloaded = Engine::new(&cfg, Arc::new(Metrics::new()));
    reloaded.restore(store.restore().expect("restore"));
    let reload = started.elapsed();
    assert_eq!(reloaded.tracked_instances(), n);
    drop(reloaded);

    let mark = engine.undo_mark();
    let mut fx = Effects::default();
    for b in 0..256usize {
        let batch = (0..8usize)
            .map(|j| {
                let i = (b * 8 + j) * 97 % n;
                // Half new users of known instances, half known bindings.
                let user = if j % 2 == 0 {
                    format!("x{i}")
                } else {
                    format!("u{i}")
                };
                observation(&resource, &user, &format!("i{i}"))
            })
            .collect();
        engine.ingest(batch, received, &mut fx);
    }
    let started = Instant::now();
    engine.undo_since(mark, &[]);
    let undo = started.elapsed();
    assert_eq!(engine.tracked_instances(), n);
    println!(
        "bindings={n} reload_ms={:.0} undo_us={:.0}",
        reload.as_secs_f64() * 1e3,
        undo.as_secs_f64() * 1e6
    );
}
