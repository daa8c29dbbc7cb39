//! Evidence and verdicts by table, and against a naive model by property.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const DAY: u64 = 86_400;
const T0: u64 = 1_800_000_000;

fn watches() -> Vec<WatchInfo> {
    vec![
        WatchInfo {
            name: "agent_factory".into(),
            allow: false,
            expected: true,
        },
        WatchInfo {
            name: "shared_pool".into(),
            allow: true,
            expected: false,
        },
    ]
}

fn seen(instance: u64, user: Option<u64>, users_of_instance: u32) -> Seen {
    Seen {
        instance,
        user,
        users_of_instance,
        allowed: false,
    }
}

fn inputs() -> Inputs {
    Inputs {
        now_s: T0,
        window_s: DAY,
        allow: false,
        last_seen_s: Some(T0 - 10),
        last_finding_s: None,
        observations: 100,
        unattributed: 0,
    }
}

#[test]
fn verdict_table() {
    use Verdict::*;
    let i = inputs();
    let cases: Vec<(&str, Inputs, Verdict)> = vec![
        ("observed, attributed, no finding", i, Isolated),
        (
            "finding just now",
            Inputs {
                last_finding_s: Some(T0),
                ..i
            },
            Leaking,
        ),
        (
            "finding at the window's edge",
            Inputs {
                last_finding_s: Some(T0 - DAY),
                ..i
            },
            Leaking,
        ),
        (
            "finding a window ago: fixed",
            Inputs {
                last_finding_s: Some(T0 - DAY - 1),
                ..i
            },
            Isolated,
        ),
        (
            "never observed",
            Inputs {
                last_seen_s: None,
                observations: 0,
                ..i
            },
            Blind,
        ),
        (
            "last seen before the window",
            Inputs {
                last_seen_s: Some(T0 - DAY - 1),
                observations: 0,
                ..i
            },
            Blind,
        ),
        (
            "leak wins over blind",
            Inputs {
                last_seen_s: None,
                last_finding_s: Some(T0 - 5),
                ..i
            },
            Leaking,
        ),
        (
            "allow watch observed",
            Inputs {
                allow: true,
                unattributed: 90,
                ..i
            },
            Allowed,
        ),
        (
            "allow watch never observed",
            Inputs {
                allow: true,
                last_seen_s: None,
                ..i
            },
            Blind,
        ),
        (
            "half unattributed is still judged",
            Inputs {
                unattributed: 50,
                ..i
            },
            Isolated,
        ),
        (
            "more than half unattributed",
            Inputs {
                unattributed: 51,
                ..i
            },
            Unattributed,
        ),
        (
            "all unattributed",
            Inputs {
                unattributed: 100,
                ..i
            },
            Unattributed,
        ),
        (
            "seen in the window before a restart",
            Inputs {
                observations: 0,
                ..i
            },
            Isolated,
        ),
    ];
    for (name, input, want) in cases {
        assert_eq!(judge(&input).0, want, "{name}: {input:?}");
    }
}

#[test]
fn reasons_carry_the_numbers() {
    let (_, r) = judge(&Inputs {
        unattributed: 60,
        ..inputs()
    });
    assert_eq!(r, "60 of 100 observations in the window had no user");
    let (_, r) = judge(&Inputs {
        last_seen_s: Some(T0 - 2 * DAY),
        ..inputs()
    });
    assert_eq!(
        r,
        "no observation in the window; the last one was 172800s ago"
    );
}

