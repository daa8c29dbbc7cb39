//! Tests of the distinct counter: exactness below the threshold, accuracy beyond, monotonicity,
//! persistence round trips and refusal of damaged bytes.

use super::*;
use proptest::prelude::*;

type Small = DistinctCounter<10, 16>;

fn filled<const P: usize, const E: usize>(
    items: impl IntoIterator<Item = u64>,
) -> DistinctCounter<P, E> {
    let mut c = DistinctCounter::<P, E>::new();
    for i in items {
        c.insert(&i.to_le_bytes());
    }
    c
}

#[test]
fn counts_exactly_up_to_the_threshold_and_says_so() {
    let mut c = DistinctCounter::<14, 1024>::new();
    for round in 0..3 {
        for i in 0..1024u64 {
            c.insert(format!("user-{i}").as_bytes());
        }
        assert_eq!(
            c.distinct(),
            Distinct {
                count: 1024,
                exact: true
            },
            "round {round}"
        );
    }
    c.insert(b"user-1024");
    assert_eq!(
        c.distinct(),
        Distinct {
            count: 1025,
            exact: false
        }
    );
}

#[test]
fn within_two_percent_at_one_hundred_thousand() {
    for seed in 0..5u64 {
        let c: DistinctCounter = filled((0..100_000u64).map(|i| i ^ (seed << 40)));
        let n = c.count() as f64;
        assert!(!c.is_exact());
        assert!(
            (n - 100_000.0).abs() / 100_000.0 <= 0.02,
            "seed {seed}: {n}"
        );
    }
}

#[test]
fn default_sketch_stays_small() {
    let c: DistinctCounter = filled(0..100_000u64);
    assert!(c.heap_bytes() <= 13 * 1024, "{} bytes", c.heap_bytes());
}

#[test]
fn round_trip_keeps_count_and_goes_on_counting_the_same_items() {
    for n in [0u64, 1, 15, 16, 17, 500, 20_000] {
        let c: Small = filled(0..n);
        let back = Small::from_bytes(&c.to_bytes()).expect("own bytes");
        assert_eq!(back.distinct(), c.distinct(), "n = {n}");
        // Re-inserting the same items after a restore must not count them again.
        let mut again = back.clone();
        for i in 0..n {
            again.insert(&i.to_le_bytes());
        }
        if again.is_exact() {
            assert_eq!(again.count(), n);
        } else {
            assert_eq!(again.count(), back.count(), "sketch re-insert of n = {n}");
        }
    }
}

#[test]
fn refuses_damaged_or_foreign_bytes() {
    let c: Small = filled(0..100);
    let bytes = c.to_bytes();
    assert_eq!(
        Small::from_bytes(&bytes[..5]).unwrap_err(),
        DistinctError::Truncated(5)
    );
    let mut v = bytes.clone();
    v[0] = 9;
    assert_eq!(
        Small::from_bytes(&v).unwrap_err(),
        DistinctError::Version(9)
    );
    assert!(matches!(
        DistinctCounter::<14, 16>::from_bytes(&bytes),
        Err(DistinctError::Precision {
            expected: 14,
            found: 10
        })
    ));
    let exact: Small = filled(0..10);
    let too_many = exact.to_bytes();
    assert_eq!(
        DistinctCounter::<10, 4>::from_bytes(&too_many).unwrap_err(),
        DistinctError::TooMany(10, 4)
    );
    assert!(matches!(
        Small::from_bytes(&bytes[..bytes.len() - 7]),
        Err(DistinctError::Sketch(_))
    ));
}

#[test]
fn merge_is_a_union() {
    let mut a: Small = filled(0..10);
    let b: Small = filled(5..12);
    a.merge(&b);
    assert_eq!(
        a.distinct(),
        Distinct {
            count: 12,
            exact: true
        }
    );
    let big: Small = filled(0..5_000);
    a.merge(&big);
    let n = a.count() as f64;
    assert!(!a.is_exact() && (n - 5_000.0).abs() / 5_000.0 < 0.1, "{n}");
}

proptest! {
    #[test]
    fn never_decreases_and_exact_means_true(items in prop::collection::vec(0u64..400, 0..600)) {
        let mut c = Small::new();
        let mut truth = std::collections::HashSet::new();
        let mut last = 0;
        for i in items {
            c.insert(&i.to_le_bytes());
            truth.insert(i);
            prop_assert!(c.count() >= last);
            last = c.count();
            if c.is_exact() {
                prop_assert_eq!(c.count(), truth.len() as u64);
            } else {
                prop_assert!(truth.len() > 16);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Small::from_bytes(&bytes);
        let mut framed = vec![1u8, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        framed.extend_from_slice(&bytes);
        let _ = Small::from_bytes(&framed);
    }

    #[test]
    fn round_trip_any(items in prop::collection::vec(any::<u64>(), 0..200)) {
        let c: Small = filled(items);
        let back = Small::from_bytes(&c.to_bytes()).expect("own bytes");
        prop_assert_eq!(back.distinct(), c.distinct());
    }
}
