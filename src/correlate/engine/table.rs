//! The tracked instances: a hash index of 4-byte slots over a slab of 80-byte records
//! (`record.rs`), and what few instances need beyond their record kept aside by slot.
//!
//! A slot is stable while its instance is tracked (removing one frees its slot, never moves
//! another), so callers may hold a slot between lookups as long as they remove nothing. The
//! slab grows by fixed chunks: no doubling slack, and no copy of a million records to grow.
//!
//! Uses are numbered as one list: the record's first use is 0, the ones kept aside follow in
//! order; dropping one moves the last into its place (as `Vec::swap_remove`).

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;

use super::record::{Record, UseRef};
use super::{InstanceRef, InstanceState, Use};
use crate::correlate::FastMap;

/// Records per slab chunk (320 KiB).
const CHUNK: usize = 4096;

/// What an instance keeps beyond its record.
#[derive(Debug, Default)]
struct Extra {
    /// Users after the first, in order.
    more: Vec<Use>,
    /// The first use's recent intervals (`concurrent` watches).
    intervals: Vec<(u64, u64)>,
    /// The finding this instance is part of.
    finding: Option<Box<str>>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.more.is_empty() && self.intervals.is_empty() && self.finding.is_none()
    }
}

/// See the module doc.
#[derive(Default)]
pub(super) struct InstanceTable {
    index: HashTable<u32>,
    chunks: Vec<Vec<Record>>,
    free: Vec<u32>,
    extras: FastMap<u32, Extra>,
    hasher: RandomState,
    len: usize,
}

#[inline]
fn hash_key(hasher: &RandomState, watch: u16, scope: u32, id: &[u8]) -> u64 {
    hasher.hash_one((watch, scope, id))
}

