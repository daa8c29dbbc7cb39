//! Restoring the engine from the store at start-up, and the form in which an observation
//! waiting for its trace's user is kept there.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::observe::MAX_USES_PER_INSTANCE;
use super::{Engine, InstanceKey, Received, Restored, Seed, Use};
use crate::config::Policy;
use crate::correlate::FastMap;
use crate::correlate::attribution::Parked;
use crate::correlate::finding::FindingKind;
use crate::normalize::{Delivery, Observation, Resource, Signal, SpanId, TraceId, WatchedId};

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
    /// The origins of `watched`, in the same order (absent in rows of older releases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    origins: Vec<Option<String>>,
    delivery: Option<DeliveryForm>,
}

/// Where a waiting event was delivered.
#[derive(Serialize, Deserialize)]
struct DeliveryRow {
    event: Option<String>,
    connection_id: Option<String>,
    connection_user: Option<String>,
    connection_tenant: Option<String>,
    run_id: Option<String>,
}

/// Rows written before the named form kept the delivery as a positional array; both still read.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DeliveryForm {
    Named(DeliveryRow),
    Positional([Option<String>; 5]),
}

impl DeliveryForm {
    fn into_row(self) -> DeliveryRow {
        match self {
            DeliveryForm::Named(row) => row,
            DeliveryForm::Positional(
                [
                    event,
                    connection_id,
                    connection_user,
                    connection_tenant,
                    run_id,
                ],
            ) => DeliveryRow {
                event,
                connection_id,
                connection_user,
                connection_tenant,
                run_id,
            },
        }
    }
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
            origins: if obs.watched.iter().any(|w| w.origin.is_some()) {
                obs.watched.iter().map(|w| own(&w.origin)).collect()
            } else {
                Vec::new()
            },
            delivery: obs.delivery.as_deref().map(|d| {
                DeliveryForm::Named(DeliveryRow {
                    event: own(&d.event),
                    connection_id: own(&d.connection_id),
                    connection_user: own(&d.connection_user),
                    connection_tenant: own(&d.connection_tenant),
                    run_id: own(&d.run_id),
                })
            }),
        };
        serde_json::to_string(&row).unwrap_or_default()
    }

    fn observation_of(&self, row: &str) -> Option<Observation> {
        let row: ParkedRow = serde_json::from_str(row).ok()?;
        let boxed = |v: Option<String>| v.map(String::into_boxed_str);
        let mut origins = row.origins.into_iter();
        let watched = row
            .watched
            .into_iter()
            .filter_map(|(name, id)| {
                let origin = origins.next().flatten();
                Some(WatchedId {
                    watch: self.watch_index(&name)?,
                    id: id.into(),
                    origin: origin.map(String::into_boxed_str),
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
            delivery: row.delivery.map(|d| {
                let d = d.into_row();
                Box::new(Delivery {
                    event: boxed(d.event),
                    connection_id: boxed(d.connection_id),
                    connection_user: boxed(d.connection_user),
                    connection_tenant: boxed(d.connection_tenant),
                    run_id: boxed(d.run_id),
                })
            }),
        })
    }

    /// Load what the store remembers. Bindings of watches no longer configured are ignored.
    pub fn restore(&mut self, restored: Restored) {
        for scope in restored.scopes {
            if !self.scope_index.contains_key(&scope.scope_key) {
                let r = Resource::from_identity(scope.identity, None, None);
                self.scope_index
                    .insert(scope.scope_key, self.scopes.len() as u32);
                self.scopes.push(Arc::new(r));
            }
        }
        let now_s = crate::correlate::finding::now_ns() / 1_000_000_000;
        for b in restored.bindings {
            let Some(watch) = self.watch_index(&b.watch) else {
                continue;
            };
            let scope_of = |key: &str, index: &FastMap<String, u32>| index.get(key).copied();
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
                    trace_id: b.trace_id,
                    span_id: b.span_id,
                    signal: b.signal,
                    scope: evidence_scope,
                },
            });
        }
        // As many users per instance as observing keeps, the most recent: an instance with
        // tens of thousands of stored bindings must not make every later observation scan them.
        for state in self.instances.values_mut() {
            if state.uses.len() > MAX_USES_PER_INSTANCE {
                state
                    .uses
                    .sort_unstable_by_key(|u| std::cmp::Reverse(u.last_ns));
                state.uses.truncate(MAX_USES_PER_INSTANCE);
                state.uses.shrink_to_fit();
            }
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
                self.evidence_finding(watch, &f.service, record.last_seen_ns / 1_000_000_000);
            }
            self.findings.insert(f.id.clone(), record);
        }
        self.rejudge_restored();
        self.restore_evidence(&restored.evidence);
        self.update_tracked_gauges();
        let now = crate::correlate::finding::now_ns();
        for row in restored.pending {
            let seq = row.seq;
            self.next_parked_seq = self.next_parked_seq.max(seq + 1);
            let parsed = self
                .observation_of(&row.body)
                .and_then(|o| Some((o.trace_id?, o)));
            let Some((trace, obs)) = parsed else {
                // Unreadable (or trace-less) rows would be read again on every start: they go
                // with the first commit, counted.
                tracing::warn!(
                    seq,
                    "dropping an unreadable waiting observation from the store"
                );
                self.count_evicted("", "pending_unreadable");
                self.unreadable_pending.push(seq);
                continue;
            };
            let received = Received {
                wall_ns: row.received_ns,
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
}
