//! Store tests on a real SQLite file: migrations, round trips, and faults injected into the
//! database itself.

use std::sync::Arc;

use super::schema::MIGRATIONS;
use super::*;
use crate::config::Config;
use crate::correlate::engine::tests::growth::{remote_use, verdict};
use crate::correlate::engine::{Effects, FindingNews, FindingRecord, PendingRow};
use crate::correlate::finding::Subject;
use crate::correlate::{Engine, FindingKind, Received};
use crate::telemetry::metrics::Metrics;

#[test]
fn migrates_once_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let v: i64 = store
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, MIGRATIONS.len() as i64);
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(store);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[test]
fn offsets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let c = FileCheckpoint {
        path: "/x".into(),
        dev: 1,
        ino: 2,
        offset: 3,
    };
    store
        .commit(&Effects::default(), std::slice::from_ref(&c), 5)
        .unwrap();
    assert_eq!(store.file_offsets().unwrap()["/x"], c);
}

fn finding(instance: &str, last_seen_ns: u64) -> FindingRecord {
    let subject = Subject {
        kind: FindingKind::SharedInstance,
        watch: "w",
        scope_key: "",
        instance,
        scope: Default::default(),
        service: "api",
        policy: "exclusive",
        boundary: "user",
        severity: "critical",
    };
    let mut record = FindingRecord::new(subject, 1, 1);
    record.absorb(["alice", "bob"], [], [], last_seen_ns);
    record
}

/// Commit `findings` as news at `now_ns`, so that each queues an alert due then.
fn commit_news(store: &mut Store, findings: Vec<FindingRecord>, now_ns: u64) {
    let fx = Effects {
        news: findings
            .iter()
            .map(|r| FindingNews {
                id: r.finding.id.clone(),
                new: true,
                received: None,
                users: r.finding.user_count,
                trace: None,
            })
            .collect(),
        findings,
        ..Effects::default()
    };
    store.commit(&fx, &[], now_ns).unwrap();
}

#[test]
fn an_alert_whose_next_due_time_cannot_be_written_is_not_sent_again_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap().with_alerting();
    let f = finding("i", 5);
    commit_news(&mut store, vec![f.clone()], 1_000);
    let outbox = store.outbox().unwrap();
    assert_eq!(outbox.due(2_000, 64).unwrap().alerts.len(), 1);
    // The fault, in the database itself: every write of the outbox's due time fails.
    store
        .conn
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE ON alert_outbox
             BEGIN SELECT RAISE(FAIL, 'injected'); END;",
        )
        .unwrap();
    let sent = Settled {
        state: AlertState::Firing,
        due_ns: 10_000,
        attempts: 0,
        sent_ns: Some(2_000),
    };
    assert!(outbox.settle(&f.finding.id, sent).is_err());
    assert!(
        outbox.due(3_000, 64).unwrap().alerts.is_empty(),
        "sent at 2000 and due again at 10000: not re-posted at the next poll"
    );
    assert_eq!(outbox.due(10_000, 64).unwrap().alerts.len(), 1);
}

#[test]
fn unreadable_outbox_rows_cannot_wedge_the_ones_behind_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap().with_alerting();
    let bad: Vec<FindingRecord> = (0..70).map(|i| finding(&format!("bad{i}"), 5)).collect();
    commit_news(&mut store, bad, 1_000);
    let good = finding("good", 5);
    commit_news(&mut store, vec![good.clone()], 2_000);
    store
        .conn
        .execute(
            "UPDATE findings SET body = 'not json' WHERE id != ?1",
            [&good.finding.id],
        )
        .unwrap();
    let outbox = store.outbox().unwrap();
    let due = outbox.due(5_000, 64).unwrap();
    assert_eq!(due.unreadable.len(), 70);
    let ids: Vec<&str> = due.alerts.iter().map(|a| a.finding.id.as_str()).collect();
    assert_eq!(
        ids,
        [good.finding.id.as_str()],
        "the good alert behind them is sent"
    );
    assert!(
        outbox.due(6_000, 64).unwrap().unreadable.is_empty(),
        "set aside once"
    );
}

#[test]
fn unreadable_waiting_rows_are_deleted_at_the_first_commit_after_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let fx = Effects {
        parked: vec![PendingRow {
            seq: 7,
            received_ns: 1,
            body: "{not an observation".into(),
        }],
        ..Effects::default()
    };
    store.commit(&fx, &[], 1).unwrap();
    let cfg = Config::from_toml("[[watch]]\nname = \"w\"\nattribute = \"a\"\n").unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&cfg, metrics.clone());
    engine.restore(store.restore().unwrap());
    let mut fx = Effects::default();
    engine.tick(Received::now(), &mut fx);
    store.commit(&fx, &[], 2).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.restore().unwrap().pending.is_empty(),
        "not read again"
    );
    assert!(
        metrics
            .encode_prometheus_text()
            .contains(r#"crosstalk_evicted_total{watch="",reason="pending_unreadable"} 1"#)
    );
}

#[test]
fn a_later_last_seen_from_the_cluster_survives_a_restart() {
    let cfg = Config::from_toml("[[watch]]\nname = \"w\"\nattribute = \"a\"\nscope = \"global\"\n")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new())).with_cluster();
    for last_s in [4, 90] {
        let mut fx = Effects::default();
        let now = Received::now();
        let uses = vec![
            remote_use("alice", "acme", 1, 2),
            remote_use("bob", "acme", 3, last_s),
        ];
        engine.remote_conflict(verdict(uses), now, now, &mut fx);
        engine.tick(now, &mut fx);
        store.commit(&fx, &[], 1).unwrap();
    }
    drop(store);
    let restored = Store::open(dir.path()).unwrap().restore().unwrap();
    assert_eq!(restored.findings[0].last_seen_ns, 90 * 1_000_000_000);
}

#[test]
fn a_finding_past_its_retention_is_deleted_at_a_prune_tick_and_stays_deleted_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut fx = Effects::default();
    let (mut engine, old, new) = crate::correlate::engine::tests::expiry::two_findings(
        |cfg| Engine::new(cfg, Arc::new(Metrics::new())),
        &mut fx,
    );
    store.commit(&fx, &[], 1).unwrap();
    let mut fx = Effects::default();
    engine.tick(at_s(1000 + 3600 + 10), &mut fx);
    store.commit(&fx, &[], 2).unwrap();
    let ids = |restored: &crate::correlate::engine::Restored| -> Vec<String> {
        restored
            .findings
            .iter()
            .map(|r| r.finding.id.clone())
            .collect()
    };
    assert_eq!(ids(&store.restore().unwrap()), vec![new.clone()]);
    drop(store);
    let restored = Store::open(dir.path()).unwrap().restore().unwrap();
    assert_eq!(
        ids(&restored),
        vec![new.clone()],
        "{old} does not come back"
    );
    assert!(
        restored.bindings.iter().all(|b| b.instance != "old"),
        "nor do the bindings it was judged from"
    );
}

fn at_s(wall_s: u64) -> Received {
    Received {
        wall_ns: wall_s * 1_000_000_000,
        at: std::time::Instant::now(),
    }
}
