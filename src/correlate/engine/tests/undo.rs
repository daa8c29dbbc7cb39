//! The per-batch undo log: batches whose commit failed are undone newest first, back to the
//! state before the oldest of them, and a batch judged on top of an uncommitted one goes with it.

use std::sync::Arc;

use super::*;

/// What judgement depends on: instances with their users and finding, findings (all but
/// `last_seen`, which only moves later and is not undone), connections, waiting observations.
fn state(e: &Engine) -> String {
    let mut instances: Vec<String> = e
        .instances
        .iter()
        .map(|(slot, k)| {
            let s = e.instances.state(slot);
            let mut users: Vec<&str> = s.uses.iter().map(|u| &*u.user).collect();
            users.sort_unstable();
            format!("{}/{}/{} {users:?} {:?}", k.watch, k.scope, k.id, s.finding)
        })
        .collect();
    instances.sort();
    let mut findings: Vec<String> = e
        .findings
        .values()
        .map(|r| {
            let f = &r.finding;
            format!(
                "{} {:?} {} {:?} {} {} {:?}",
                f.id, f.users, f.user_count, f.tenants, f.cross_tenant, f.severity, f.evidence
            )
        })
        .collect();
    findings.sort();
    let mut deliveries: Vec<String> = e.deliveries.keys().map(|k| format!("{k:?}")).collect();
    deliveries.sort();
    format!(
        "{instances:#?}\n{findings:#?}\n{deliveries:?}\npending {} overflow {}",
        e.pending.len(),
        e.restored_overflow.len()
    )
}

fn engine(cfg: &Config) -> Engine {
    let mut e = Engine::new(cfg, Arc::new(Metrics::new()));
    e.keep_undo_log();
    e
}

fn batch(e: &mut Engine, observations: Vec<Observation>, wall_s: u64) -> Effects {
    let mut fx = Effects::default();
    e.ingest(observations, at(wall_s), &mut fx);
    fx
}

#[test]
fn a_batch_judged_on_top_of_an_uncommitted_one_is_undone_with_it() {
    let cfg = config("exclusive", "process", "user");
    let mut e = engine(&cfg);
    batch(&mut e, vec![obs(Some("alice"), None, "f", 1, 2, "p1")], 10);
    e.committed(e.undo_mark());
    let before = state(&e);

    let mark = e.undo_mark();
    // A: bob makes the finding, carol a new instance in a new process.
    let a = vec![
        obs(Some("bob"), None, "f", 3, 4, "p1"),
        obs(Some("carol"), None, "g", 3, 4, "p2"),
    ];
    batch(&mut e, a.clone(), 11);
    let after_a = state(&e);
    assert_eq!(e.findings().len(), 1);
    // B, judged on top of A: dave grows A's finding; carol and alice are known.
    let b_mark = e.undo_mark();
    let b = vec![
        obs(Some("dave"), None, "f", 5, 6, "p1"),
        obs(Some("carol"), None, "g", 5, 6, "p2"),
        obs(Some("alice"), None, "f", 5, 6, "p1"),
    ];
    batch(&mut e, b.clone(), 12);
    assert_eq!(e.findings()[0].users, ["alice", "bob", "dave"]);

    // Undoing only B leaves A; undoing both goes back to before A.
    e.undo_since(b_mark, &[]);
    assert_eq!(state(&e), after_a);
    batch(&mut e, b.clone(), 12);
    e.undo_since(mark, &[]);
    assert_eq!(state(&e), before);
    assert_eq!(e.tracked_instances(), 1);

    // The retries are judged again: the same finding as if they had never failed.
    batch(&mut e, a, 13);
    let fx = batch(&mut e, b, 14);
    assert_eq!(e.findings().len(), 1);
    assert_eq!(e.findings()[0].users, ["alice", "bob", "dave"]);
    assert_eq!(e.findings()[0].user_count, 3);
    assert_eq!(fx.news.len(), 1, "dave is news again: {:?}", fx.news);
}

