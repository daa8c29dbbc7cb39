//! Discovery over synthetic traffic: verdicts per key, the child-before-root buffer, the key cap
//! and a hostile flood that must stay inside the memory cap.

use super::*;

fn trace(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(n + 1).to_le_bytes());
    TraceId(b)
}

fn discovery(min_users: u64) -> Discovery {
    let settings = Settings {
        min_users,
        ..Settings::default()
    };
    Discovery::new(settings, ["user.id".to_owned()])
}

fn verdict_of(d: &Discovery, service: &str, key: &str) -> Verdict {
    let r = d.report(None);
    r.candidates
        .iter()
        .find(|c| c.service == service && c.attribute == key)
        .map(|c| c.verdict)
        .unwrap_or_else(|| panic!("no candidate {service}/{key}"))
}

/// 200 users, 5 000 requests of a backend with a singleton, a partial leak far apart in time and
/// many benign keys.
fn backend(d: &mut Discovery) {
    for r in 0..5_000u64 {
        let user = format!("user-{}", r % 200);
        let session = if r == 4_901 {
            // user-100's session, handed to user-101 4 800 requests after its first use.
            "5c0f5e2a-0000-4000-8000-000000000064".to_owned()
        } else {
            format!("5c0f5e2a-0000-4000-8000-{:012x}", r % 200)
        };
        let request_id = format!("{:08x}-1111-4222-8333-{:012x}", r, r * 7919);
        let thread = format!("{}", 140_000 + r % 8);
        let attrs = [
            ("legacy.registry.addr", "0x7f3a2b10c4d0"),
            ("app.session", session.as_str()),
            ("request.id", request_id.as_str()),
            ("thread.id", thread.as_str()),
            ("gen_ai.request.model", "gpt-4o-mini"),
            ("gen_ai.agent.id", "asst_4f9a8b7c1d2e3f4a"),
            ("http.route", "/api/v1/chat"),
            ("app.plan", if r % 3 == 0 { "pro" } else { "free" }),
            ("app.worker.slot", "worker-3"),
        ];
        d.observe(&Record {
            service: "chat",
            trace: Some(trace(r)),
            user: Some(&user),
            time_ns: 1_700_000_000_000_000_000 + r * 1_000_000_000,
            attributes: &attrs,
        });
    }
}

#[test]
fn exactly_the_leaking_keys_are_suspects() {
    let mut d = discovery(5);
    backend(&mut d);
    let report = d.report(None);
    let suspects: Vec<&str> = report
        .candidates
        .iter()
        .filter(|c| c.verdict == Verdict::LeakSuspect)
        .map(|c| c.attribute.as_str())
        .collect();
    assert_eq!(suspects.len(), 2, "{suspects:?}");
    assert!(suspects.contains(&"legacy.registry.addr") && suspects.contains(&"app.session"));
    assert_eq!(verdict_of(&d, "chat", "request.id"), Verdict::PerRequest);
    assert_eq!(verdict_of(&d, "chat", "thread.id"), Verdict::SharedByDesign);
    assert_eq!(
        verdict_of(&d, "chat", "gen_ai.agent.id"),
        Verdict::SharedByDesign
    );
    let singleton = &report.candidates[0];
    assert_eq!(singleton.attribute, "legacy.registry.addr");
    assert!(
        singleton
            .suggested_watch
            .as_deref()
            .unwrap()
            .contains("scope     = \"process\"")
    );
    let partial = report
        .candidates
        .iter()
        .find(|c| c.attribute == "app.session")
        .unwrap();
    assert_eq!(partial.examples[0].user_count, 2);
    assert_eq!(partial.examples[0].users, ["user-100", "user-101"]);
}

#[test]
fn a_handful_of_users_is_insufficient_data() {
    let mut d = discovery(5);
    for r in 0..500u64 {
        let user = format!("user-{}", r % 3);
        d.observe(&Record {
            service: "tiny",
            trace: Some(trace(r)),
            user: Some(&user),
            time_ns: 1,
            attributes: &[("legacy.registry.addr", "0x7f3a2b10c4d0")],
        });
    }
    assert_eq!(
        verdict_of(&d, "tiny", "legacy.registry.addr"),
        Verdict::InsufficientData
    );
}

