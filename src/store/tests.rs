//! Store tests on a real SQLite file: migrations, round trips, and faults injected into the
//! database itself.

use std::sync::Arc;

use super::schema::MIGRATIONS;
use super::*;
use crate::config::Config;
use crate::correlate::engine::tests::growth::{remote_use, verdict};
use crate::correlate::engine::{
    BindingRow, Effects, EvictedInstance, FindingNews, FindingRecord, PendingRow, ScopeRow,
};
use crate::correlate::finding::Subject;
use crate::correlate::{Engine, FindingKind, Received};
use crate::normalize::{Signal, SpanId, TraceId};
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

/// A binding row as the engine hands it over.
fn binding_row(scope_key: &str, evidence_scope_key: &str, instance: &str) -> BindingRow {
    BindingRow {
        watch: "agent_factory".into(),
        scope_key: scope_key.into(),
        instance: instance.into(),
        user: "alice".into(),
        tenant: Some("acme".into()),
        first_ns: 10,
        last_ns: 20,
        last_start_ns: 15,
        last_end_ns: 20,
        trace_id: TraceId::from_hex("0af7651916cd43dd8448eb211c80319c"),
        span_id: SpanId::from_hex("b7ad6b7169203331"),
        signal: Signal::Span,
        evidence_scope_key: evidence_scope_key.into(),
    }
}

fn scope_row(scope_key: &str) -> ScopeRow {
    ScopeRow {
        scope_key: scope_key.into(),
        identity_json: format!(r#"{{"service.name":"{scope_key}"}}"#),
    }
}

#[test]
fn a_version_6_store_keeps_its_bindings_with_scopes_by_id_and_ids_as_bytes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut conn = open_connection(dir.path()).unwrap();
        for sql in &MIGRATIONS[..6] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 6).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(
            r#"INSERT INTO scopes VALUES ('svc=a', '{"service.name":"a"}'), ('svc=b', '{"service.name":"b"}');
               INSERT INTO bindings VALUES
                 ('agent_factory', 'svc=a', 'f-1', 'alice', 'acme', 10, 20, 15, 20,
                  '0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331', 'span', 'svc=b'),
                 ('agent_factory', 'svc=b', 'f-2', 'bob', NULL, 1, 2, 1, 2, NULL, 'not hex', 'log',
                  'svc=gone'),
                 ('agent_factory', 'svc=gone', 'f-3', 'carol', NULL, 1, 2, 1, 2, NULL, NULL, 'span',
                  'svc=a');"#,
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let restored = store.restore().unwrap();
    let mut scopes: Vec<_> = restored
        .scopes
        .iter()
        .map(|s| s.scope_key.as_str())
        .collect();
    scopes.sort();
    assert_eq!(scopes, ["svc=a", "svc=b"]);
    let mut bindings = restored.bindings;
    bindings.sort_by(|a, b| a.instance.cmp(&b.instance));
    assert_eq!(
        bindings.len(),
        2,
        "the binding of a scope never stored is not carried over"
    );
    assert_eq!(bindings[0], binding_row("svc=a", "svc=b", "f-1"));
    let second = &bindings[1];
    assert_eq!(
        (second.instance.as_str(), second.user.as_str()),
        ("f-2", "bob")
    );
    assert_eq!(
        second.evidence_scope_key, "svc=b",
        "an unknown evidence scope becomes its own"
    );
    assert_eq!((second.trace_id, second.span_id), (None, None));
    assert_eq!(second.signal, Signal::Log);
    let (trace_type, key_columns): (String, i64) = store
        .conn
        .query_row(
            "SELECT typeof(trace_id), (SELECT count(*) FROM pragma_table_info('bindings')
                WHERE name IN ('scope_key', 'evidence_scope_key')) FROM bindings WHERE instance = 'f-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((trace_type.as_str(), key_columns), ("blob", 0));
}

