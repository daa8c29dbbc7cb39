//! Table-driven tests of the engine: policies × scopes × boundaries, trace-level attribution in
//! both arrival orders, out-of-order timestamps, misdelivery and bounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::correlate::FindingKind;
use crate::normalize::{Delivery, WatchedId};

pub(super) const SEC: u64 = 1_000_000_000;

pub(crate) fn config(policy: &str, scope: &str, boundary: &str) -> Config {
    Config::from_toml(&format!(
        "[attribution]\nwait = \"2s\"\n[[watch]]\nname = \"w\"\nattribute = \"a\"\npolicy = \"{policy}\"\nscope = \"{scope}\"\nboundary = \"{boundary}\"\n"
    ))
    .unwrap()
}

pub(super) fn resource(instance: &str) -> Arc<Resource> {
    let mut identity = BTreeMap::new();
    identity.insert("service.name".to_owned(), "api".to_owned());
    identity.insert("service.instance.id".to_owned(), instance.to_owned());
    Arc::new(Resource::from_identity(identity, None, None))
}

/// One use of instance `id` by `user` (tenant optional) over [s, e] seconds, from process `proc`.
pub(crate) fn obs(
    user: Option<&str>,
    tenant: Option<&str>,
    id: &str,
    s: u64,
    e: u64,
    proc: &str,
) -> Observation {
    Observation {
        signal: Signal::Span,
        start_ns: s * SEC,
        end_ns: e * SEC,
        trace_id: None,
        span_id: None,
        resource: resource(proc),
        user: user.map(Into::into),
        tenant: tenant.map(Into::into),
        watched: vec![WatchedId {
            watch: 0,
            id: id.into(),
            origin: None,
        }],
        delivery: None,
    }
}

pub(crate) fn at(wall_s: u64) -> Received {
    Received {
        wall_ns: wall_s * SEC,
        at: Instant::now(),
    }
}

/// The scopes a batch interned, as the store would hand them back.
pub(super) fn restored_scopes(fx: &Effects) -> Vec<RestoredScope> {
    fx.scopes
        .iter()
        .map(|s| RestoredScope {
            scope_key: s.scope_key.clone(),
            identity: serde_json::from_str(&s.identity_json).unwrap(),
        })
        .collect()
}

/// An engine on `cfg` with metrics of its own.
pub(super) fn new_engine(cfg: &Config) -> Engine {
    Engine::new(cfg, Arc::new(Metrics::new()))
}

/// Ingest one observation at `wall_s` seconds.
pub(super) fn ingest_one(engine: &mut Engine, o: Observation, wall_s: u64, fx: &mut Effects) {
    engine.ingest(vec![o], at(wall_s), fx);
}

pub(super) fn run(cfg: &Config, observations: Vec<Observation>) -> (Engine, Vec<FindingRecord>) {
    let mut engine = Engine::new(cfg, Arc::new(Metrics::new()));
    let mut fx = Effects::default();
    for o in observations {
        engine.ingest(vec![o], at(1000), &mut fx);
    }
    engine.settle_all(at(1000), &mut fx);
    let findings = engine.findings.values().cloned().collect();
    (engine, findings)
}

/// One use of the table below: (user, instance, start s, end s, process).
type TableUse = (&'static str, &'static str, u64, u64, &'static str);

/// (what, policy, scope, uses in arrival order, users of the one finding; none: no finding).
type PolicyCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static [TableUse],
    &'static [&'static str],
);

