//! How findings grow: tenants and boundaries, escalation to `critical` across tenants (locally
//! and through cluster verdicts), `last_seen` written back, and the instance's origin in every
//! evidence entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;

#[test]
fn tenant_boundary_counts_tenants_not_users() {
    let cases: Vec<(&str, &str, Vec<Observation>, usize)> = vec![
        (
            "two users of one tenant",
            "exclusive",
            vec![
                obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
                obs(Some("a2"), Some("acme"), "e", 3, 4, "p"),
            ],
            0,
        ),
        (
            "two tenants",
            "exclusive",
            vec![
                obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
                obs(Some("g1"), Some("globex"), "e", 3, 4, "p"),
            ],
            1,
        ),
        (
            "two tenants taking turns",
            "concurrent",
            vec![
                obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
                obs(Some("g1"), Some("globex"), "e", 3, 4, "p"),
            ],
            0,
        ),
        (
            "two tenants overlapping",
            "concurrent",
            vec![
                obs(Some("a1"), Some("acme"), "e", 1, 5, "p"),
                obs(Some("g1"), Some("globex"), "e", 3, 4, "p"),
            ],
            1,
        ),
        (
            "two tenants, allowed",
            "allow",
            vec![
                obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
                obs(Some("g1"), Some("globex"), "e", 3, 4, "p"),
            ],
            0,
        ),
    ];
    for (name, policy, uses, expected) in cases {
        let (_, findings) = run(&config(policy, "global", "tenant"), uses);
        assert_eq!(findings.len(), expected, "{name}");
        if let Some(f) = findings.first() {
            assert_eq!(f.finding.tenants, ["acme", "globex"], "{name}");
            assert!(f.finding.cross_tenant);
            assert_eq!(f.finding.boundary, "tenant");
        }
    }
}

/// A `config` whose watch is only a `warning`, so that an escalation to `critical` shows.
fn warning_config(policy: &str, scope: &str) -> Config {
    Config::from_toml(&format!(
        "[attribution]\nwait = \"2s\"\n[[watch]]\nname = \"w\"\nattribute = \"a\"\npolicy = \"{policy}\"\nscope = \"{scope}\"\nseverity = \"warning\"\n"
    ))
    .unwrap()
}

#[test]
fn user_boundary_finding_records_whether_it_crossed_tenants() {
    let cfg = warning_config("exclusive", "global");
    let (_, same) = run(
        &cfg,
        vec![
            obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
            obs(Some("a2"), Some("acme"), "e", 3, 4, "p"),
        ],
    );
    assert!(!same[0].finding.cross_tenant);
    assert_eq!(same[0].finding.severity, "warning");
    let (_, cross) = run(
        &cfg,
        vec![
            obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
            obs(Some("g1"), Some("globex"), "e", 3, 4, "p"),
        ],
    );
    assert!(cross[0].finding.cross_tenant);
    assert_eq!(cross[0].finding.severity, "critical");
}

#[test]
fn a_finding_that_grows_across_tenants_becomes_critical() {
    let cfg = warning_config("exclusive", "process");
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut fx = Effects::default();
    for o in [
        obs(Some("a1"), Some("acme"), "e", 1, 2, "p"),
        obs(Some("a2"), Some("acme"), "e", 3, 4, "p"),
    ] {
        engine.ingest(vec![o], at(1000), &mut fx);
    }
    assert_eq!(engine.findings()[0].severity, "warning");
    let mut grown = Effects::default();
    engine.ingest(
        vec![obs(Some("g1"), Some("globex"), "e", 5, 6, "p")],
        at(1001),
        &mut grown,
    );
    let f = engine.findings()[0].clone();
    assert!(f.cross_tenant);
    assert_eq!(f.severity, "critical", "cross-tenant is always critical");
    assert_eq!(
        grown.findings[0].finding.severity, "critical",
        "and persisted"
    );
    assert!(grown.news.iter().any(|n| n.id == f.id && !n.new));
}

pub(crate) fn remote_use(user: &str, tenant: &str, first_s: u64, last_s: u64) -> RemoteUse {
    let evidence = crate::correlate::finding::Evidence {
        user: user.into(),
        tenant: Some(tenant.into()),
        time: crate::correlate::finding::rfc3339(first_s * SEC),
        trace_id: None,
        span_id: None,
        source: "span".into(),
        service: None,
        event: None,
        connection_id: None,
        connection_user: None,
        run_id: None,
        origin: None,
    };
    RemoteUse {
        user: user.into(),
        tenant: Some(tenant.into()),
        first_ns: first_s * SEC,
        last_ns: last_s * SEC,
        evidence,
    }
}