#[test]
fn per_request_instances_are_isolated_with_the_right_counts() {
    let mut e = Evidence::new(watches(), Duration::from_secs(DAY));
    // 10 users, 3 requests each, a fresh instance per request.
    for u in 0..10u64 {
        for r in 0..3u64 {
            e.observe(0, "api", T0, &seen(u * 100 + r, Some(u), 1));
        }
    }
    let rows = e.report(T0 + 1);
    let api = rows
        .iter()
        .find(|r| r.service.as_deref() == Some("api"))
        .unwrap();
    assert_eq!(api.verdict, Verdict::Isolated);
    assert_eq!(
        (
            api.window.observations,
            api.window.instances,
            api.window.users
        ),
        (30, 30, 10)
    );
    assert_eq!(api.window.max_users_per_instance, 1);
    assert_eq!(api.window.instances_per_user, Some(3.0));
    assert_eq!(api.window.unattributed_share, 0.0);
    assert!(api.expected);
    // The allow watch was never observed: one blind row without a service.
    let pool = rows.iter().find(|r| r.watch == "shared_pool").unwrap();
    assert_eq!(
        (pool.verdict, pool.service.as_deref()),
        (Verdict::Blind, None)
    );
    assert_eq!(e.never_observed(), ["shared_pool"]);
}

#[test]
fn a_fixed_leak_turns_isolated_once_the_window_passes() {
    let mut e = Evidence::new(watches(), Duration::from_secs(DAY));
    e.observe(0, "api", T0, &seen(1, Some(1), 1));
    e.observe(0, "api", T0, &seen(1, Some(2), 2));
    e.finding_seen(0, "api", T0);
    assert_eq!(e.report(T0)[0].verdict, Verdict::Leaking);
    assert_eq!(e.report(T0)[0].window.max_users_per_instance, 2);
    // The fix: per-request instances from then on.
    for h in 1..=25u64 {
        e.observe(0, "api", T0 + h * 3600, &seen(100 + h, Some(h), 1));
    }
    let row = &e.report(T0 + 25 * 3600)[0];
    assert_eq!(row.verdict, Verdict::Isolated, "{row:?}");
    assert_eq!(
        row.window.max_users_per_instance, 1,
        "the leak left the window"
    );
    assert_eq!(
        row.lifetime.max_users_per_instance, 2,
        "but not the lifetime"
    );
}

#[test]
fn tagging_removed_goes_blind_after_a_window_and_the_store_keeps_it_across_restarts() {
    let mut e = Evidence::new(watches(), Duration::from_secs(DAY));
    e.observe(0, "api", T0, &seen(1, Some(1), 1));
    let rows = e.take_unpersisted(false);
    assert_eq!(
        rows,
        [SeenRow {
            watch: "agent_factory".into(),
            service: "api".into(),
            first_s: T0,
            last_s: T0
        }]
    );
    // Not handed out again until it moved on by a minute.
    e.observe(0, "api", T0 + 30, &seen(1, Some(1), 1));
    assert!(e.take_unpersisted(false).is_empty());
    // At shutdown, whatever moved at all.
    assert_eq!(e.take_unpersisted(true)[0].last_s, T0 + 30);
    assert!(e.take_unpersisted(true).is_empty());
    // A restart: a fresh Evidence from the stored rows.
    let mut after = Evidence::new(watches(), Duration::from_secs(DAY));
    after.restore(&rows);
    assert_eq!(after.report(T0 + 60)[0].verdict, Verdict::Isolated);
    let blind = &after.report(T0 + DAY + 1)[0];
    assert_eq!(blind.verdict, Verdict::Blind);
    assert_eq!(blind.service.as_deref(), Some("api"));
    assert!(blind.last_seen.is_some());
    assert!(after.never_observed().contains(&"shared_pool"));
    assert!(!after.never_observed().contains(&"agent_factory"));
}

#[test]
fn spans_without_users_are_unattributed() {
    let mut e = Evidence::new(watches(), Duration::from_secs(DAY));
    for i in 0..10 {
        let user = (i < 3).then_some(i);
        e.observe(0, "api", T0, &seen(i, user, u32::from(user.is_some())));
    }
    let row = &e.report(T0)[0];
    assert_eq!(row.verdict, Verdict::Unattributed);
    assert_eq!(row.window.unattributed_share, 0.7);
    assert_eq!((row.window.instances, row.window.users), (10, 3));
}

