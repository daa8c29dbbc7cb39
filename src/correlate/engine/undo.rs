//! The per-batch undo log: what each batch changed in the engine, kept until its commit
//! succeeds, so that a failed commit undoes every uncommitted batch, newest first, and each
//! retry is judged again — instead of reloading the engine from the store, whose cost grows
//! with the store.
//!
//! Invariants:
//! - entries are appended in the order the changes are made and undone in reverse, so a batch
//!   judged on top of an uncommitted one is undone with it, back to the state before both;
//! - recorded is what a later judgement or the store depends on: instances and their users
//!   (new, dropped to make room, evicted), a finding linked to an instance, findings (new,
//!   grown, expired), connections' findings, process scopes, observations waiting for their trace's user;
//! - not recorded, because a retry sets them again and they only move one way: a known user's
//!   times and intervals, a finding's `last_seen`, traces' users; findings the failed commit
//!   would have written are written again with the next one;
//! - a known binding costs nothing on the success path: no entry, no allocation;
//! - the log is off unless the engine's commits are acknowledged (the pipeline turns it on),
//!   and it is emptied by every successful commit, so it holds at most one group's changes.

use super::{Engine, FindingNews, FindingRecord, InstanceKey, InstanceState};
use crate::correlate::attribution::Parked;
use crate::correlate::finding::Growth;
use crate::normalize::TraceId;

/// One change, with what it takes to reverse it.
pub(super) enum Undo {
    /// An instance as it was before the change; `None`: it was not tracked.
    Instance(InstanceKey, Option<InstanceState>),
    /// An instance's finding link as it was before.
    Link(InstanceKey, Option<Box<str>>),
    FindingAdded(String),
    /// Grown by this `absorb` (its lengths before).
    FindingGrown(String, Growth),
    Delivery((u32, Box<str>)),
    /// Deleted past the findings retention, with the connections it was about.
    FindingExpired(Box<FindingRecord>, Vec<(u32, Box<str>)>),
    /// A process scope first interned by the batch (its index).
    Scope(u32),
    /// Parked by the batch: `seq` waits on this trace.
    Parked(TraceId, u64),
    /// Settled by the batch after waiting (released, expired or pushed out): it waits again.
    Settled(Parked),
    /// Unreadable waiting rows whose deletion the batch carried.
    Unreadable(Vec<u64>),
    /// Findings judged at start-up that the batch's commit carried.
    Rejudged(Vec<(FindingRecord, FindingNews)>),
}

/// A position in the log: everything recorded after it belongs to later batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct UndoMark(u64);

#[derive(Default)]
pub(super) struct UndoLog {
    entries: Vec<Undo>,
    /// Entries dropped as committed before `entries[0]`.
    base: u64,
    on: bool,
}

impl UndoLog {
    pub(super) fn push(&mut self, undo: Undo) {
        if self.on {
            self.entries.push(undo);
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.on
    }
}

impl Engine {
    /// Keep an undo log from now on (the pipeline, whose commits can fail, turns it on).
    pub fn keep_undo_log(&mut self) {
        self.undo.on = true;
    }

    /// Where the log stands: pass it to [`Self::committed`] or [`Self::undo_since`].
    pub fn undo_mark(&self) -> UndoMark {
        UndoMark(self.undo.base + self.undo.entries.len() as u64)
    }

    /// Everything up to `mark` is durable: forget how to undo it.
    pub fn committed(&mut self, mark: UndoMark) {
        let n = mark.0.saturating_sub(self.undo.base) as usize;
        let n = n.min(self.undo.entries.len());
        self.undo.entries.drain(..n);
        self.undo.base += n as u64;
    }

    /// Undo every change made after `mark`, newest first. `failed`: the effects whose commit
    /// failed; findings they carried are written again with the next commit.
    pub fn undo_since(&mut self, mark: UndoMark, failed_findings: &[String]) {
        let keep = mark.0.saturating_sub(self.undo.base) as usize;
        while self.undo.entries.len() > keep {
            let Some(entry) = self.undo.entries.pop() else {
                break;
            };
            self.reverse(entry);
        }
        for id in failed_findings {
            if self.findings.contains_key(id) && !self.dirty_findings.contains(id) {
                self.dirty_findings.push(id.clone());
            }
        }
    }

    fn reverse(&mut self, entry: Undo) {
        match entry {
            Undo::Instance(key, None) => {
                if let Some(slot) = self.instances.find(key.as_ref()) {
                    self.instances.remove(slot, false);
                    self.counters[key.watch as usize].tracked.dec();
                }
            }
            Undo::Instance(key, Some(state)) => {
                if self.instances.put(key.as_ref(), state) {
                    self.counters[key.watch as usize].tracked.inc();
                }
            }
            Undo::Link(key, before) => {
                if let Some(slot) = self.instances.find(key.as_ref()) {
                    self.instances.set_finding(slot, before);
                }
            }
            Undo::FindingAdded(id) => {
                self.findings.remove(&id);
                self.dirty_findings.retain(|d| *d != id);
            }
            Undo::FindingGrown(id, growth) => {
                let severity = growth
                    .escalated
                    .then(|| self.findings.get(&id))
                    .flatten()
                    .and_then(|r| self.watch_index(&r.finding.watch))
                    .map(|w| self.watches[w as usize].severity.as_str().to_owned());
                if let Some(record) = self.findings.get_mut(&id) {
                    record.shrink(&growth, severity.as_deref());
                }
            }
            Undo::Delivery(key) => {
                self.deliveries.remove(&key);
            }
            Undo::FindingExpired(record, connections) => {
                for key in connections {
                    self.deliveries.insert(key, record.finding.id.clone());
                }
                self.findings.insert(record.finding.id.clone(), *record);
            }
            Undo::Scope(i) => self.unwritten_scopes.push(i),
            Undo::Parked(trace, seq) => self.pending.unpark(&trace, seq),
            // Settled again at the next tick (its trace's user, if learned, is still known).
            Undo::Settled(parked) => self.restored_overflow.push(parked),
            Undo::Unreadable(mut seqs) => self.unreadable_pending.append(&mut seqs),
            Undo::Rejudged(mut rejudged) => self.rejudged.append(&mut rejudged),
        }
    }
}
