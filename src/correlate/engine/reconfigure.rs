//! A reload's new watch set, applied on the engine thread (it arrives as a message on the
//! engine's own path, never through a lock; see [`crate::reload`]).
//!
//! Watches are laid out by slot: a watch keeps its index for as long as its name is configured,
//! a removed watch's index stays taken (and is revived if the name comes back), and a new watch
//! takes the next free index. So an observation normalized just before the reload, which names
//! its watch by index, is judged by the same watch or dropped, never by another one.
//!
//! What is kept: every finding (they are history); the instances, bindings and evidence of a
//! watch whose `attribute`, `scope` and `boundary` are unchanged (its policy, retention, severity,
//! `expected` and `allow_instances` apply from the next observation; recorded findings keep what
//! they were raised under). A watch whose attribute, scope or boundary changed, or that was
//! removed, forgets its instances (counted in `crosstalk_evicted_total{reason="reload"}` and
//! deleted from the store with the next commit) and its evidence: its ids now mean something
//! else, or nothing.

use serde::Serialize;

use super::{Effects, Engine, EvictedInstance, WatchCounters, watch_info};
use crate::config::Watch;
use crate::telemetry::metrics::WatchLabels;

/// What a reload did to the watches, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed, keeping their instances (attribute, scope and boundary the same).
    pub changed: Vec<String>,
    /// Changed in what identifies an instance: their instances were forgotten.
    pub reset: Vec<String>,
    pub unchanged: Vec<String>,
}

impl Engine {
    /// Judge by `slots` from now on (index = slot; `None` = removed; never shorter than the
    /// current table). Forgotten instances go to the store through `fx`.
    pub fn reconfigure(&mut self, slots: &[Option<Watch>], fx: &mut Effects) -> WatchChanges {
        let (changes, forget) = self.compare(slots);
        self.forget_instances(&forget, fx);
        self.take_slots(slots);
        let infos = slots.iter().map(|s| s.as_ref().map(watch_info)).collect();
        self.evidence.lock().reconfigure(infos, &forget);
        self.update_tracked_gauges();
        changes
    }

    /// Keep findings for `retention` from now on (`storage.findings_retention`): the next
    /// retention sweep reads it, so a shorter one deletes what it no longer keeps there.
    pub fn set_findings_retention(&mut self, retention: std::time::Duration) {
        self.findings_retention_ns = u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The bindings `slots` would forget, for the store to delete before the engine takes them.
    pub fn forgotten_by(&self, slots: &[Option<Watch>]) -> Vec<EvictedInstance> {
        let (_, forget) = self.compare(slots);
        (self.instances.keys())
            .filter(|k| forget.contains(&(k.watch as usize)))
            .map(|k| self.evicted_row(k))
            .collect()
    }

    /// What `slots` changes, and the slots whose instances it forgets.
    fn compare(&self, slots: &[Option<Watch>]) -> (WatchChanges, Vec<usize>) {
        let mut changes = WatchChanges::default();
        let mut forget: Vec<usize> = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let old = self.watches.get(i).filter(|_| self.live[i]);
            match (old, slot) {
                (None, None) => {}
                (Some(old), None) => {
                    changes.removed.push(old.name.clone());
                    forget.push(i);
                }
                (None, Some(new)) => changes.added.push(new.name.clone()),
                (Some(old), Some(new)) if same_identity(old, new) => {
                    let list = if old == new {
                        &mut changes.unchanged
                    } else {
                        &mut changes.changed
                    };
                    list.push(new.name.clone());
                }
                (Some(_), Some(new)) => {
                    changes.reset.push(new.name.clone());
                    forget.push(i);
                }
            }
        }
        (changes, forget)
    }

    /// Drop every tracked instance of the watches at `slots`.
    fn forget_instances(&mut self, slots: &[usize], fx: &mut Effects) {
        if slots.is_empty() {
            return;
        }
        let gone: Vec<u32> = (self.instances.iter())
            .filter(|(_, k)| slots.contains(&(k.watch as usize)))
            .map(|(slot, _)| slot)
            .collect();
        for slot in gone {
            self.remove_instance(slot, "reload", fx);
        }
    }

    /// Install the new table, with counters for new watches and no gauge for removed ones.
    fn take_slots(&mut self, slots: &[Option<Watch>]) {
        for (i, slot) in slots.iter().enumerate() {
            match slot {
                Some(w) if i < self.watches.len() => {
                    self.watches[i] = w.clone();
                    self.live[i] = true;
                }
                Some(w) => {
                    self.counters.push(WatchCounters::of(&self.metrics, w));
                    self.watches.push(w.clone());
                    self.live.push(true);
                }
                None if i < self.watches.len() && self.live[i] => {
                    self.live[i] = false;
                    let label = WatchLabels {
                        watch: self.watches[i].name.clone(),
                    };
                    // An expected watch removed must not page as never observed.
                    self.metrics.watch_expected.remove(&label);
                }
                None => {}
            }
        }
        let services: std::collections::BTreeSet<String> =
            self.scopes.iter().map(|r| r.service().to_owned()).collect();
        for service in services {
            self.zero_series(&service);
        }
    }
}

/// Whether an instance id of `old` still names the same thing under `new`.
fn same_identity(old: &Watch, new: &Watch) -> bool {
    old.attribute == new.attribute && old.scope == new.scope && old.boundary == new.boundary
}
