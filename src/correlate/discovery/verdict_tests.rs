//! Table and property tests of the verdict function.

use super::*;
use proptest::prelude::*;

fn summary(shape: Shape, values: u64, users: u64, requests: u64, shared: u64, max: u64) -> Summary {
    Summary {
        known: Known::Unknown,
        shape,
        identity_share: if shape.is_identity() { 1.0 } else { 0.0 },
        distinct_values: values,
        distinct_users: users,
        requests,
        tracked_values: values,
        shared_values: shared,
        max_users_per_value: max,
    }
}

#[test]
fn table() {
    use Verdict::*;
    // name, shape, distinct values, users, requests, shared values, most users on one value
    #[rustfmt::skip]
    let cases = [
        ("singleton address", Shape::Hex, 1, 200, 5000, 1, 200, LeakSuspect),
        ("pool of handles", Shape::Hex, 4, 200, 5000, 4, 80, LeakSuspect),
        ("one session crossed", Shape::Uuid, 200, 200, 5000, 1, 2, LeakSuspect),
        ("per request ids", Shape::Uuid, 10_000, 200, 10_000, 0, 1, PerRequest),
        ("per user sessions", Shape::Uuid, 200, 200, 5000, 0, 1, PerUser),
        ("team ids", Shape::Uuid, 50, 200, 5000, 50, 4, SharedByDesign),
        ("thread ids", Shape::ShortInt, 8, 200, 5000, 0, 0, SharedByDesign),
        ("model names", Shape::Word, 3, 200, 5000, 0, 0, SharedByDesign),
        ("timestamps", Shape::Timestamp, 9_000, 200, 10_000, 0, 0, PerRequest),
        ("few users", Shape::Hex, 1, 3, 50, 1, 3, InsufficientData),
    ];
    for (name, shape, values, users, requests, shared, max, want) in cases {
        let s = summary(shape, values, users, requests, shared, max);
        assert_eq!(judge(&s, 5).0, want, "{name}: {}", judge(&s, 5).1);
    }
}

#[test]
fn the_table_decides_before_the_values() {
    let mut agent = summary(Shape::Uuid, 1, 200, 5000, 1, 200);
    agent.known = Known::Shared("an agent definition every user shares");
    assert_eq!(judge(&agent, 5).0, Verdict::SharedByDesign);
    let mut conversation = summary(Shape::Word, 60, 200, 5000, 40, 2);
    conversation.known = Known::Identity("a conversation belongs to one user");
    assert_eq!(judge(&conversation, 5).0, Verdict::LeakSuspect);
}

fn any_shape() -> impl Strategy<Value = Shape> {
    prop::sample::select(Shape::ALL.to_vec())
}

fn any_summary() -> impl Strategy<Value = Summary> {
    (
        any_shape(),
        1u64..20_000,
        0u64..1_000,
        1u64..100_000,
        0u64..50,
        0u64..1_000,
    )
        .prop_map(|(shape, v, u, r, s, m)| summary(shape, v, u, r, s.min(v), m))
}

proptest! {
    #[test]
    fn below_min_users_is_always_insufficient(mut s in any_summary(), min in 1u64..50, u in 0u64..50) {
        s.distinct_users = u % min;
        prop_assert_eq!(judge(&s, min).0, Verdict::InsufficientData);
    }

    #[test]
    fn labels_are_never_suspects(s in any_summary()) {
        prop_assume!(!s.shape.is_identity());
        prop_assert_ne!(judge(&s, 5).0, Verdict::LeakSuspect);
    }

    #[test]
    fn known_shared_keys_are_never_suspects(mut s in any_summary()) {
        s.known = Known::Shared("reviewed");
        prop_assert_ne!(judge(&s, 5).0, Verdict::LeakSuspect);
    }

    #[test]
    fn nothing_shared_is_never_a_suspect(mut s in any_summary()) {
        s.shared_values = 0;
        prop_assert_ne!(judge(&s, 5).0, Verdict::LeakSuspect);
    }

    #[test]
    fn an_identity_serving_min_users_is_a_suspect(mut s in any_summary(), min in 2u64..20) {
        prop_assume!(s.shape.is_identity() && s.distinct_users >= min);
        s.shared_values = s.shared_values.max(1);
        s.max_users_per_value = s.max_users_per_value.max(min);
        prop_assert_eq!(judge(&s, min).0, Verdict::LeakSuspect);
    }

    #[test]
    fn one_crossing_among_many_private_values_is_a_suspect(v in 20u64..20_000, u in 5u64..1_000) {
        let s = summary(Shape::Uuid, v, u, v * 3, 1, 2);
        prop_assert_eq!(judge(&s, 5).0, Verdict::LeakSuspect);
    }
}
