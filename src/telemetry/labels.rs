//! The cap on distinct values of a metric label fed by client data (`service`, from
//! `service.name` or an event's service field): past `limits.max_label_values` a new value is
//! exported as `__other__` and counted in `crosstalk_label_overflow_total{label}`, so a client
//! inventing service names cannot grow `/metrics`, or crosstalk's memory, without bound.
//!
//! Values are admitted first come, first kept, for the life of the process: a series never
//! changes its meaning between two scrapes.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;

/// The value every label value past the cap is exported as.
pub const OTHER: &str = "__other__";

/// Folded values remembered (as 64-bit hashes) so each is counted once; past this many the
/// memory starts over, so memory stays bounded and a value may be counted again.
const MAX_REMEMBERED_FOLDED: usize = 65_536;

/// Distinct values admitted for one label, and the count of those folded into [`OTHER`].
pub struct LabelCap {
    max: usize,
    overflow: Counter,
    state: Mutex<CapState>,
}

#[derive(Default)]
struct CapState {
    kept: HashSet<Box<str>>,
    folded: HashSet<u64>,
}

impl LabelCap {
    /// At most `max` distinct values; `overflow` counts the values folded.
    pub fn new(max: usize, overflow: Counter) -> Self {
        LabelCap {
            max,
            overflow,
            state: Mutex::default(),
        }
    }

    /// The value to export for `value`: itself while it is (or fits among) the admitted ones,
    /// else [`OTHER`]. Called when a series is made or updated, not per observation.
    pub fn value(&self, value: &str) -> String {
        let mut s = self.state.lock();
        if s.kept.contains(value) || value == OTHER {
            return value.to_owned();
        }
        if s.kept.len() < self.max {
            s.kept.insert(value.into());
            return value.to_owned();
        }
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(value);
        if s.folded.len() >= MAX_REMEMBERED_FOLDED {
            s.folded.clear();
        }
        if s.folded.insert(hash) {
            self.overflow.inc();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_fold_into_other_and_count_once_each() {
        let overflow = Counter::default();
        let cap = LabelCap::new(2, overflow.clone());
        assert_eq!(cap.value("a"), "a");
        assert_eq!(cap.value("b"), "b");
        assert_eq!(cap.value("c"), OTHER);
        assert_eq!(cap.value("d"), OTHER);
        assert_eq!(cap.value("c"), OTHER);
        // Admitted values stay admitted.
        assert_eq!(cap.value("a"), "a");
        assert_eq!(overflow.get(), 2);
    }
}
