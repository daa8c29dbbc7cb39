//! Per (service, attribute key) statistics, bounded: distinct values and users (sketches beyond a
//! few dozen), a fingerprint table of which user each value first served, and a short list of
//! the values seen with two or more users (the evidence).
//!
//! Bounds: the fingerprint table doubles from [`TABLE_MIN`] up to [`TABLE_MAX`] slots (8 bytes
//! each) while the caller's byte budget allows; when it can grow no more, values it has no room
//! for are counted as untracked. At most [`MAX_SHARED`] shared values keep evidence.

use super::shape::{Shape, classify};
use crate::correlate::distinct::{DistinctCounter, item_hash};
use crate::normalize::TraceId;

pub const TABLE_MIN: usize = 64;
pub const TABLE_MAX: usize = 32 * 1024;
pub const MAX_SHARED: usize = 8;
/// Example users and evidence traces kept per shared value.
pub const MAX_EXAMPLES: usize = 3;
/// Longest value text kept as an example.
pub const MAX_VALUE_TEXT: usize = 80;

/// The low 24 bits of a slot: the fingerprint of the value's first user, or [`SHARED`].
const USER_BITS: u64 = 0xFF_FFFF;
const SHARED: u64 = USER_BITS;

/// One value seen with two or more users, with the evidence for it.
#[derive(Debug, Clone)]
pub struct SharedValue {
    value_hash: u64,
    pub value: Box<str>,
    pub shape: Shape,
    pub users: DistinctCounter<10, 64>,
    /// User fingerprints (24 bits) of example users, resolved to names at report time.
    pub example_users: Vec<u32>,
    pub traces: Vec<TraceId>,
    pub first_shared_ns: u64,
    pub last_seen_ns: u64,
}

/// Statistics of one key.
#[derive(Debug, Clone)]
pub struct KeyStats {
    pub values: DistinctCounter<12, 256>,
    pub users: DistinctCounter<12, 256>,
    pub requests: u64,
    /// Distinct values by shape (counted when a value enters the table or, untracked, by sample).
    pub shapes: [u32; Shape::ALL.len()],
    /// Open addressing: value fingerprint (high 40 bits, never 0) | first user fingerprint.
    table: Vec<u64>,
    pub tracked: u64,
    pub untracked: u64,
    pub shared_identity: u64,
    pub shared_other: u64,
    pub shared: Vec<SharedValue>,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// One observation of a key, as [`KeyStats::observe`] needs it.
pub struct Seen<'a> {
    pub value: &'a str,
    pub user_hash: u64,
    pub trace: Option<TraceId>,
    pub time_ns: u64,
}

impl KeyStats {
    pub fn new(time_ns: u64) -> Self {
        KeyStats {
            values: DistinctCounter::new(),
            users: DistinctCounter::new(),
            requests: 0,
            shapes: [0; Shape::ALL.len()],
            table: Vec::new(),
            tracked: 0,
            untracked: 0,
            shared_identity: 0,
            shared_other: 0,
            shared: Vec::new(),
            first_seen_ns: time_ns,
            last_seen_ns: time_ns,
        }
    }

    /// Count one use of `seen.value` by a user. `budget` is the table bytes still free across
    /// all keys; growing the table takes from it. `track` is false for keys whose verdict needs
    /// no per-value users (known shared), which then hold no table at all.
    pub fn observe(&mut self, seen: &Seen<'_>, budget: &mut usize, track: bool) {
        let value_hash = item_hash(seen.value.as_bytes());
        self.requests += 1;
        self.values.insert_hash(value_hash);
        self.users.insert_hash(seen.user_hash);
        self.first_seen_ns = self.first_seen_ns.min(seen.time_ns);
        self.last_seen_ns = self.last_seen_ns.max(seen.time_ns);
        if !track {
            // Known-shared keys need no per-value detail: a first sample of shapes suffices.
            if self.requests <= 64 {
                self.shapes[classify(seen.value).index()] += 1;
            }
            return;
        }
        let user_fp = user_fingerprint(seen.user_hash);
        let value_fp = (value_hash & !USER_BITS).max(USER_BITS + 1);
        match self.slot_of(value_fp, budget) {
            Slot::Found(i) => {
                let first = self.table[i] & USER_BITS;
                if first == SHARED {
                    self.shared_again(value_hash, seen, user_fp);
                } else if first != user_fp {
                    self.table[i] = value_fp | SHARED;
                    self.became_shared(value_hash, seen, first as u32, user_fp);
                }
            }
            Slot::Empty(i) => {
                self.table[i] = value_fp | user_fp;
                self.tracked += 1;
                self.shapes[classify(seen.value).index()] += 1;
            }
            Slot::Full => self.untracked += 1,
        }
    }

