//! The bounds that keep engine state flat: the global cap on tracked instances and per-watch
//! retention, the findings retention, with their metrics.

use super::undo::Undo;
use super::{DELIVERY_WATCH, Effects, Engine, EvictedInstance, InstanceRef};
use crate::correlate::FastMap;
use crate::correlate::finding::FindingKind;
use crate::telemetry::metrics::{EvictLabels, FindingLabels, WatchServiceLabels};

impl Engine {
    pub(super) fn update_tracked_gauges(&self) {
        let mut per_watch = vec![0i64; self.watches.len()];
        for key in self.instances.keys() {
            per_watch[key.watch as usize] += 1;
        }
        for (c, n) in self.counters.iter().zip(per_watch) {
            c.tracked.set(n);
        }
    }

    /// Export the finding counters of a newly seen service at 0, so that its first finding is an
    /// increase Prometheus can see rather than a series born at 1.
    pub(super) fn zero_series(&self, service: &str) {
        let service = self.metrics.service_label(service);
        let kinds = (self.watches.iter().zip(&self.live))
            .filter(|(_, live)| **live)
            .map(|(w, _)| (FindingKind::SharedInstance, w.name.as_str()))
            .chain([(FindingKind::MisdeliveredEvent, DELIVERY_WATCH)]);
        for (kind, watch) in kinds {
            let _ = self.metrics.findings.get_or_create(&FindingLabels {
                r#type: kind.as_str().into(),
                watch: watch.into(),
                service: service.clone(),
            });
            let _ = self
                .metrics
                .affected_users
                .get_or_create(&WatchServiceLabels {
                    watch: watch.into(),
                    service: service.clone(),
                });
        }
    }

    pub(super) fn count_evicted(&self, watch: &str, reason: &str) {
        self.metrics
            .evicted
            .get_or_create(&EvictLabels {
                watch: watch.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub(super) fn evicted_row(&self, key: InstanceRef<'_>) -> EvictedInstance {
        EvictedInstance {
            watch: self.watches[key.watch as usize].name.clone(),
            scope_key: self.scopes[key.scope as usize].scope_key.clone(),
            instance: key.id.to_string(),
        }
    }

    /// Stop tracking the instance at `slot` (no other slot moves).
    pub(super) fn remove_instance(&mut self, slot: u32, reason: &str, fx: &mut Effects) {
        if !self.instances.is_tracked(slot) {
            return;
        }
        let key = self.instances.key(slot);
        let (watch, evicted, owned) = (key.watch, self.evicted_row(key), key.owned());
        let state = self.instances.remove(slot, self.undo.is_on());
        if let Some(state) = state {
            self.undo.push(Undo::Instance(owned, Some(state)));
        }
        self.counters[watch as usize].tracked.dec();
        let name = self.watches[watch as usize].name.clone();
        self.count_evicted(&name, reason);
        fx.evicted.push(evicted);
    }

    /// Over the global cap: drop the least recently seen tenth (at least one), so that the
    /// scan is paid once per many inserts.
    pub(super) fn evict_least_recent(&mut self, fx: &mut Effects) {
        let n = (self.max_instances / 10).max(1);
        let mut ages: Vec<(u64, u32)> = (self.instances.slots())
            .map(|slot| (self.instances.touched_s(slot), slot))
            .collect();
        if ages.len() > n {
            ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
            ages.truncate(n);
        }
        for (_, slot) in ages {
            self.remove_instance(slot, "capacity", fx);
        }
    }

    pub(super) fn sweep_retention(&mut self, now_s: u64, fx: &mut Effects) {
        let expired: Vec<u32> = (self.instances.iter())
            .filter(|&(slot, k)| {
                now_s.saturating_sub(self.instances.touched_s(slot))
                    > self.watches[k.watch as usize].retention.as_secs()
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in expired {
            self.remove_instance(slot, "retention", fx);
        }
    }

    /// Delete findings whose `last_seen` and detection are both older than the findings
    /// retention (detection too: a finding just raised from replayed old telemetry stays its
    /// full retention). The instances it is about go with it, so that their bindings leave the
    /// disk and the conflict is not judged again from them at the next start.
    pub(super) fn expire_findings(&mut self, now_ns: u64, fx: &mut Effects) {
        let horizon = now_ns.saturating_sub(self.findings_retention_ns);
        let expired: std::collections::HashSet<String> = (self.findings.iter())
            .filter(|(_, r)| r.last_seen_ns.max(r.detected_ns) < horizon)
            .map(|(id, _)| id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        // One pass over instances and connections, however many findings expire at once.
        let linked: Vec<u32> = (self.instances.slots())
            .filter(|&slot| (self.instances.finding(slot)).is_some_and(|f| expired.contains(f)))
            .collect();
        for slot in linked {
            self.remove_instance(slot, "retention", fx);
        }
        let mut connections: FastMap<String, Vec<(u32, Box<str>)>> = FastMap::default();
        self.deliveries.retain(|k, f| {
            let keep = !expired.contains(f);
            if !keep {
                connections.entry(f.clone()).or_default().push(k.clone());
            }
            keep
        });
        self.dirty_findings.retain(|d| !expired.contains(d));
        fx.findings.retain(|r| !expired.contains(&r.finding.id));
        fx.news.retain(|n| !expired.contains(&n.id));
        for id in expired {
            let Some(record) = self.findings.remove(&id) else {
                continue;
            };
            let connections = connections.remove(&id).unwrap_or_default();
            self.undo
                .push(Undo::FindingExpired(Box::new(record), connections));
            fx.expired_findings.push(id);
        }
    }
}
