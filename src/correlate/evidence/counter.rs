//! Distinct items (instances or users) seen in one evidence bucket.
//!
//! A stand-in with the interface the shared distinct counter (`DistinctCounter`, issue 14)
//! offers: exact up to [`EXACT_UP_TO`] items, then it stops growing and reports a lower bound
//! (`exact() == false`), so memory per bucket stays bounded whatever the traffic. Evidence
//! only ever talks to this type, so switching to the shared sketch changes this file alone.

use std::collections::HashSet;

/// Items counted exactly per bucket; past it the count is "at least".
pub const EXACT_UP_TO: usize = 1024;

/// Distinct 64-bit item hashes, bounded.
#[derive(Debug, Clone, Default)]
pub struct Distinct {
    seen: HashSet<u64, foldhash::fast::FixedState>,
    /// Set once an item was turned away at the cap.
    saturated: bool,
}

impl Distinct {
    /// Count one item (by its hash).
    pub fn insert(&mut self, hash: u64) {
        if self.seen.len() < EXACT_UP_TO {
            self.seen.insert(hash);
        } else if !self.seen.contains(&hash) {
            self.saturated = true;
        }
    }

    /// Add everything `other` counted.
    pub fn merge(&mut self, other: &Distinct) {
        for &h in &other.seen {
            self.insert(h);
        }
        self.saturated |= other.saturated;
    }

    /// Distinct items counted (a lower bound when not [`exact`](Self::exact)).
    pub fn count(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Whether [`count`](Self::count) is exact.
    pub fn exact(&self) -> bool {
        !self.saturated
    }

    pub fn clear(&mut self) {
        self.seen.clear();
        self.saturated = false;
    }
}

/// The hash evidence counts an item by (stable within one process).
pub fn item_hash(parts: &[&[u8]]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6576_6964).build_hasher();
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_the_cap_and_a_lower_bound_above_it() {
        let mut d = Distinct::default();
        for i in 0..100u64 {
            d.insert(i);
            d.insert(i);
        }
        assert_eq!((d.count(), d.exact()), (100, true));
        for i in 0..(EXACT_UP_TO as u64 + 10) {
            d.insert(i);
        }
        assert_eq!(d.count(), EXACT_UP_TO as u64);
        assert!(!d.exact());
    }

    #[test]
    fn merge_is_a_union() {
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        (0..10).for_each(|i| a.insert(i));
        (5..15).for_each(|i| b.insert(i));
        a.merge(&b);
        assert_eq!((a.count(), a.exact()), (15, true));
    }
}
