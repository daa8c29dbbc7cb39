//! Users at scale in the engine alone (the 100,000-user test through the real store and a
//! restart is in `store/scale_tests.rs`).

use std::sync::Arc;

use super::*;

#[test]
fn known_users_beyond_the_list_are_not_counted_again() {
    // The defect: an unlisted user was added to the count on every observation.
    let cfg = config("exclusive", "global", "user");
    let mut e = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut fx = Effects::default();
    for round in 0..3 {
        let batch = (0..500u64)
            .map(|i| {
                obs(
                    Some(&format!("u{i}")),
                    None,
                    "f",
                    round * 1000 + i,
                    round * 1000 + i + 1,
                    "p",
                )
            })
            .collect();
        e.ingest(batch, at(1000), &mut fx);
    }
    let f = &e.findings()[0];
    assert_eq!(
        (f.user_count, f.user_count_exact, f.users.len()),
        (500, true, 100)
    );
}

#[test]
fn an_instance_restored_with_more_users_than_kept_keeps_the_most_recent_in_any_row_order() {
    let cfg = config("exclusive", "process", "user");
    let mut first = Engine::new(&cfg, Arc::new(Metrics::new()));
    let mut fx = Effects::default();
    // Forty users of forty instances, bound below to one; user i last used it at i seconds.
    let users = 40u64;
    for i in 0..users {
        let user = format!("u{i:02}");
        first.ingest(
            vec![obs(Some(&user), None, &user, i, i, "p")],
            at(10),
            &mut fx,
        );
    }
    let mut bindings = fx.bindings.clone();
    for b in &mut bindings {
        b.instance = "f".into();
    }
    // Rows in no particular order.
    let shuffled = (0..users as usize).map(|i| bindings[i * 7 % users as usize].clone());
    let mut second = Engine::new(&cfg, Arc::new(Metrics::new()));
    second.restore(Restored {
        scopes: restored_scopes(&fx),
        bindings: shuffled.collect(),
        ..Restored::default()
    });
    assert_eq!(second.max_uses_per_instance(), 32);
    // Judged again at start-up from what was kept: exactly the 32 most recent users.
    let kept: Vec<String> = (users - 32..users).map(|i| format!("u{i:02}")).collect();
    assert_eq!(second.findings()[0].users, kept);
}
