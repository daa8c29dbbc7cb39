//! Discovery: per (service.name, attribute key) statistics over every attribute of every span and
//! log record, and a verdict per key that points at the object nobody thought to watch. It only
//! suggests: it never raises a finding or an alert.
//!
//! Pure and bounded (no I/O, no clocks):
//! - at most `max_keys` keys across all services; past it the least useful eighth is evicted
//!   (counted) — keys with shared identity values are the most useful and go last;
//! - per-key state is bounded (see [`stats`]), and the per-value tables share one byte budget;
//! - a record whose user is not yet known (a child span arriving before the root span that names
//!   the user) waits in a bounded buffer per trace; when its trace's user arrives it is counted,
//!   when the buffer is full the oldest trace is dropped (counted);
//! - the user, tenant and watched keys and the configured `exclude` keys/prefixes are skipped.

pub mod feed;
pub mod known;
pub mod report;
pub mod shape;
pub mod stats;
pub mod verdict;

use std::collections::{HashMap, VecDeque};

use crate::correlate::distinct::item_hash;
use crate::normalize::TraceId;
use stats::{KeyStats, Seen, user_fingerprint};

pub use report::Candidate;
pub use verdict::Verdict;

/// Bytes all keys' per-value tables may hold together.
pub const TABLE_BUDGET: usize = 12 * 1024 * 1024;
/// Traces whose records wait for their user, and records per trace.
pub const PENDING_TRACES: usize = 2048;
pub const PENDING_PER_TRACE: usize = 128;
/// Traces whose user is remembered for records arriving after the one naming it.
pub const TRACE_USERS: usize = 16 * 1024;
/// User names remembered for examples (by fingerprint).
pub const USER_NAMES: usize = 4096;
/// Longest value counted; longer values are free text, not identities.
pub const MAX_VALUE_BYTES: usize = 256;

pub use crate::config::Discovery as Settings;

/// One record's attributes, as the feed hands them over.
pub struct Record<'a> {
    pub service: &'a str,
    pub trace: Option<TraceId>,
    pub user: Option<&'a str>,
    pub time_ns: u64,
    pub attributes: &'a [(&'a str, &'a str)],
}

struct Pending {
    service: Box<str>,
    time_ns: u64,
    attributes: Vec<(Box<str>, Box<str>)>,
}

/// The discovery state of one process (or one `discover` run).
pub struct Discovery {
    settings: Settings,
    skip_exact: std::collections::HashSet<String>,
    skip_prefixes: Vec<String>,
    services: HashMap<Box<str>, HashMap<Box<str>, KeyStats>>,
    keys: usize,
    budget: usize,
    pending: HashMap<TraceId, Pending>,
    pending_order: VecDeque<TraceId>,
    trace_users: HashMap<TraceId, u64>,
    trace_order: VecDeque<TraceId>,
    user_names: HashMap<u32, Box<str>>,
    /// Keys evicted to stay within `max_keys`.
    pub evicted: u64,
    /// Records dropped from the waiting buffer (or left waiting at the end) without a user.
    pub pending_dropped: u64,
}