#[rustfmt::skip]
const POLICY_CASES: &[PolicyCase] = &[
    ("exclusive: one user many times is fine", "exclusive", "process",
        &[("alice", "f1", 1, 2, "p1"), ("alice", "f1", 3, 4, "p1")], &[]),
    ("exclusive: a second user is a finding", "exclusive", "process",
        &[("alice", "f1", 1, 2, "p1"), ("bob", "f1", 10, 11, "p1")], &["alice", "bob"]),
    ("process scope: same id in two processes is two instances", "exclusive", "process",
        &[("alice", "f1", 1, 2, "p1"), ("bob", "f1", 1, 2, "p2")], &[]),
    ("global scope: same id in two processes is one instance", "exclusive", "global",
        &[("alice", "s1", 1, 2, "p1"), ("bob", "s1", 5, 6, "p2")], &["alice", "bob"]),
    ("concurrent: users taking turns is fine", "concurrent", "process",
        &[("alice", "c", 1, 2, "p1"), ("bob", "c", 3, 4, "p1"), ("alice", "c", 5, 6, "p1")], &[]),
    ("concurrent: overlapping users is a finding", "concurrent", "process",
        &[("alice", "c", 1, 5, "p1"), ("bob", "c", 4, 6, "p1")], &["alice", "bob"]),
    ("concurrent: overlap found whatever the arrival order", "concurrent", "process",
        &[("bob", "c", 4, 6, "p1"), ("alice", "c", 1, 5, "p1")], &["alice", "bob"]),
    ("allow: never a finding", "allow", "global",
        &[("alice", "x", 1, 5, "p1"), ("bob", "x", 1, 5, "p1")], &[]),
    ("exclusive: later users are appended to the one finding", "exclusive", "process",
        &[("alice", "f", 1, 2, "p1"), ("bob", "f", 3, 4, "p1"), ("carol", "f", 5, 6, "p1"),
          ("bob", "f", 7, 8, "p1")], &["alice", "bob", "carol"]),
    ("users are ordered by event time, not arrival", "exclusive", "process",
        &[("bob", "f", 10, 11, "p1"), ("alice", "f", 1, 2, "p1")], &["alice", "bob"]),
];

#[test]
fn policies_and_scopes() {
    for &(name, policy, scope, uses, users) in POLICY_CASES {
        let uses = uses
            .iter()
            .map(|&(u, id, s, e, p)| obs(Some(u), None, id, s, e, p))
            .collect();
        let (_, findings) = run(&config(policy, scope, "user"), uses);
        assert_eq!(findings.len(), usize::from(!users.is_empty()), "{name}");
        if let Some(f) = findings.first() {
            assert_eq!(f.finding.users, users, "{name}");
            assert_eq!(f.finding.user_count as usize, users.len(), "{name}");
            assert_eq!(f.finding.kind, FindingKind::SharedInstance);
            assert!(f.finding.evidence.len() >= 2, "{name}");
        }
    }
}

pub(super) fn traced(mut o: Observation, trace: u8) -> Observation {
    o.trace_id = Some(TraceId([trace; 16]));
    o
}

/// A root span naming the user and touching no watched instance.
pub(super) fn root(user: &str, trace: u8) -> Observation {
    let mut o = traced(obs(Some(user), None, "unused", 1, 2, "p1"), trace);
    o.watched.clear();
    o
}

#[test]
fn trace_attribution_user_before_instance_span() {
    let cfg = config("exclusive", "process", "user");
    let (_, findings) = run(
        &cfg,
        vec![
            root("alice", 1),
            traced(obs(None, None, "f", 1, 2, "p1"), 1),
            root("bob", 2),
            traced(obs(None, None, "f", 3, 4, "p1"), 2),
        ],
    );
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].finding.users, ["alice", "bob"]);
}

#[test]
fn trace_attribution_user_after_instance_span_in_a_later_batch() {
    let cfg = config("exclusive", "process", "user");
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&cfg, metrics);
    let mut fx = Effects::default();
    engine.ingest(
        vec![traced(obs(None, None, "f", 1, 2, "p1"), 1)],
        at(100),
        &mut fx,
    );
    engine.ingest(
        vec![traced(obs(None, None, "f", 3, 4, "p1"), 2)],
        at(100),
        &mut fx,
    );
    assert_eq!(engine.pending(), 2, "both wait for their trace's user");
    engine.ingest(vec![root("bob", 2)], at(101), &mut fx);
    engine.ingest(vec![root("alice", 1)], at(101), &mut fx);
    assert_eq!(engine.pending(), 0);
    let f = engine.findings();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].users, ["alice", "bob"]);
}

#[test]
fn no_user_after_the_wait_is_unattributed_never_a_finding() {
    let cfg = config("exclusive", "process", "user");
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&cfg, metrics.clone());
    let mut fx = Effects::default();
    engine.ingest(
        vec![
            traced(obs(None, None, "f", 1, 2, "p1"), 1),
            traced(obs(None, None, "f", 1, 2, "p1"), 2),
        ],
        at(100),
        &mut fx,
    );
    engine.tick(at(101), &mut fx);
    assert_eq!(engine.pending(), 2, "still within the wait");
    engine.tick(at(103), &mut fx);
    assert_eq!(engine.pending(), 0);
    assert!(engine.findings().is_empty());
    let unattributed = metrics
        .unattributed
        .get_or_create(&WatchLabels { watch: "w".into() })
        .get();
    assert_eq!(unattributed, 2);
}