#[test]
fn services_past_the_cap_are_pooled_and_counted() {
    let mut e = Evidence::new(watches(), Duration::from_secs(DAY));
    for s in 0..(MAX_PAIRS + 100) {
        e.observe(0, &format!("svc-{s}"), T0, &seen(s as u64, Some(1), 1));
    }
    let rows = e.report(T0);
    // MAX_PAIRS pairs, the pooled one, and the never-seen allow watch.
    assert_eq!(rows.len(), MAX_PAIRS + 2);
    assert_eq!(e.overflowed(), 100);
    let other = rows
        .iter()
        .find(|r| r.service.as_deref() == Some(OTHER_SERVICE))
        .unwrap();
    assert_eq!(other.window.observations, 100);
}

#[derive(Debug, Clone)]
struct Obs {
    at: u64,
    instance: u64,
    user: Option<u64>,
}

fn obs() -> impl Strategy<Value = Obs> {
    (0..3 * DAY, 0..40u64, proptest::option::of(0..25u64)).prop_map(|(at, instance, user)| Obs {
        at,
        instance,
        user,
    })
}

proptest! {
    /// Counts over the window agree with a naive model that keeps every observation, up to the
    /// window's one-bucket granularity: the model's window is the ring's whole buckets.
    #[test]
    fn window_counts_match_a_model(mut all in proptest::collection::vec(obs(), 1..200)) {
        all.sort_by_key(|o| o.at);
        let mut e = Evidence::new(watches(), Duration::from_secs(DAY));
        let mut users_of: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for o in &all {
            if let Some(u) = o.user {
                users_of.entry(o.instance).or_default().insert(u);
            }
            let n = o.user.map_or(0, |_| users_of[&o.instance].len() as u32);
            e.observe(0, "api", T0 + o.at, &seen(o.instance, o.user, n));
        }
        let now = T0 + all.last().unwrap().at;
        let bucket = DAY / 24;
        let oldest = (now / bucket - 23) * bucket;
        let in_window: Vec<&Obs> = all.iter().filter(|o| T0 + o.at >= oldest).collect();
        let row = &e.report(now)[0];
        let instances: BTreeSet<u64> = in_window.iter().map(|o| o.instance).collect();
        let users: BTreeSet<u64> = in_window.iter().filter_map(|o| o.user).collect();
        let unattributed = in_window.iter().filter(|o| o.user.is_none()).count() as u64;
        prop_assert_eq!(row.window.observations, in_window.len() as u64);
        prop_assert_eq!(row.window.instances, instances.len() as u64);
        prop_assert_eq!(row.window.users, users.len() as u64);
        prop_assert_eq!(row.lifetime.observations, all.len() as u64);
        let lifetime_users: BTreeSet<u64> = all.iter().filter_map(|o| o.user).collect();
        prop_assert_eq!(row.lifetime.users, lifetime_users.len() as u64);
        prop_assert!(row.window.max_users_per_instance <= row.lifetime.max_users_per_instance);
        let want = if unattributed * 2 > in_window.len() as u64 {
            Verdict::Unattributed
        } else {
            Verdict::Isolated
        };
        prop_assert_eq!(row.verdict, want);
    }

    /// A leak is reported exactly while its last finding is inside the window, whatever else.
    #[test]
    fn leaking_exactly_while_the_finding_is_in_the_window(
        finding_ago in 0..3 * DAY,
        seen_ago in proptest::option::of(0..3 * DAY),
        observations in 0..1000u64,
        unattributed_pct in 0..=100u64,
        allow in any::<bool>(),
    ) {
        let i = Inputs {
            now_s: T0,
            window_s: DAY,
            allow,
            last_seen_s: seen_ago.map(|a| T0 - a),
            last_finding_s: Some(T0 - finding_ago),
            observations,
            unattributed: observations * unattributed_pct / 100,
        };
        let (v, _) = judge(&i);
        prop_assert_eq!(v == Verdict::Leaking, finding_ago <= DAY);
        if finding_ago > DAY {
            let blind = seen_ago.is_none_or(|a| a > DAY);
            prop_assert_eq!(v == Verdict::Blind, blind);
        }
    }
}
