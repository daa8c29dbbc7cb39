//! The bounds that keep engine state flat: the global cap on tracked instances and per-watch
//! retention, with their metrics.

use super::undo::Undo;
use super::{DELIVERY_WATCH, Effects, Engine, EvictedInstance, InstanceKey};
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

    pub(super) fn evicted_row(&self, key: &InstanceKey) -> EvictedInstance {
        EvictedInstance {
            watch: self.watches[key.watch as usize].name.clone(),
            scope_key: self.scopes[key.scope as usize].scope_key.clone(),
            instance: key.id.to_string(),
        }
    }

    pub(super) fn remove_instance(&mut self, key: &InstanceKey, reason: &str, fx: &mut Effects) {
        if let Some(state) = self.instances.remove(key) {
            self.undo.push(Undo::Instance(key.clone(), Some(state)));
            self.counters[key.watch as usize].tracked.dec();
            let name = self.watches[key.watch as usize].name.clone();
            self.count_evicted(&name, reason);
            fx.evicted.push(self.evicted_row(key));
        }
    }

    /// Over the global cap: drop the least recently seen tenth (at least one), so that the
    /// scan is paid once per many inserts.
    pub(super) fn evict_least_recent(&mut self, fx: &mut Effects) {
        let n = (self.max_instances / 10).max(1);
        let mut ages: Vec<(u64, InstanceKey)> = self
            .instances
            .iter()
            .map(|(k, s)| (s.touched_s, k.clone()))
            .collect();
        if ages.len() > n {
            ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
            ages.truncate(n);
        }
        for (_, key) in ages {
            self.remove_instance(&key, "capacity", fx);
        }
    }

    pub(super) fn sweep_retention(&mut self, now_s: u64, fx: &mut Effects) {
        let expired: Vec<InstanceKey> = self
            .instances
            .iter()
            .filter(|(k, s)| {
                now_s.saturating_sub(s.touched_s)
                    > self.watches[k.watch as usize].retention.as_secs()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove_instance(&key, "retention", fx);
        }
    }
}