/// A verdict from Redis about instance `e` of watch `w`, naming `uses`.
pub(crate) fn verdict(uses: Vec<RemoteUse>) -> RemoteConflict {
    let u = &uses[uses.len() - 1];
    RemoteConflict {
        check: ClusterCheck {
            watch: "w".into(),
            policy: "exclusive".into(),
            boundary: "user".into(),
            retention_ms: 1000,
            instance: "e".into(),
            user: u.user.clone(),
            tenant: u.tenant.clone(),
            start_ns: u.first_ns,
            end_ns: u.last_ns,
            evidence: u.evidence.clone(),
            scope: BTreeMap::new(),
            service: "api".into(),
            trace_id: None,
        },
        uses,
    }
}

#[test]
fn a_cluster_finding_that_grows_across_tenants_becomes_critical() {
    let cfg = warning_config("exclusive", "global");
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new())).with_cluster();
    let mut fx = Effects::default();
    let two = vec![
        remote_use("a1", "acme", 1, 2),
        remote_use("a2", "acme", 3, 4),
    ];
    engine.remote_conflict(verdict(two.clone()), at(1000), at(1000), &mut fx);
    assert_eq!(engine.findings()[0].severity, "warning");
    let mut three = two;
    three.push(remote_use("g1", "globex", 5, 6));
    let mut grown = Effects::default();
    engine.remote_conflict(verdict(three), at(1001), at(1001), &mut grown);
    let f = engine.findings()[0].clone();
    assert_eq!(f.user_count, 3);
    assert_eq!(f.severity, "critical", "cross-tenant is always critical");
    assert_eq!(grown.findings[0].finding.severity, "critical");
    assert!(grown.news.iter().any(|n| n.id == f.id && !n.new));
}

#[test]
fn a_later_remote_last_seen_is_written_back() {
    let cfg = config("exclusive", "global", "user");
    let mut engine = Engine::new(&cfg, Arc::new(Metrics::new())).with_cluster();
    let mut fx = Effects::default();
    let early = vec![
        remote_use("a1", "acme", 1, 2),
        remote_use("a2", "acme", 3, 4),
    ];
    engine.remote_conflict(verdict(early), at(1000), at(1000), &mut fx);
    let later = vec![
        remote_use("a1", "acme", 1, 2),
        remote_use("a2", "acme", 3, 90),
    ];
    let mut fx = Effects::default();
    engine.remote_conflict(verdict(later), at(1001), at(1001), &mut fx);
    engine.tick(at(1001), &mut fx);
    assert_eq!(
        fx.findings.len(),
        1,
        "the later last_seen must be committed"
    );
    assert_eq!(fx.findings[0].last_seen_ns, 90 * SEC);
    assert_eq!(fx.findings[0].finding.last_seen, "1970-01-01T00:01:30Z");
}

#[test]
fn misdelivery_across_tenants_is_flagged_as_such() {
    let cfg = config("exclusive", "process", "user");
    let mut across = delivery("alice", "bob", "c1");
    across.tenant = Some("acme".into());
    across.delivery.as_mut().unwrap().connection_tenant = Some("globex".into());
    let mut within = delivery("carol", "dave", "c2");
    within.tenant = Some("acme".into());
    within.delivery.as_mut().unwrap().connection_tenant = Some("acme".into());
    let (_, findings) = run(&cfg, vec![across, within]);
    let by_conn = |c: &str| {
        findings
            .iter()
            .find(|f| f.finding.instance == c)
            .unwrap()
            .finding
            .clone()
    };
    let across = by_conn("c1");
    assert!(across.cross_tenant);
    assert_eq!(across.tenants, ["acme", "globex"]);
    let within = by_conn("c2");
    assert!(!within.cross_tenant);
    assert_eq!(within.tenants, ["acme"]);
}

#[test]
fn every_evidence_entry_names_the_origin_reported_with_the_instance() {
    let with_origin = |user: &str, s: u64| {
        let mut o = obs(Some(user), None, "f1", s, s + 1, "p1");
        o.watched[0].origin = Some("app:get_factory:7".into());
        o
    };
    let uses = vec![
        obs(Some("alice"), None, "f1", 1, 2, "p1"), // an older span, sent without origin
        with_origin("bob", 10),
        with_origin("carol", 20), // grows the finding
    ];
    let (_, findings) = run(&config("exclusive", "process", "user"), uses);
    let f = &findings[0].finding;
    assert_eq!(f.users, ["alice", "bob", "carol"]);
    assert!(f.evidence.len() >= 3, "{:?}", f.evidence);
    for e in &f.evidence {
        assert_eq!(e.origin.as_deref(), Some("app:get_factory:7"), "{e:?}");
    }
}
