//! Engine state over time: restoring it from the store, and the bounds that keep it flat
//! (the global cap, per-watch retention) with their metrics.

use std::collections::HashMap;
use std::sync::Arc;

use super::{DELIVERY_WATCH, Effects, Engine, EvictedInstance, InstanceKey, Restored, Seed, Use};
use crate::config::Policy;
use crate::correlate::finding::FindingKind;
use crate::normalize::{Resource, Signal, SpanId, TraceId};
use crate::sinks::metrics::{EvictLabels, FindingLabels, WatchServiceLabels};

impl Engine {
    /// Load what the store remembers. Bindings of watches no longer configured are ignored.
    pub fn restore(&mut self, restored: Restored) {
        for (key, identity) in restored.scopes {
            if !self.scope_index.contains_key(&key) {
                let r = Resource::from_identity(identity, None, None);
                self.scope_index.insert(key, self.scopes.len() as u32);
                self.scopes.push(Arc::new(r));
            }
        }
        let now_s = crate::correlate::finding::now_ns() / 1_000_000_000;
        for b in restored.bindings {
            let Some(watch) = self.watch_index(&b.watch) else {
                continue;
            };
            let scope_of = |key: &str, index: &HashMap<String, u32>| index.get(key).copied();
            let Some(scope) = scope_of(&b.scope_key, &self.scope_index) else {
                continue;
            };
            let evidence_scope =
                scope_of(&b.evidence_scope_key, &self.scope_index).unwrap_or(scope);
            let key = InstanceKey {
                watch,
                scope,
                id: b.instance.as_str().into(),
            };
            let concurrent = self.watches[watch as usize].policy == Policy::Concurrent;
            let state = self.instances.entry(key).or_default();
            state.touched_s = now_s;
            state.uses.push(Use {
                user: b.user.as_str().into(),
                tenant: b.tenant.as_deref().map(Arc::from),
                first_ns: b.first_ns,
                last_ns: b.last_ns,
                intervals: if concurrent {
                    vec![(b.last_start_ns, b.last_end_ns)]
                } else {
                    Vec::new()
                },
                first: Seed {
                    time_ns: b.first_ns,
                    trace_id: b.trace_id.as_deref().and_then(TraceId::from_hex),
                    span_id: b.span_id.as_deref().and_then(SpanId::from_hex),
                    signal: match b.signal.as_str() {
                        "log" => Signal::Log,
                        "event" => Signal::Event,
                        _ => Signal::Span,
                    },
                    scope: evidence_scope,
                },
            });
        }
        for record in restored.findings {
            let f = &record.finding;
            let scope = self
                .scope_index
                .get(&record.scope_key)
                .copied()
                .unwrap_or(0);
            if f.kind == FindingKind::MisdeliveredEvent {
                self.deliveries
                    .insert((scope, f.instance.as_str().into()), f.id.clone());
            } else if let Some(watch) = self.watch_index(&f.watch) {
                let key = InstanceKey {
                    watch,
                    scope,
                    id: f.instance.as_str().into(),
                };
                if let Some(state) = self.instances.get_mut(&key) {
                    state.finding = Some(f.id.as_str().into());
                }
            }
            self.findings.insert(f.id.clone(), record);
        }
        self.update_tracked_gauges();
    }

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
        let kinds = self
            .watches
            .iter()
            .map(|w| (FindingKind::SharedInstance, w.name.as_str()))
            .chain([(FindingKind::MisdeliveredEvent, DELIVERY_WATCH)]);
        for (kind, watch) in kinds {
            let _ = self.metrics.findings.get_or_create(&FindingLabels {
                r#type: kind.as_str().into(),
                watch: watch.into(),
                service: service.into(),
            });
            let _ = self
                .metrics
                .affected_users
                .get_or_create(&WatchServiceLabels {
                    watch: watch.into(),
                    service: service.into(),
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
        if self.instances.remove(key).is_some() {
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
