//! Isolation evidence: per (watch, service), what the engine saw — observations, distinct
//! instances and users, the most users one instance served, the share without a user, first and
//! last observation — over the process lifetime and over a recent window, and the verdict those
//! numbers support (`isolated`, `allowed`, `leaking`, `blind`, `unattributed`).
//!
//! Pure and bounded: no I/O, no clock (callers pass wall-clock seconds); at most [`MAX_PAIRS`]
//! (watch, service) pairs, each a ring of [`window::BUCKETS`] tallies plus the lifetime's, whose
//! two distinct counters hold at most 3 KiB each (the shared `DistinctCounter`): about 150 KiB
//! per pair at worst, 40 MiB for all. Services past the cap are counted under [`OTHER_SERVICE`]. First and last observation times are handed out as
//! [`SeenRow`]s to persist, so that `blind` survives a restart.

mod counter;
mod verdict;
mod window;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

pub use counter::item_hash;
pub use verdict::{Inputs, Verdict, judge};
pub use window::Seen;
use window::{BUCKETS, Recent, Ring, Tally};

use super::finding::rfc3339;

/// (watch, service) pairs kept at most; more services are pooled under [`OTHER_SERVICE`] (one
/// more pair per watch).
pub const MAX_PAIRS: usize = 256;
/// The service evidence pools services past [`MAX_PAIRS`] under.
pub const OTHER_SERVICE: &str = "__other__";
/// A pair's last observation is handed out for persisting at most this often.
const PERSIST_EVERY_S: u64 = 60;

/// What evidence needs to know of a configured watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchInfo {
    pub name: String,
    /// The watch's policy is `allow`: sharing is by design.
    pub allow: bool,
    /// `[[watch]] expected = true`: it must see traffic.
    pub expected: bool,
}

/// First and last observation of a (watch, service), wall-clock seconds: what the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRow {
    pub watch: String,
    pub service: String,
    pub first_s: u64,
    pub last_s: u64,
}

#[derive(Debug, Default)]
struct Pair {
    lifetime: Tally,
    ring: Ring,
    first_s: Option<u64>,
    last_s: Option<u64>,
    last_finding_s: Option<u64>,
    /// `last_s` as last handed out for persisting.
    persisted_s: Option<u64>,
    /// Hashes counted in the current bucket; allocated at the first observation.
    recent: Option<Recent>,
}

/// Evidence for every configured watch. See the module doc.
#[derive(Debug)]
pub struct Evidence {
    window_s: u64,
    bucket_s: u64,
    watches: Vec<WatchInfo>,
    /// Per watch index: still configured (a reload may remove a watch; its index stays taken).
    live: Vec<bool>,
    /// Per watch index: service → pair.
    pairs: Vec<HashMap<Box<str>, Pair, foldhash::fast::RandomState>>,
    pair_count: usize,
    overflowed: u64,
}

/// Counts over a span of time, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counts {
    pub observations: u64,
    pub instances: u64,
    /// `false` when `instances` is a lower bound (past the exact counting limit).
    pub instances_exact: bool,
    pub users: u64,
    pub users_exact: bool,
    /// Distinct instances per distinct user; `null` without users.
    pub instances_per_user: Option<f64>,
    /// The most users one instance served, instances in `allow_instances` left out.
    pub max_users_per_instance: u32,
    /// Observations of instances in the watch's `allow_instances` (shared by design).
    pub allowed_observations: u64,
    pub unattributed_share: f64,
}

impl From<&Tally> for Counts {
    fn from(t: &Tally) -> Self {
        let users = t.users.count();
        Counts {
            observations: t.observations,
            instances: t.instances.count(),
            instances_exact: t.instances.exact(),
            users,
            users_exact: t.users.exact(),
            instances_per_user: (users > 0).then(|| t.instances.count() as f64 / users as f64),
            max_users_per_instance: t.max_users_per_instance,
            allowed_observations: t.allowed,
            unattributed_share: t.unattributed_share(),
        }
    }
}

