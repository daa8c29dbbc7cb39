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
    /// The instance is in its watch's `allow_instances`: shared by design, so its users do not
    /// count towards `max_users_per_instance`.
    pub allowed: bool,
}

/// Counts over some span of time.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub observations: u64,
    pub unattributed: u64,
    /// Observations of instances the watch allows to be shared (`allow_instances`).
    pub allowed: u64,
    pub instances: Distinct,
    pub users: Distinct,
    pub max_users_per_instance: u32,
}

impl Tally {
    /// Count `seen`; `fresh`: whether its instance and user are not yet known to have been
    /// counted in this bucket (a known one is skipped: the distinct counters hold it already).
    pub fn add(&mut self, seen: &Seen, fresh: Fresh) {
        self.observations += 1;
        if fresh.instance {
            self.instances.insert(seen.instance);
        }
        match seen.user {
            Some(u) if fresh.user => self.users.insert(u),
            Some(_) => {}
            None => self.unattributed += 1,
        }
        if seen.allowed {
            self.allowed += 1;
        } else {
            self.max_users_per_instance = self.max_users_per_instance.max(seen.users_of_instance);
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.observations += other.observations;
        self.unattributed += other.unattributed;
        self.allowed += other.allowed;
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

/// Which parts of a [`Seen`] still need counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    pub instance: bool,
    pub user: bool,
}

/// Slots of [`Recent`]: repeat sightings of up to about this many instances (and users) per
/// bucket skip the distinct counters, whose inserts cost far more than a slot compare.
const RECENT_SLOTS: usize = 1024;

/// A direct-mapped memo of hashes already counted in the current bucket (16 KiB per pair). A
/// hit is exact (the whole 64-bit hash matches); a miss only costs the insert it would anyway.
#[derive(Debug, Clone)]
pub struct Recent {
    epoch: u64,
    instances: Box<[u64; RECENT_SLOTS]>,
    users: Box<[u64; RECENT_SLOTS]>,
}

impl Recent {
    pub fn new() -> Self {
        Recent {
            epoch: u64::MAX,
            instances: Box::new([0; RECENT_SLOTS]),
            users: Box::new([0; RECENT_SLOTS]),
        }
    }

    /// What of `seen` is new to the bucket of `epoch`, remembering it from now on.
    pub fn fresh(&mut self, epoch: u64, seen: &Seen) -> Fresh {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.instances.fill(0);
            self.users.fill(0);
        }
        let remember = |slots: &mut [u64; RECENT_SLOTS], h: u64| {
            let slot = &mut slots[(h % RECENT_SLOTS as u64) as usize];
            let hit = *slot == h && h != 0;
            *slot = h;
            !hit
        };
        Fresh {
            instance: remember(&mut self.instances, seen.instance),
            user: seen.user.is_some_and(|u| remember(&mut self.users, u)),
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
    pub fn record(&mut self, epoch: u64, seen: &Seen, fresh: Fresh) {
        if self.buckets.is_empty() {
            self.buckets = vec![Bucket::default(); BUCKETS as usize];
        }
        let b = &mut self.buckets[(epoch % BUCKETS) as usize];
        if b.epoch != epoch {
            b.epoch = epoch;
            b.tally = Tally::default();
        }
        b.tally.add(seen, fresh);
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