#[test]
fn bindings_round_trip_through_scope_ids_and_a_refused_commit_leaves_no_stale_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    // Refused after the new scope was written in the transaction: the scope goes with it.
    store
        .conn
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON bindings
             WHEN NEW.instance = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
    let refused = Effects {
        scopes: vec![scope_row("svc=a")],
        bindings: vec![binding_row("svc=a", "svc=a", "refused")],
        ..Effects::default()
    };
    assert!(store.commit(&refused, &[], 1).is_err());
    store.conn.execute_batch("DROP TRIGGER refuse").unwrap();
    // Another scope takes the id `svc=a` had in the refused transaction: a stale id would now
    // point `svc=a`'s binding at `svc=b`.
    let fx = Effects {
        scopes: vec![scope_row("svc=b")],
        bindings: vec![
            binding_row("svc=a", "svc=b", "f-1"),
            binding_row("svc=b", "svc=b", "f-2"),
        ],
        ..Effects::default()
    };
    store.commit(&fx, &[], 2).unwrap();
    // The engine sends the refused scope again; its identity replaces the placeholder.
    let again = Effects {
        scopes: vec![scope_row("svc=a")],
        ..Effects::default()
    };
    store.commit(&again, &[], 3).unwrap();
    // Evicting names the scope by key too.
    let evict = Effects {
        evicted: vec![EvictedInstance {
            watch: "agent_factory".into(),
            scope_key: "svc=b".into(),
            instance: "f-2".into(),
        }],
        ..Effects::default()
    };
    store.commit(&evict, &[], 3).unwrap();
    drop(store);
    let restored = Store::open(dir.path()).unwrap().restore().unwrap();
    assert_eq!(
        restored.bindings,
        vec![binding_row("svc=a", "svc=b", "f-1")]
    );
    let identity = |key: &str| {
        restored
            .scopes
            .iter()
            .find(|s| s.scope_key == key)
            .map(|s| s.identity["service.name"].clone())
    };
    assert_eq!(identity("svc=a").as_deref(), Some("svc=a"));
    assert_eq!(identity("svc=b").as_deref(), Some("svc=b"));
}

#[test]
fn a_binding_whose_scope_row_comes_later_is_kept_and_the_scope_gets_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let early = Effects {
        bindings: vec![binding_row("svc=a", "svc=a", "f-1")],
        ..Effects::default()
    };
    store.commit(&early, &[], 1).unwrap();
    let late = Effects {
        scopes: vec![scope_row("svc=a")],
        ..Effects::default()
    };
    store.commit(&late, &[], 2).unwrap();
    drop(store);
    let restored = Store::open(dir.path()).unwrap().restore().unwrap();
    assert_eq!(
        restored.bindings,
        vec![binding_row("svc=a", "svc=a", "f-1")]
    );
    assert_eq!(restored.scopes.len(), 1);
    assert_eq!(restored.scopes[0].identity["service.name"], "svc=a");
}

#[test]
fn bindings_in_full_groups_and_a_remainder_all_round_trip_in_order_of_their_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    // Two full groups of 32 and a remainder of 5; the last row rewrites the first (the later
    // write wins, as it would row by row).
    let mut bindings: Vec<_> = (0..68)
        .map(|i| binding_row("svc=a", "svc=a", &format!("f-{i:03}")))
        .collect();
    let mut rewrite = binding_row("svc=a", "svc=a", "f-000");
    rewrite.last_ns = 99;
    bindings.push(rewrite.clone());
    let fx = Effects {
        scopes: vec![scope_row("svc=a")],
        bindings,
        ..Effects::default()
    };
    store.commit(&fx, &[], 1).unwrap();
    drop(store);
    let mut restored = Store::open(dir.path()).unwrap().restore().unwrap().bindings;
    restored.sort_by(|a, b| a.instance.cmp(&b.instance));
    assert_eq!(restored.len(), 68);
    assert_eq!(restored[0], rewrite);
    for (i, b) in restored.iter().enumerate().skip(1) {
        assert_eq!(*b, binding_row("svc=a", "svc=a", &format!("f-{i:03}")));
    }
}
