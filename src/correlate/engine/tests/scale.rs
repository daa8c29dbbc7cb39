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