#[test]
fn escalation_and_connection_findings_are_undone() {
    let cfg = config("exclusive", "global", "user");
    let mut e = engine(&cfg);
    batch(
        &mut e,
        vec![
            obs(Some("a1"), Some("acme"), "f", 1, 2, "p"),
            obs(Some("a2"), Some("acme"), "f", 3, 4, "p"),
        ],
        10,
    );
    e.committed(e.undo_mark());
    let before = state(&e);
    assert_eq!(e.findings()[0].severity, "critical");
    let mark = e.undo_mark();
    batch(
        &mut e,
        vec![
            obs(Some("g1"), Some("globex"), "f", 5, 6, "p"),
            delivery("alice", "bob", "conn-1"),
        ],
        11,
    );
    assert_eq!(e.findings().len(), 2);
    e.undo_since(mark, &[]);
    assert_eq!(state(&e), before);
}

#[test]
fn evicted_instances_come_back_when_their_batch_is_undone() {
    let mut cfg = config("exclusive", "process", "user");
    cfg.limits.max_tracked_instances = 10;
    let mut e = engine(&cfg);
    let first: Vec<Observation> = (0..10)
        .map(|i| obs(Some("u"), None, &format!("i{i}"), 1, 2, "p"))
        .collect();
    batch(&mut e, first, 10);
    e.committed(e.undo_mark());
    let before = state(&e);
    let mark = e.undo_mark();
    let fx = batch(&mut e, vec![obs(Some("u"), None, "new", 3, 4, "p")], 20);
    assert!(!fx.evicted.is_empty(), "the cap evicted nothing");
    e.undo_since(mark, &[]);
    assert_eq!(state(&e), before);
    assert_eq!(e.tracked_instances(), 10);
}

#[test]
fn waiting_observations_are_unparked_and_released_ones_wait_again() {
    let cfg = config("exclusive", "process", "user");
    let mut e = engine(&cfg);
    batch(&mut e, vec![traced(obs(None, None, "f", 1, 2, "p"), 1)], 10);
    e.committed(e.undo_mark());
    let before = state(&e);
    assert_eq!(e.pending(), 1);

    let mark = e.undo_mark();
    // A parks another; B releases both with the trace's user and binds it.
    batch(&mut e, vec![traced(obs(None, None, "g", 1, 2, "p"), 2)], 11);
    batch(&mut e, vec![root("alice", 1)], 12);
    assert_eq!(e.pending(), 1);
    assert_eq!(e.tracked_instances(), 1);
    e.undo_since(mark, &[]);
    // The released one is settled again at the next tick; the parked one is forgotten.
    assert_eq!(e.pending(), 0);
    assert_eq!(e.restored_overflow.len(), 1);
    assert_eq!(e.tracked_instances(), 0);
    assert_ne!(
        state(&e),
        before,
        "waits at the next tick, not on its trace"
    );
    let mut fx = Effects::default();
    e.tick(at(13), &mut fx);
    assert_eq!(fx.unparked.len(), 1);
    assert_eq!(
        e.tracked_instances(),
        1,
        "settled with the trace's user still known"
    );
}

#[test]
fn a_scope_whose_row_was_undone_is_written_with_the_next_commit() {
    let cfg = config("exclusive", "process", "user");
    let mut e = engine(&cfg);
    let mark = e.undo_mark();
    let fx = batch(&mut e, vec![obs(Some("u"), None, "f", 1, 2, "p9")], 10);
    assert_eq!(fx.scopes.len(), 1);
    e.undo_since(mark, &[]);
    let mut fx = Effects::default();
    e.ingest(vec![obs(Some("u"), None, "f", 1, 2, "p9")], at(11), &mut fx);
    e.tick(at(11), &mut fx);
    assert_eq!(
        fx.scopes.len(),
        1,
        "the retry's binding needs its scope row"
    );
    assert_eq!(fx.bindings.len(), 1);
}

#[test]
fn without_the_log_nothing_is_kept() {
    let cfg = config("exclusive", "process", "user");
    let mut e = Engine::new(&cfg, Arc::new(Metrics::new()));
    batch(&mut e, vec![obs(Some("u"), None, "f", 1, 2, "p")], 10);
    assert_eq!(e.undo_mark(), UndoMark::default());
}