#[test]
fn resource_user_is_the_last_resort() {
    let cfg = config("exclusive", "global", "user");
    let mut a = obs(None, None, "s", 1, 2, "p1");
    a.resource = Arc::new(Resource::from_identity(
        BTreeMap::new(),
        Some("alice".into()),
        None,
    ));
    let mut b = obs(None, None, "s", 3, 4, "p2");
    b.resource = Arc::new(Resource::from_identity(
        BTreeMap::new(),
        Some("bob".into()),
        None,
    ));
    let (_, findings) = run(&cfg, vec![a, b]);
    assert_eq!(findings.len(), 1);
}

#[test]
fn span_user_beats_trace_user() {
    let cfg = config("exclusive", "process", "user");
    let (_, findings) = run(
        &cfg,
        vec![
            root("alice", 1),
            traced(obs(Some("alice"), None, "f", 1, 2, "p1"), 1),
            traced(obs(Some("bob"), None, "f", 1, 2, "p1"), 1),
        ],
    );
    assert_eq!(findings[0].finding.users, ["alice", "bob"]);
}

pub(super) fn delivery(user: &str, conn_user: &str, conn: &str) -> Observation {
    let mut o = obs(Some(user), None, "unused", 5, 5, "p1");
    o.signal = Signal::Event;
    o.watched.clear();
    o.delivery = Some(Box::new(Delivery {
        event: Some("agent_thinking".into()),
        connection_id: Some(conn.into()),
        connection_user: Some(conn_user.into()),
        connection_tenant: None,
        run_id: Some("run-1".into()),
    }));
    o
}

#[test]
fn misdelivered_events_make_one_finding_per_connection() {
    let cfg = config("exclusive", "process", "user");
    let (_, findings) = run(
        &cfg,
        vec![
            delivery("alice", "alice", "c1"),
            delivery("alice", "bob", "c2"),
            delivery("alice", "bob", "c2"),
            delivery("carol", "bob", "c2"),
        ],
    );
    assert_eq!(findings.len(), 1);
    let f = &findings[0].finding;
    assert_eq!(f.kind, FindingKind::MisdeliveredEvent);
    assert_eq!(f.users, ["alice", "bob", "carol"]);
    assert_eq!(f.instance, "c2");
    let e = &f.evidence[0];
    assert_eq!(
        (
            e.connection_id.as_deref(),
            e.event.as_deref(),
            e.run_id.as_deref()
        ),
        (Some("c2"), Some("agent_thinking"), Some("run-1"))
    );
}

#[test]
fn global_cap_evicts_least_recently_seen() {
    let mut cfg = config("exclusive", "process", "user");
    cfg.limits.max_tracked_instances = 100;
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(&cfg, metrics.clone());
    let mut fx = Effects::default();
    for i in 0..1000u64 {
        engine.ingest(
            vec![obs(Some("u"), None, &format!("id{i}"), 1, 2, "p")],
            at(i),
            &mut fx,
        );
        assert!(engine.tracked_instances() <= 100);
    }
    // The most recent instance survived; the first did not.
    let keys: Vec<String> = engine.instances.keys().map(|k| k.id.to_string()).collect();
    assert!(keys.contains(&"id999".to_owned()));
    assert!(!keys.contains(&"id0".to_owned()));
    let gauge = metrics
        .tracked_instances
        .get_or_create(&WatchLabels { watch: "w".into() })
        .get();
    assert_eq!(gauge as usize, engine.tracked_instances());
}

#[test]
fn retention_forgets_quiet_instances() {
    let mut cfg = config("exclusive", "process", "user");
    cfg.watches[0].retention = Duration::from_secs(60);
    let mut engine = new_engine(&cfg);
    let mut fx = Effects::default();
    ingest_one(
        &mut engine,
        obs(Some("alice"), None, "f", 1, 2, "p"),
        1000,
        &mut fx,
    );
    engine.tick(at(1030), &mut fx);
    assert_eq!(engine.tracked_instances(), 1);
    engine.tick(at(1100), &mut fx);
    assert_eq!(engine.tracked_instances(), 0);
    ingest_one(
        &mut engine,
        obs(Some("bob"), None, "f", 200, 201, "p"),
        1101,
        &mut fx,
    );
    assert!(engine.findings().is_empty());
}