#[test]
fn child_spans_before_their_root_are_counted_when_the_user_arrives() {
    let mut d = discovery(2);
    for u in 0..4u64 {
        d.observe(&Record {
            service: "s",
            trace: Some(trace(u)),
            user: None,
            time_ns: 1,
            attributes: &[("pool.handle", "0x7f3a2b10c4d0")],
        });
    }
    assert_eq!(d.key_count(), 0, "nothing counted before the user is known");
    for u in 0..4u64 {
        let user = format!("u{u}");
        d.observe(&Record {
            service: "s",
            trace: Some(trace(u)),
            user: Some(&user),
            time_ns: 2,
            attributes: &[],
        });
    }
    assert_eq!(verdict_of(&d, "s", "pool.handle"), Verdict::LeakSuspect);
    // A later child of a known trace is counted at once.
    d.observe(&Record {
        service: "s",
        trace: Some(trace(0)),
        user: None,
        time_ns: 3,
        attributes: &[("late.key", "x")],
    });
    assert_eq!(d.key_count(), 2);
}

#[test]
fn user_watched_and_excluded_keys_are_skipped() {
    let settings = Settings {
        exclude: vec!["internal.".to_owned(), "debug.blob".to_owned()],
        ..Settings::default()
    };
    let mut d = Discovery::new(settings, ["user.id".to_owned(), "session.id".to_owned()]);
    d.observe(&Record {
        service: "s",
        trace: None,
        user: Some("u"),
        time_ns: 1,
        attributes: &[
            ("user.id", "u"),
            ("session.id", "a"),
            ("internal.x", "b"),
            ("debug.blob", "c"),
            ("kept", "d"),
        ],
    });
    let r = d.report(None);
    assert_eq!(r.candidates.len(), 1);
    assert_eq!(r.candidates[0].attribute, "kept");
}

#[test]
fn the_key_cap_is_global_and_keeps_the_suspects() {
    let settings = Settings {
        max_keys: 64,
        min_users: 2,
        ..Settings::default()
    };
    let mut d = Discovery::new(settings, []);
    for u in 0..10u64 {
        let user = format!("u{u}");
        d.observe(&Record {
            service: "victim",
            trace: None,
            user: Some(&user),
            time_ns: 1,
            attributes: &[("pool.handle", "0x7f3a2b10c4d0")],
        });
    }
    for i in 0..5_000u64 {
        let service = format!("svc-{}", i % 700);
        let key = format!("k{i}");
        d.observe(&Record {
            service: &service,
            trace: None,
            user: Some("x"),
            time_ns: 1,
            attributes: &[(&key, "v")],
        });
    }
    assert!(d.key_count() <= 64);
    assert!(d.evicted >= 5_000 - 64);
    assert_eq!(
        verdict_of(&d, "victim", "pool.handle"),
        Verdict::LeakSuspect
    );
}

#[test]
fn a_hostile_flood_stays_inside_the_memory_cap() {
    let mut d = Discovery::new(Settings::default(), []);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut peak = 0;
    for round in 0..200_000u64 {
        let service = format!("svc-{}", next() % 5_000);
        let keys: Vec<String> = (0..4).map(|_| format!("k{:x}", next() % 20_000)).collect();
        let values: Vec<String> = (0..4).map(|_| format!("{:016x}", next())).collect();
        let user = format!("u{}", next() % 100_000);
        let attrs: Vec<(&str, &str)> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let t = (round % 3 == 0).then(|| trace(next()));
        d.observe(&Record {
            service: &service,
            trace: t,
            user: (round % 5 != 0).then_some(user.as_str()),
            time_ns: round,
            attributes: &attrs,
        });
        if round % 10_000 == 0 {
            peak = peak.max(d.heap_bytes());
        }
    }
    peak = peak.max(d.heap_bytes());
    assert!(d.key_count() <= Settings::default().max_keys);
    assert!(peak <= 32 * 1024 * 1024, "{} bytes", peak);
}