    fn became_shared(&mut self, value_hash: u64, seen: &Seen<'_>, first_user: u32, user_fp: u64) {
        let shape = classify(seen.value);
        if shape.is_identity() {
            self.shared_identity += 1;
        } else {
            self.shared_other += 1;
        }
        if self.shared.len() >= MAX_SHARED {
            return;
        }
        let mut users = DistinctCounter::new();
        users.insert_hash(u64::from(first_user));
        users.insert_hash(user_fp);
        self.shared.push(SharedValue {
            value_hash,
            value: truncate(seen.value),
            shape,
            users,
            example_users: vec![first_user, user_fp as u32],
            traces: seen.trace.into_iter().collect(),
            first_shared_ns: seen.time_ns,
            last_seen_ns: seen.time_ns,
        });
    }

    fn shared_again(&mut self, value_hash: u64, seen: &Seen<'_>, user_fp: u64) {
        let Some(sv) = self
            .shared
            .iter_mut()
            .find(|sv| sv.value_hash == value_hash)
        else {
            return;
        };
        sv.users.insert_hash(user_fp);
        sv.last_seen_ns = sv.last_seen_ns.max(seen.time_ns);
        if sv.example_users.len() < MAX_EXAMPLES && !sv.example_users.contains(&(user_fp as u32)) {
            sv.example_users.push(user_fp as u32);
        }
        if let Some(t) = seen.trace
            && sv.traces.len() < MAX_EXAMPLES
            && !sv.traces.contains(&t)
        {
            sv.traces.push(t);
        }
    }

    fn slot_of(&mut self, value_fp: u64, budget: &mut usize) -> Slot {
        if self.table.is_empty() || (self.tracked as usize + 1) * 4 > self.table.len() * 3 {
            self.grow(budget);
        }
        let len = self.table.len();
        if len == 0 {
            return Slot::Full;
        }
        let mut i = (value_fp >> 24) as usize & (len - 1);
        for _ in 0..len {
            let slot = self.table[i];
            if slot == 0 {
                // Past 3/4 full the table takes no new values: probes would grow long.
                if (self.tracked as usize + 1) * 4 > len * 3 {
                    return Slot::Full;
                }
                return Slot::Empty(i);
            }
            if slot & !USER_BITS == value_fp {
                return Slot::Found(i);
            }
            i = (i + 1) & (len - 1);
        }
        Slot::Full
    }

    fn grow(&mut self, budget: &mut usize) {
        let new_len = if self.table.is_empty() {
            TABLE_MIN
        } else {
            self.table.len() * 2
        };
        let extra = (new_len - self.table.len()) * 8;
        if new_len > TABLE_MAX || extra > *budget {
            return;
        }
        *budget -= extra;
        let old = std::mem::replace(&mut self.table, vec![0; new_len]);
        for slot in old.into_iter().filter(|&s| s != 0) {
            let mut i = ((slot & !USER_BITS) >> 24) as usize & (new_len - 1);
            while self.table[i] != 0 {
                i = (i + 1) & (new_len - 1);
            }
            self.table[i] = slot;
        }
    }

    /// Table bytes held (what was taken from the budget).
    pub fn table_bytes(&self) -> usize {
        self.table.len() * 8
    }

    /// Everything held, roughly, for the memory cap.
    pub fn heap_bytes(&self) -> usize {
        let shared: usize = self
            .shared
            .iter()
            .map(|s| {
                size_of::<SharedValue>() + s.value.len() + s.users.heap_bytes() + 3 * 4 + 3 * 16
            })
            .sum();
        size_of::<Self>()
            + self.values.heap_bytes()
            + self.users.heap_bytes()
            + self.table_bytes()
            + shared
    }
}

enum Slot {
    Found(usize),
    Empty(usize),
    Full,
}

/// 24 bits of a user's hash, never [`SHARED`] and never 0 (so a slot is never all zero).
pub fn user_fingerprint(user_hash: u64) -> u64 {
    let fp = (user_hash >> 40) & USER_BITS;
    fp.clamp(1, SHARED - 1)
}

fn truncate(value: &str) -> Box<str> {
    let mut end = value.len().min(MAX_VALUE_TEXT);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
}