#[test]
fn new_bindings_are_effects_and_known_ones_are_free() {
    let cfg = config("exclusive", "process", "user");
    let mut engine = new_engine(&cfg);
    let mut fx = Effects::default();
    ingest_one(
        &mut engine,
        obs(Some("alice"), None, "f", 1, 2, "p"),
        10,
        &mut fx,
    );
    assert_eq!(fx.bindings.len(), 1);
    let mut fx2 = Effects::default();
    ingest_one(
        &mut engine,
        obs(Some("alice"), None, "f", 3, 4, "p"),
        10,
        &mut fx2,
    );
    assert!(
        fx2.is_empty(),
        "a binding already known costs no write: {fx2:?}"
    );
}

#[test]
fn restored_state_finds_a_user_after_restart_and_never_refinds() {
    let cfg = config("exclusive", "process", "user");
    let mut first = new_engine(&cfg);
    let mut fx = Effects::default();
    ingest_one(
        &mut first,
        obs(Some("alice"), None, "f", 1, 2, "p"),
        10,
        &mut fx,
    );
    let restored = Restored {
        scopes: restored_scopes(&fx),
        bindings: fx.bindings.clone(),
        findings: Vec::new(),
        pending: Vec::new(),
        evidence: Vec::new(),
    };
    let mut second = new_engine(&cfg);
    second.restore(restored);
    let mut fx2 = Effects::default();
    ingest_one(
        &mut second,
        obs(Some("bob"), None, "f", 3, 4, "p"),
        20,
        &mut fx2,
    );
    assert_eq!(second.findings().len(), 1);
    assert_eq!(second.findings()[0].users, ["alice", "bob"]);

    let mut bindings = fx.bindings.clone();
    bindings.extend(fx2.bindings.clone());
    let mut third = new_engine(&cfg);
    third.restore(Restored {
        scopes: restored_scopes(&fx),
        bindings,
        findings: fx2.findings.clone(),
        pending: Vec::new(),
        evidence: Vec::new(),
    });
    let mut fx3 = Effects::default();
    ingest_one(
        &mut third,
        obs(Some("alice"), None, "f", 5, 6, "p"),
        30,
        &mut fx3,
    );
    assert!(
        fx3.news.is_empty(),
        "an instance found before the restart is not found again"
    );
    assert_eq!(third.findings().len(), 1);
}

#[test]
fn hmac_mode_binds_pseudonyms_only() {
    let cfg = config("exclusive", "process", "user");
    let p = Pseudonymizer::new(b"key");
    let mut engine = new_engine(&cfg).with_pseudonyms(p.clone());
    let mut fx = Effects::default();
    engine.ingest(
        vec![
            obs(Some("alice"), Some("acme"), "f", 1, 2, "p"),
            obs(Some("bob"), None, "f", 3, 4, "p"),
        ],
        at(10),
        &mut fx,
    );
    engine.ingest(vec![delivery("carol", "dave", "c1")], at(10), &mut fx);
    let text = format!("{:?}{:?}", fx.bindings, fx.findings);
    for raw in ["alice", "bob", "carol", "dave", "acme"] {
        assert!(
            !text.contains(raw),
            "raw id `{raw}` reached the store: {text}"
        );
    }
    let shared = engine
        .findings()
        .into_iter()
        .find(|f| f.kind == FindingKind::SharedInstance)
        .unwrap()
        .clone();
    assert_eq!(shared.users, [p.pseudonym("alice"), p.pseudonym("bob")]);
    let misdelivered = engine
        .findings()
        .into_iter()
        .find(|f| f.kind == FindingKind::MisdeliveredEvent)
        .unwrap()
        .clone();
    assert_eq!(
        misdelivered.users,
        [p.pseudonym("carol"), p.pseudonym("dave")]
    );
}

mod allow;
pub(crate) mod expiry;
pub(crate) mod growth;
pub(crate) mod rejudge;
mod reload;
pub(crate) mod scale;
mod table;
pub(crate) mod undo;
