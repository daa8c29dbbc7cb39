//! Findings retention: a finding quiet past `storage.findings_retention` leaves the engine at a
//! prune tick, with the instances it is about; a recent one stays; a failed commit undoes it.

use std::time::Duration;

use super::*;

/// An engine forgetting findings after an hour, with two findings: `old` (detected at 1000 s,
/// last seen at 4 s) and `new` (detected and last seen at 4000 s), their effects in `fx`.
/// Returns their ids.
pub(crate) fn two_findings(
    engine_of: impl FnOnce(&Config) -> Engine,
    fx: &mut Effects,
) -> (Engine, String, String) {
    let mut cfg = config("exclusive", "process", "user");
    cfg.findings_retention = Duration::from_secs(3600);
    let mut engine = engine_of(&cfg);
    for (user, id, s, wall) in [
        ("alice", "old", 1, 1000),
        ("bob", "old", 3, 1000),
        ("carol", "new", 4000, 4000),
        ("dave", "new", 4002, 4000),
    ] {
        ingest_one(
            &mut engine,
            obs(Some(user), None, id, s, s + 1, "p"),
            wall,
            fx,
        );
    }
    let id_of = |user: &str| {
        (engine.findings.values())
            .find(|r| r.finding.users.iter().any(|u| u == user))
            .map(|r| r.finding.id.clone())
            .unwrap()
    };
    let (old, new) = (id_of("alice"), id_of("carol"));
    (engine, old, new)
}

#[test]
fn a_finding_past_its_retention_leaves_at_the_prune_tick_and_a_recent_one_stays() {
    let (mut engine, old, new) = two_findings(new_engine, &mut Effects::default());
    assert_eq!(engine.findings.len(), 2);
    let mut fx = Effects::default();
    engine.tick(at(1000 + 3599), &mut fx);
    assert!(
        fx.expired_findings.is_empty(),
        "the old one was detected within the hour"
    );
    let mut fx = Effects::default();
    engine.tick(at(1000 + 3600 + 10), &mut fx);
    assert_eq!(fx.expired_findings, vec![old.clone()]);
    let left: Vec<&str> = engine.findings().iter().map(|f| f.id.as_str()).collect();
    assert_eq!(left, vec![new.as_str()]);
    assert_eq!(engine.tracked_instances(), 1, "its instance went with it");
    assert!(fx.evicted.iter().any(|e| e.instance == "old"));
    let mut fx = Effects::default();
    engine.tick(at(1000 + 3600 + 30), &mut fx);
    assert!(fx.expired_findings.is_empty(), "deleted once");
}

#[test]
fn an_expiry_whose_commit_failed_is_undone() {
    let (mut engine, _, _) = two_findings(
        |cfg| {
            let mut e = new_engine(cfg);
            e.keep_undo_log();
            e
        },
        &mut Effects::default(),
    );
    engine.committed(engine.undo_mark());
    let mark = engine.undo_mark();
    let mut fx = Effects::default();
    engine.tick(at(1000 + 3600 + 10), &mut fx);
    assert_eq!(engine.findings.len(), 1);
    engine.undo_since(mark, &[]);
    assert_eq!(engine.findings.len(), 2);
    assert_eq!(engine.tracked_instances(), 2);
}
