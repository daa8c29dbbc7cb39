//! Engine state over time: restoring it from the store, and the bounds that keep it flat
//! (the global cap, per-watch retention) with their metrics.

use std::collections::HashMap;
use std::sync::Arc;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    DELIVERY_WATCH, Effects, Engine, EvictedInstance, InstanceKey, Received, Restored, Seed, Use,
};
use crate::config::Policy;
use crate::correlate::attribution::Parked;
use crate::correlate::finding::FindingKind;
use crate::normalize::{Delivery, Observation, Resource, Signal, SpanId, TraceId, WatchedId};
use crate::sinks::metrics::{EvictLabels, FindingLabels, WatchServiceLabels};

/// A waiting observation as the store keeps it. Watches are named, not numbered, so that a
/// restart with an edited config still reads it.
#[derive(Serialize, Deserialize)]
struct ParkedRow {
    signal: String,
    start_ns: u64,
    end_ns: u64,
    trace_id: String,
    span_id: Option<String>,
    identity: BTreeMap<String, String>,
    resource_user: Option<String>,
    resource_tenant: Option<String>,
    user: Option<String>,
    tenant: Option<String>,
    watched: Vec<(String, String)>,
    delivery: Option<[Option<String>; 5]>,
}

impl Engine {
    /// The store's row for a waiting observation.
    pub(super) fn parked_row(&self, obs: &Observation) -> String {
        let own = |v: &Option<Box<str>>| v.as_deref().map(str::to_owned);
        let row = ParkedRow {
            signal: obs.signal.as_str().into(),
            start_ns: obs.start_ns,
            end_ns: obs.end_ns,
            trace_id: obs.trace_id.map(|t| t.to_string()).unwrap_or_default(),
            span_id: obs.span_id.map(|s| s.to_string()),
            identity: obs.resource.identity.clone(),
            resource_user: own(&obs.resource.user),
            resource_tenant: own(&obs.resource.tenant),
            user: own(&obs.user),
            tenant: own(&obs.tenant),
            watched: obs
                .watched
                .iter()
                .map(|w| {
                    (
                        self.watches[w.watch as usize].name.clone(),
                        w.id.to_string(),
                    )
                })
                .collect(),
            delivery: obs.delivery.as_deref().map(|d| {
                [
                    own(&d.event),
                    own(&d.connection_id),
                    own(&d.connection_user),
                    own(&d.connection_tenant),
                    own(&d.run_id),
                ]
            }),
        };
        serde_json::to_string(&row).unwrap_or_default()
    }

    fn observation_of(&self, row: &str) -> Option<Observation> {
        let row: ParkedRow = serde_json::from_str(row).ok()?;
        let boxed = |v: Option<String>| v.map(String::into_boxed_str);
        let watched = row
            .watched
            .into_iter()
            .filter_map(|(name, id)| {
                Some(WatchedId {
                    watch: self.watch_index(&name)?,
                    id: id.into(),
                })
            })
            .collect();
        Some(Observation {
            signal: match row.signal.as_str() {
                "log" => Signal::Log,
                "event" => Signal::Event,
                _ => Signal::Span,
            },
            start_ns: row.start_ns,
            end_ns: row.end_ns,
            trace_id: TraceId::from_hex(&row.trace_id),
            span_id: row.span_id.as_deref().and_then(SpanId::from_hex),
            resource: Arc::new(Resource::from_identity(
                row.identity,
                boxed(row.resource_user),
                boxed(row.resource_tenant),
            )),
            user: boxed(row.user),
            tenant: boxed(row.tenant),
            watched,
            delivery: row.delivery.map(
                |[
                    event,
                    connection_id,
                    connection_user,
                    connection_tenant,
                    run_id,
                ]| {
                    Box::new(Delivery {
                        event: boxed(event),
                        connection_id: boxed(connection_id),
                        connection_user: boxed(connection_user),
                        connection_tenant: boxed(connection_tenant),
                        run_id: boxed(run_id),
                    })
                },
            ),
        })
    }

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
        let now = crate::correlate::finding::now_ns();
        for (seq, received_ns, row) in restored.pending {
            self.next_parked_seq = self.next_parked_seq.max(seq + 1);
            let Some(obs) = self.observation_of(&row) else {
                continue;
            };
            let Some(trace) = obs.trace_id else {
                continue;
            };
            let received = Received {
                wall_ns: received_ns,
                at: std::time::Instant::now(),
            };
            // A fresh wait: the trace's user may arrive now that crosstalk is back.
            let deadline = now.saturating_add(self.wait_ns);
            // Over capacity after a restart with a smaller bound: the oldest are settled at
            // the first tick instead (their deadline has passed).
            let overflow = self
                .pending
                .park(trace, Parked { obs, received, seq }, deadline);
            self.restored_overflow.extend(overflow);
        }
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
