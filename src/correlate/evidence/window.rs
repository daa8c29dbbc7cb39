//! Counts over time: one [`Tally`] per bucket in a ring that covers the evidence window, so the
//! window's numbers are a merge of at most [`BUCKETS`] bounded tallies and old buckets are
//! reused, never kept.

use super::counter::Distinct;

/// Buckets per window: the window is judged to within one bucket (1 h of the default 24 h).
pub const BUCKETS: u64 = 24;

/// One observation of a watched instance, as evidence sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Hash of the instance (its process scope included for process-scoped watches).
    pub instance: u64,
    /// Hash of the user (or tenant) it served; `None` when unattributed.
    pub user: Option<u64>,
    /// Distinct users the engine now knows for this instance (0 when unattributed).
    pub users_of_instance: u32,
}

/// Counts over some span of time.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub observations: u64,
    pub unattributed: u64,
    pub instances: Distinct,
    pub users: Distinct,
    pub max_users_per_instance: u32,
}

impl Tally {
    pub fn add(&mut self, seen: &Seen) {
        self.observations += 1;
        self.instances.insert(seen.instance);
        match seen.user {
            Some(u) => self.users.insert(u),
            None => self.unattributed += 1,
        }
        self.max_users_per_instance = self.max_users_per_instance.max(seen.users_of_instance);
    }

    pub fn merge(&mut self, other: &Tally) {
        self.observations += other.observations;
        self.unattributed += other.unattributed;
        self.instances.merge(&other.instances);
        self.users.merge(&other.users);
        self.max_users_per_instance = self
            .max_users_per_instance
            .max(other.max_users_per_instance);
    }

    /// Share of observations without a user, 0 when there were none.
    pub fn unattributed_share(&self) -> f64 {
        if self.observations == 0 {
            0.0
        } else {
            self.unattributed as f64 / self.observations as f64
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    epoch: u64,
    tally: Tally,
}

/// The last [`BUCKETS`] buckets; allocated at the first observation.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    buckets: Vec<Bucket>,
}

impl Ring {
    /// Count `seen` in the bucket of `epoch` (time / bucket width), recycling a stale bucket.
    pub fn record(&mut self, epoch: u64, seen: &Seen) {
        if self.buckets.is_empty() {
            self.buckets = vec![Bucket::default(); BUCKETS as usize];
        }
        let b = &mut self.buckets[(epoch % BUCKETS) as usize];
        if b.epoch != epoch {
            b.epoch = epoch;
            b.tally = Tally::default();
        }
        b.tally.add(seen);
    }

    /// The buckets of the window ending with `now_epoch`, merged.
    pub fn window(&self, now_epoch: u64) -> Tally {
        let oldest = now_epoch.saturating_sub(BUCKETS - 1);
        let mut out = Tally::default();
        for b in &self.buckets {
            if b.tally.observations > 0 && b.epoch >= oldest && b.epoch <= now_epoch {
                out.merge(&b.tally);
            }
        }
        out
    }
}