impl Discovery {
    /// `skip` are the user, tenant and watched keys, which discovery never reports.
    pub fn new(settings: Settings, skip: impl IntoIterator<Item = String>) -> Self {
        let mut skip_exact: std::collections::HashSet<String> = skip.into_iter().collect();
        let mut skip_prefixes = Vec::new();
        for e in &settings.exclude {
            match e.strip_suffix('*') {
                Some(p) => skip_prefixes.push(p.to_owned()),
                None if e.ends_with('.') => skip_prefixes.push(e.clone()),
                None => {
                    skip_exact.insert(e.clone());
                }
            }
        }
        Discovery {
            settings,
            skip_exact,
            skip_prefixes,
            services: HashMap::new(),
            keys: 0,
            budget: TABLE_BUDGET,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            trace_users: HashMap::new(),
            trace_order: VecDeque::new(),
            user_names: HashMap::new(),
            evicted: 0,
            pending_dropped: 0,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn skipped(&self, key: &str) -> bool {
        self.skip_exact.contains(key) || self.skip_prefixes.iter().any(|p| key.starts_with(p))
    }

    /// Count one record: now if its user (or its trace's user) is known, else once it is.
    pub fn observe(&mut self, r: &Record<'_>) {
        let user_hash = match r.user {
            Some(user) => {
                let h = item_hash(user.as_bytes());
                self.remember_user(h, user);
                if let Some(trace) = r.trace {
                    self.remember_trace(trace, h);
                    self.release(trace, h);
                }
                Some(h)
            }
            None => r.trace.and_then(|t| self.trace_users.get(&t).copied()),
        };
        match user_hash {
            Some(h) => {
                for &(key, value) in r.attributes {
                    self.count(r.service, key, value, h, r.trace, r.time_ns);
                }
            }
            None => self.wait(r),
        }
    }

    fn count(
        &mut self,
        service: &str,
        key: &str,
        value: &str,
        user: u64,
        trace: Option<TraceId>,
        time_ns: u64,
    ) {
        if value.is_empty() || value.len() > MAX_VALUE_BYTES || self.skipped(key) {
            return;
        }
        let known = known::lookup(key);
        let track = !matches!(known, known::Known::Shared(_));
        let exists = self
            .services
            .get(service)
            .is_some_and(|keys| keys.contains_key(key));
        if !exists {
            if self.keys >= self.settings.max_keys {
                self.evict();
            }
            self.keys += 1;
            self.services
                .entry(service.into())
                .or_default()
                .insert(key.into(), KeyStats::new(time_ns));
        }
        let Some(stats) = self
            .services
            .get_mut(service)
            .and_then(|keys| keys.get_mut(key))
        else {
            return;
        };
        let seen = Seen {
            value,
            user_hash: user,
            trace,
            time_ns,
        };
        stats.observe(&seen, &mut self.budget, track);
    }

    /// Drop the least useful eighth of the keys (at least one), returning their table bytes.
    fn evict(&mut self) {
        let mut scored: Vec<(u64, Box<str>, Box<str>)> = Vec::with_capacity(self.keys);
        for (service, keys) in &self.services {
            for (key, stats) in keys {
                scored.push((usefulness(stats), service.clone(), key.clone()));
            }
        }
        let n = (scored.len() / 8).max(1).min(scored.len());
        if n == 0 {
            return;
        }
        scored.select_nth_unstable_by_key(n - 1, |(score, _, _)| *score);
        for (_, service, key) in scored.into_iter().take(n) {
            if let Some(keys) = self.services.get_mut(&service) {
                if let Some(stats) = keys.remove(&key) {
                    self.budget += stats.table_bytes();
                    self.keys -= 1;
                    self.evicted += 1;
                }
                if keys.is_empty() {
                    self.services.remove(&service);
                }
            }
        }
    }

    fn wait(&mut self, r: &Record<'_>) {
        let Some(trace) = r.trace else {
            self.pending_dropped += 1;
            return;
        };
        if !self.pending.contains_key(&trace) {
            // The order also holds traces already released; drop those before it outgrows the map.
            if self.pending_order.len() >= 2 * PENDING_TRACES {
                let pending = &self.pending;
                self.pending_order.retain(|t| pending.contains_key(t));
            }
            while self.pending.len() >= PENDING_TRACES {
                let Some(oldest) = self.pending_order.pop_front() else {
                    break;
                };
                if self.pending.remove(&oldest).is_some() {
                    self.pending_dropped += 1;
                }
            }
            self.pending_order.push_back(trace);
        }
        let entry = self.pending.entry(trace).or_insert_with(|| Pending {
            service: r.service.into(),
            time_ns: r.time_ns,
            attributes: Vec::new(),
        });
        for &(k, v) in r.attributes {
            if entry.attributes.len() >= PENDING_PER_TRACE {
                break;
            }
            if !v.is_empty() && v.len() <= MAX_VALUE_BYTES && !self.skip_exact.contains(k) {
                entry.attributes.push((k.into(), v.into()));
            }
        }
    }

    fn release(&mut self, trace: TraceId, user: u64) {
        let Some(p) = self.pending.remove(&trace) else {
            return;
        };
        for (k, v) in &p.attributes {
            self.count(&p.service, k, v, user, Some(trace), p.time_ns);
        }
    }

    fn remember_trace(&mut self, trace: TraceId, user: u64) {
        if self.trace_users.insert(trace, user).is_none() {
            self.trace_order.push_back(trace);
            if self.trace_order.len() > TRACE_USERS
                && let Some(old) = self.trace_order.pop_front()
            {
                self.trace_users.remove(&old);
            }
        }
    }

    fn remember_user(&mut self, hash: u64, name: &str) {
        let fp = user_fingerprint(hash) as u32;
        if self.user_names.len() < USER_NAMES && !self.user_names.contains_key(&fp) {
            self.user_names.insert(fp, name.into());
        }
    }

    /// Records still waiting for a user are given up (end of a `discover` run).
    pub fn finish(&mut self) {
        self.pending_dropped += self.pending.len() as u64;
        self.pending.clear();
        self.pending_order.clear();
    }

    /// Keys currently tracked, all services together.
    pub fn key_count(&self) -> usize {
        self.keys
    }

    /// Memory held, roughly: every key's state plus the waiting buffer and the name caches.
    pub fn heap_bytes(&self) -> usize {
        let keys: usize = self
            .services
            .iter()
            .map(|(s, keys)| {
                s.len()
                    + 64
                    + keys
                        .iter()
                        .map(|(k, stats)| k.len() + 48 + stats.heap_bytes())
                        .sum::<usize>()
            })
            .sum();
        let pending: usize = self
            .pending
            .values()
            .map(|p| {
                96 + p.service.len()
                    + p.attributes
                        .iter()
                        .map(|(k, v)| 32 + k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        keys + pending + self.trace_users.len() * 48 + self.user_names.len() * 48
    }
}

/// Higher is more worth keeping: shared identities first, then keys with many users.
fn usefulness(s: &KeyStats) -> u64 {
    let shared = if s.shared_identity > 0 { 1 << 40 } else { 0 };
    shared + s.users.count() * 16 + s.requests.min(10_000)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