/// One row of `GET /api/v1/watches` and of the gate's summary: the window's numbers at the top
/// level (the verdict is judged on them), the process lifetime's under `lifetime`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchEvidence {
    pub watch: String,
    /// `null` for a watch never observed in any service.
    pub service: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    #[serde(flatten)]
    pub window: Counts,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub last_finding: Option<String>,
    pub window_seconds: u64,
    pub expected: bool,
    pub lifetime: Counts,
}

impl Evidence {
    /// Evidence for `watches` (in the engine's watch order) over `window`.
    pub fn new(watches: Vec<WatchInfo>, window: Duration) -> Self {
        let window_s = window.as_secs().max(BUCKETS);
        Evidence {
            window_s,
            bucket_s: window_s.div_ceil(BUCKETS),
            pairs: watches.iter().map(|_| HashMap::default()).collect(),
            live: vec![true; watches.len()],
            watches,
            pair_count: 0,
            overflowed: 0,
        }
    }

    /// Observations counted under [`OTHER_SERVICE`] because of the pair cap.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    fn pair(&mut self, watch: u16, service: &str) -> Option<&mut Pair> {
        let w = watch as usize;
        let map = self.pairs.get_mut(w)?;
        // Two cheap (foldhash) lookups: returning `get_mut`'s borrow and inserting after a miss
        // is what the borrow checker rejects.
        if map.contains_key(service) {
            return map.get_mut(service);
        }
        let service = if self.pair_count < MAX_PAIRS {
            service
        } else {
            self.overflowed += 1;
            OTHER_SERVICE
        };
        if !map.contains_key(service) {
            self.pair_count += 1;
            map.insert(service.into(), Pair::default());
        }
        map.get_mut(service)
    }

    /// Take a reloaded watch set, by index (`None`: removed, no longer reported). The evidence of
    /// the watches in `reset` (their instance ids now mean something else) starts afresh; every
    /// other kept watch keeps its numbers.
    pub fn reconfigure(&mut self, slots: Vec<Option<WatchInfo>>, reset: &[usize]) {
        for (i, slot) in slots.into_iter().enumerate() {
            if i == self.watches.len() {
                let Some(info) = slot else { continue };
                self.watches.push(info);
                self.live.push(true);
                self.pairs.push(HashMap::default());
                continue;
            }
            let forget = slot.is_none() || reset.contains(&i);
            self.live[i] = slot.is_some();
            if let Some(info) = slot {
                self.watches[i] = info;
            }
            if forget {
                self.pair_count -= self.pairs[i].len();
                self.pairs[i].clear();
            }
        }
    }

    /// The index of configured watch `name`.
    fn index_of(&self, name: &str) -> Option<usize> {
        (self.watches.iter().zip(&self.live)).position(|(w, &live)| live && w.name == name)
    }

    /// Count one observation of watch `watch` (engine index) in `service` at `now_s`.
    pub fn observe(&mut self, watch: u16, service: &str, now_s: u64, seen: &Seen) {
        let epoch = now_s / self.bucket_s;
        let Some(p) = self.pair(watch, service) else {
            return;
        };
        // Both tallies take the same items: an item counted in this bucket is in the lifetime's.
        let fresh = p.recent.get_or_insert_with(Recent::new).fresh(epoch, seen);
        p.lifetime.add(seen, fresh);
        p.ring.record(epoch, seen, fresh);
        p.first_s = Some(p.first_s.map_or(now_s, |f| f.min(now_s)));
        p.last_s = Some(p.last_s.map_or(now_s, |l| l.max(now_s)));
    }

    /// A finding of `watch` in `service` was raised or grew at `now_s`.
    pub fn finding_seen(&mut self, watch: u16, service: &str, now_s: u64) {
        if let Some(p) = self.pair(watch, service) {
            p.last_finding_s = Some(p.last_finding_s.map_or(now_s, |l| l.max(now_s)));
        }
    }

    /// Take back what the store kept: first/last observation times.
    pub fn restore(&mut self, rows: &[SeenRow]) {
        for r in rows {
            let Some(w) = self.index_of(&r.watch) else {
                continue; // a watch no longer configured
            };
            if let Some(p) = self.pair(w as u16, &r.service) {
                p.first_s = Some(p.first_s.map_or(r.first_s, |f| f.min(r.first_s)));
                p.last_s = Some(p.last_s.map_or(r.last_s, |l| l.max(r.last_s)));
                p.persisted_s = p.last_s;
            }
        }
    }

    /// First/last times that are new or moved on enough since last handed out (with `all`:
    /// moved on at all, for a shutdown), to persist.
    pub fn take_unpersisted(&mut self, all: bool) -> Vec<SeenRow> {
        let every = if all { 1 } else { PERSIST_EVERY_S };
        let mut out = Vec::new();
        for (w, map) in self.pairs.iter_mut().enumerate() {
            for (service, p) in map.iter_mut() {
                let (Some(first_s), Some(last_s)) = (p.first_s, p.last_s) else {
                    continue;
                };
                let due = p
                    .persisted_s
                    .is_none_or(|s| last_s >= s.saturating_add(every));
                if due {
                    p.persisted_s = Some(last_s);
                    out.push(SeenRow {
                        watch: self.watches[w].name.clone(),
                        service: service.to_string(),
                        first_s,
                        last_s,
                    });
                }
            }
        }
        out
    }

    /// Every (watch, service) with its verdict at `now_s`; a watch never observed anywhere is
    /// one `blind` row without a service. Ordered by watch (config order), then service.
    pub fn report(&self, now_s: u64) -> Vec<WatchEvidence> {
        let epoch = now_s / self.bucket_s;
        let mut out = Vec::new();
        for (w, info) in self.watches.iter().enumerate() {
            if !self.live[w] {
                continue;
            }
            let mut services: Vec<(&Box<str>, &Pair)> = self.pairs[w].iter().collect();
            services.sort_by(|a, b| a.0.cmp(b.0));
            if services.is_empty() {
                out.push(self.row(info, None, &Pair::default(), epoch, now_s));
            }
            for (service, p) in services {
                out.push(self.row(info, Some(service), p, epoch, now_s));
            }
        }
        out
    }

    fn row(
        &self,
        info: &WatchInfo,
        service: Option<&str>,
        p: &Pair,
        epoch: u64,
        now_s: u64,
    ) -> WatchEvidence {
        let window = p.ring.window(epoch);
        let (verdict, reason) = judge(&Inputs {
            now_s,
            window_s: self.window_s,
            allow: info.allow,
            last_seen_s: p.last_s,
            last_finding_s: p.last_finding_s,
            observations: window.observations,
            unattributed: window.unattributed,
        });
        let time = |s: Option<u64>| s.map(|s| rfc3339(s.saturating_mul(1_000_000_000)));
        WatchEvidence {
            watch: info.name.clone(),
            service: service.map(str::to_owned),
            verdict,
            reason,
            window: Counts::from(&window),
            first_seen: time(p.first_s),
            last_seen: time(p.last_s),
            last_finding: time(p.last_finding_s),
            window_seconds: self.window_s,
            expected: info.expected,
            lifetime: Counts::from(&p.lifetime),
        }
    }

    /// Last observation of a (watch, service), wall-clock seconds.
    pub fn last_seen_s(&self, watch: &str, service: &str) -> Option<u64> {
        let w = self.index_of(watch)?;
        self.pairs[w].get(service)?.last_s
    }

    /// Watches (by name) with no observation at all, in config order.
    pub fn never_observed(&self) -> Vec<&str> {
        (self.watches.iter().zip(&self.pairs).zip(&self.live))
            .filter(|((_, m), live)| **live && m.values().all(|p| p.last_s.is_none()))
            .map(|((w, _), _)| w.name.as_str())
            .collect()
    }
}