impl InstanceTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Instances the index holds room for without growing.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Room for `more` instances, so that the index never holds its old and grown self at once.
    pub fn reserve(&mut self, more: usize) {
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index.reserve(more, |&slot| {
            let r = &chunks[slot as usize / CHUNK][slot as usize % CHUNK];
            hash_key(hasher, r.watch(), r.scope(), r.id_bytes())
        });
    }

    #[inline]
    fn record(&self, slot: u32) -> &Record {
        &self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    #[inline]
    fn record_mut(&mut self, slot: u32) -> &mut Record {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    #[inline]
    pub fn find(&self, key: InstanceRef<'_>) -> Option<u32> {
        let hash = hash_key(&self.hasher, key.watch, key.scope, key.id.as_bytes());
        (self.index)
            .find(hash, |&slot| self.record(slot).matches(key))
            .copied()
    }

    /// Every tracked instance's slot.
    pub fn slots(&self) -> impl Iterator<Item = u32> {
        let records = self.chunks.iter().flatten().enumerate();
        (records.filter(|(_, r)| !r.is_vacant())).map(|(slot, _)| slot as u32)
    }

    /// Every tracked instance, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (u32, InstanceRef<'_>)> {
        self.slots().map(|slot| (slot, self.key(slot)))
    }

    pub fn keys(&self) -> impl Iterator<Item = InstanceRef<'_>> {
        self.iter().map(|(_, k)| k)
    }

    pub fn is_tracked(&self, slot: u32) -> bool {
        (self.chunks.get(slot as usize / CHUNK))
            .and_then(|c| c.get(slot as usize % CHUNK))
            .is_some_and(|r| !r.is_vacant())
    }

    pub fn key(&self, slot: u32) -> InstanceRef<'_> {
        self.record(slot).key()
    }

    #[inline]
    pub fn touched_s(&self, slot: u32) -> u64 {
        self.record(slot).touched_s()
    }

    #[inline]
    pub fn set_touched_s(&mut self, slot: u32, s: u64) {
        self.record_mut(slot).set_touched_s(s);
    }

    #[inline]
    fn extra(&self, slot: u32) -> Option<&Extra> {
        if !self.record(slot).has_extra() {
            return None;
        }
        self.extras.get(&slot)
    }

    fn extra_mut(&mut self, slot: u32) -> &mut Extra {
        self.record_mut(slot).set_has_extra(true);
        self.extras.entry(slot).or_default()
    }

    /// Forget an emptied extra, so that an instance back to one plain use costs its record only.
    fn tidy(&mut self, slot: u32) {
        if self.extras.get(&slot).is_some_and(Extra::is_empty) {
            self.extras.remove(&slot);
            self.record_mut(slot).set_has_extra(false);
        }
    }

    #[inline]
    pub fn finding(&self, slot: u32) -> Option<&str> {
        self.extra(slot).and_then(|e| e.finding.as_deref())
    }

    /// Link the instance to a finding (or unlink it); the link it had.
    pub fn set_finding(&mut self, slot: u32, finding: Option<Box<str>>) -> Option<Box<str>> {
        let before = std::mem::replace(&mut self.extra_mut(slot).finding, finding);
        self.tidy(slot);
        before
    }

    /// Distinct users kept.
    #[inline]
    pub fn users(&self, slot: u32) -> usize {
        1 + self.extra(slot).map_or(0, |e| e.more.len())
    }

    pub fn uses(&self, slot: u32) -> impl Iterator<Item = UseRef<'_>> {
        let extra = self.extra(slot);
        let intervals = extra.map_or(&[][..], |e| &e.intervals);
        let more = extra
            .into_iter()
            .flat_map(|e| e.more.iter().map(Use::as_ref));
        std::iter::once(self.record(slot).first_use(intervals)).chain(more)
    }

    /// The number of `user`'s use, if it has one (compared as bytes: nothing decoded).
    #[inline]
    pub fn use_of(&self, slot: u32, user: &str) -> Option<usize> {
        if self.record(slot).first_user_is(user) {
            return Some(0);
        }
        let more = &self.extra(slot)?.more;
        more.iter().position(|u| *u.user == *user).map(|i| i + 1)
    }

    /// Use `i`, copied.
    pub fn use_at(&self, slot: u32, i: usize) -> Option<Use> {
        self.uses(slot).nth(i).map(UseRef::to_use)
    }

    /// The uses whose principal (user, or tenant with `by_tenant`) differs from `mine` and
    /// that `conflicting` says conflict, copied. Plain bytes compared for the first use, so
    /// that an instance with one known user decodes and copies nothing.
    pub fn conflicts(
        &self,
        slot: u32,
        (by_tenant, mine): (bool, Option<&str>),
        conflicting: impl Fn(&UseRef<'_>) -> bool,
    ) -> Vec<Use> {
        let mine = mine.map(str::as_bytes);
        let mut out = Vec::new();
        let record = self.record(slot);
        let extra = self.extra(slot);
        if record.first_principal(by_tenant) != mine {
            let first = record.first_use(extra.map_or(&[][..], |e| &e.intervals));
            if conflicting(&first) {
                out.push(first.to_use());
            }
        }
        for u in extra.iter().flat_map(|e| &e.more) {
            let principal = if by_tenant {
                u.tenant.as_deref()
            } else {
                Some(&*u.user)
            };
            if principal.map(str::as_bytes) != mine && conflicting(&u.as_ref()) {
                out.push(u.clone());
            }
        }
        out
    }

    /// Use `i` seen again over [start, end]; its intervals with `interval`, its tenant learnt.
    pub fn widen(&mut self, slot: u32, i: usize, (start, end): (u64, u64), tenant: Option<&str>) {
        if i == 0 {
            let record = self.record_mut(slot);
            record.widen_first(start, end);
            if let Some(t) = tenant.filter(|_| record.first_tenant_is_none()) {
                record.set_first_tenant(t);
            }
            return;
        }
        if let Some(u) = (self.extras.get_mut(&slot)).and_then(|e| e.more.get_mut(i - 1)) {
            u.first_ns = u.first_ns.min(start);
            u.last_ns = u.last_ns.max(end);
            if u.tenant.is_none() {
                u.tenant = tenant.map(Into::into);
            }
        }
    }

    /// Use `i`'s intervals, to change.
    pub fn intervals_mut(&mut self, slot: u32, i: usize) -> Option<&mut Vec<(u64, u64)>> {
        let extra = self.extra_mut(slot);
        match i {
            0 => Some(&mut extra.intervals),
            _ => extra.more.get_mut(i - 1).map(|u| &mut u.intervals),
        }
    }

    /// When use `i` was last seen.
    pub fn last_ns(&self, slot: u32, i: usize) -> u64 {
        match i {
            0 => self.record(slot).first_last_ns(),
            _ => self
                .extra(slot)
                .and_then(|e| e.more.get(i - 1))
                .map_or(0, |u| u.last_ns),
        }
    }

    /// Add a use after the others; its number.
    pub fn push_use(&mut self, slot: u32, u: UseRef<'_>) -> usize {
        let more = &mut self.extra_mut(slot).more;
        // Most instances that get a second user never get a third.
        if more.is_empty() {
            more.reserve_exact(1);
        }
        more.push(u.to_use());
        more.len()
    }

    /// Put `u` in use `i`'s place.
    pub fn replace_use(&mut self, slot: u32, i: usize, u: UseRef<'_>) {
        if i == 0 {
            self.record_mut(slot).set_first_use(u);
            self.extra_mut(slot).intervals = u.intervals.to_vec();
            self.tidy(slot);
        } else if let Some(place) = self
            .extras
            .get_mut(&slot)
            .and_then(|e| e.more.get_mut(i - 1))
        {
            *place = u.to_use();
        }
    }

    /// Drop use `i`, the last taking its place; an instance keeps at least one use.
    pub fn swap_remove_use(&mut self, slot: u32, i: usize) {
        let Some(last) = self.extras.get_mut(&slot).and_then(|e| e.more.pop()) else {
            return;
        };
        if i == 0 {
            self.record_mut(slot).set_first_use(last.as_ref());
            if let Some(extra) = self.extras.get_mut(&slot) {
                extra.intervals = last.intervals;
            }
        } else if let Some(place) = (self.extras.get_mut(&slot)).and_then(|e| e.more.get_mut(i - 1))
        {
            *place = last;
        }
        self.tidy(slot);
    }

    /// Track a new instance whose first use is `first`; its slot. `key` must not be tracked.
    pub fn insert(&mut self, key: InstanceRef<'_>, first: UseRef<'_>, touched_s: u64) -> u32 {
        let record = Record::new(key, first, touched_s);
        let slot = match self.free.pop() {
            Some(slot) => {
                *self.record_mut(slot) = record;
                slot
            }
            None => {
                match self.chunks.last_mut() {
                    Some(chunk) if chunk.len() < CHUNK => chunk.push(record),
                    _ => {
                        let mut chunk = Vec::with_capacity(CHUNK);
                        chunk.push(record);
                        self.chunks.push(chunk);
                    }
                }
                let last = self.chunks.last().map_or(0, Vec::len);
                ((self.chunks.len() - 1) * CHUNK + last - 1) as u32
            }
        };
        if !first.intervals.is_empty() {
            self.extra_mut(slot).intervals = first.intervals.to_vec();
        }
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        let hash = hash_key(hasher, key.watch, key.scope, key.id.as_bytes());
        self.index.insert_unique(hash, slot, |&s| {
            let r = &chunks[s as usize / CHUNK][s as usize % CHUNK];
            hash_key(hasher, r.watch(), r.scope(), r.id_bytes())
        });
        self.len += 1;
        slot
    }

    /// Stop tracking the instance at `slot`; what it was, if `keep`.
    pub fn remove(&mut self, slot: u32, keep: bool) -> Option<InstanceState> {
        if !self.is_tracked(slot) {
            return None;
        }
        let state = keep.then(|| self.state(slot));
        let r = self.record(slot);
        let hash = hash_key(&self.hasher, r.watch(), r.scope(), r.id_bytes());
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        let removed = std::mem::replace(self.record_mut(slot), Record::vacant());
        if removed.has_extra() {
            self.extras.remove(&slot);
        }
        self.free.push(slot);
        self.len -= 1;
        state
    }

    /// The instance at `slot` as a plain value (to undo a change to it, or to test).
    pub fn state(&self, slot: u32) -> InstanceState {
        InstanceState {
            uses: self.uses(slot).map(UseRef::to_use).collect(),
            finding: self.finding(slot).map(Into::into),
            touched_s: self.touched_s(slot),
        }
    }

    /// Track `key` as `state` again (undo), replacing what it is now; true if it was not
    /// tracked. A state without a use (never made) changes nothing.
    pub fn put(&mut self, key: InstanceRef<'_>, state: InstanceState) -> bool {
        let mut uses = state.uses.into_iter();
        let Some(first) = uses.next() else {
            return false;
        };
        let was = self.find(key);
        if let Some(slot) = was {
            self.remove(slot, false);
        }
        let slot = self.insert(key, first.as_ref(), state.touched_s);
        let more: Vec<Use> = uses.collect();
        if !more.is_empty() || state.finding.is_some() {
            let extra = self.extra_mut(slot);
            extra.more = more;
            extra.finding = state.finding;
        }
        was.is_none()
    }
}
