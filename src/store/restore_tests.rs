//! Restoring through the real store: rows go into the engine one at a time, in the order the
//! engine relies on, and the instance table is sized once for all of them.

use std::sync::Arc;

use super::Store;
use crate::correlate::engine::tests::{at, config, obs};
use crate::correlate::engine::{
    FindingRecord, PendingRow, RestoreSink, RestoredScope, Restoring, StoredBinding,
};
use crate::correlate::evidence::SeenRow;
use crate::correlate::{Effects, Engine};
use crate::telemetry::metrics::Metrics;

/// Hands every row on to the engine, noting what the engine's table looked like as they came.
struct Watching<'a, 'e> {
    engine: &'a mut Restoring<'e>,
    announced: Option<usize>,
    scopes: usize,
    /// The table's capacity after each binding.
    capacities: Vec<usize>,
    findings: usize,
}

impl RestoreSink for Watching<'_, '_> {
    fn expect_bindings(&mut self, count: usize) {
        assert!(
            self.capacities.is_empty(),
            "announced before the first binding"
        );
        self.announced = Some(count);
        self.engine.expect_bindings(count);
    }
    fn scope(&mut self, scope: RestoredScope) {
        assert!(
            self.capacities.is_empty(),
            "every scope before the bindings"
        );
        self.scopes += 1;
        self.engine.scope(scope);
    }
    fn binding(&mut self, binding: StoredBinding<'_>) {
        assert_eq!(self.findings, 0, "every binding before the findings");
        self.engine.binding(binding);
        self.capacities.push(self.engine.instance_capacity());
    }
    fn finding(&mut self, record: FindingRecord) {
        self.findings += 1;
        self.engine.finding(record);
    }
    fn pending(&mut self, row: PendingRow) {
        self.engine.pending(row);
    }
    fn evidence(&mut self, row: SeenRow) {
        self.engine.evidence(row);
    }
}

#[test]
fn restoring_streams_rows_in_order_into_an_instance_table_sized_once() {
    // Growing the table while a million rows come in would hold the old table and the new one
    // at once: the peak a restart must not have.
    let cfg = config("exclusive", "process", "user");
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut first = Engine::new(&cfg, Arc::new(Metrics::new()));
    let n = 5_000u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut fx = Effects::default();
        let batch = (chunk.iter())
            .map(|i| obs(Some(&format!("u{i}")), None, &format!("f{i}"), 1, 2, "p"))
            .collect();
        first.ingest(batch, at(10), &mut fx);
        // One instance shared by two users: a finding to restore after the bindings.
        first.ingest(
            vec![obs(Some("bob"), None, "f0", 3, 4, "p")],
            at(10),
            &mut fx,
        );
        store.commit(&fx, &[], 1).unwrap();
    }

    let mut second = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut seen = None;
    second
        .restore_from(|engine| {
            let mut watching = Watching {
                engine,
                announced: None,
                scopes: 0,
                capacities: Vec::new(),
                findings: 0,
            };
            store.restore_into(&mut watching)?;
            seen = Some((watching.announced, watching.scopes, watching.capacities));
            Ok::<_, super::StoreError>(())
        })
        .unwrap();
    let (announced, scopes, capacities) = seen.unwrap();
    assert_eq!(
        announced,
        Some(n as usize + 1),
        "every binding counted first"
    );
    assert_eq!(scopes, 1);
    assert_eq!(capacities.len(), n as usize + 1);
    assert!(
        capacities[0] >= n as usize,
        "room for every instance at once"
    );
    assert!(
        capacities.iter().all(|&c| c == capacities[0]),
        "the table grew while rows came in"
    );
    assert_eq!(second.tracked_instances(), n as usize);
    assert_eq!(second.findings().len(), 1);
}
