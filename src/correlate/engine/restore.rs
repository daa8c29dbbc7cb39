//! Restoring the engine from the store at start-up, row by row ([`Restoring`]), and the form
//! in which an observation waiting for its trace's user is kept there.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::observe::MAX_USES_PER_INSTANCE;
use super::record::UseRef;
use super::table::InstanceTable;
use super::{
    Engine, FindingRecord, InstanceRef, PendingRow, Received, RestoreSink, Restored, RestoredScope,
    Seed, StoredBinding,
};
use crate::config::Policy;
use crate::correlate::attribution::Parked;
use crate::correlate::evidence::SeenRow;
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

    /// Load what the store remembers, all at once (see [`Self::restore_from`]).
    pub fn restore(&mut self, restored: Restored) {
        let replayed = self.restore_from(|sink| {
            restored.replay(sink);
            Ok::<_, std::convert::Infallible>(())
        });
        replayed.unwrap_or_else(|never| match never {});
    }

    /// Load what the store remembers as `read` hands it over row by row, so that the peak is
    /// the engine's own tables, never every row at once. Bindings of watches no longer
    /// configured (or of unknown scopes) are ignored. Once `read` is done, conflicts the
    /// store holds without a finding are judged again.
    pub fn restore_from<E>(
        &mut self,
        read: impl FnOnce(&mut Restoring<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let now_ns = crate::correlate::finding::now_ns();
        let mut restoring = Restoring {
            engine: self,
            now_ns,
            evidence: Vec::new(),
        };
        read(&mut restoring)?;
        let evidence = restoring.evidence;
        self.rejudge_restored();
        self.restore_evidence(&evidence);
        self.update_tracked_gauges();
        Ok(())
    }
}

/// The engine taking the store's rows at start-up (see [`Engine::restore_from`]).
pub struct Restoring<'e> {
    engine: &'e mut Engine,
    now_ns: u64,
    /// First/last observation times: a few rows per watch, taken in one piece at the end.
    evidence: Vec<SeenRow>,
}

/// What tests of restoring through the real store (the store's) need to see.
#[cfg(test)]
impl Restoring<'_> {
    /// Instances the table holds room for without growing.
    pub(crate) fn instance_capacity(&self) -> usize {
        self.engine.instances.capacity()
    }
}

impl RestoreSink for Restoring<'_> {
    fn expect_bindings(&mut self, count: usize) {
        // Sized once: growing a table of a million instances would hold the old table and
        // the new one at once.
        let e = &mut *self.engine;
        e.instances.reserve(count.min(e.max_instances));
    }

    fn scope(&mut self, scope: RestoredScope) {
        let e = &mut *self.engine;
        if !e.scope_index.contains_key(&scope.scope_key) {
            let r = Resource::from_identity(scope.identity, None, None);
            e.scope_index.insert(scope.scope_key, e.scopes.len() as u32);
            e.scopes.push(Arc::new(r));
        }
    }

    fn binding(&mut self, b: StoredBinding<'_>) {
        let e = &mut *self.engine;
        let Some(watch) = e.watch_index(b.watch) else {
            return;
        };
        let Some(&scope) = e.scope_index.get(b.scope_key) else {
            return;
        };
        let evidence_scope = e.scope_index.get(b.evidence_scope_key).copied();
        let key = InstanceRef {
            watch,
            scope,
            id: b.instance,
        };
        let concurrent = e.watches[watch as usize].policy == Policy::Concurrent;
        let interval = [(b.last_start_ns, b.last_end_ns)];
        let u = UseRef {
            user: b.user,
            tenant: b.tenant,
            first_ns: b.first_ns,
            last_ns: b.last_ns,
            intervals: if concurrent { &interval } else { &[] },
            first: Seed {
                time_ns: b.first_ns,
                trace_id: b.trace_id,
                span_id: b.span_id,
                signal: b.signal,
                scope: evidence_scope.unwrap_or(scope),
            },
        };
        let now_s = self.now_ns / 1_000_000_000;
        match e.instances.find(key) {
            Some(slot) => {
                e.instances.set_touched_s(slot, now_s);
                keep_recent(&mut e.instances, slot, u);
            }
            None => {
                e.instances.insert(key, u, now_s);
            }
        }
    }

    fn finding(&mut self, record: FindingRecord) {
        let e = &mut *self.engine;
        let f = &record.finding;
        let scope = e.scope_index.get(&record.scope_key).copied().unwrap_or(0);
        if f.kind == FindingKind::MisdeliveredEvent {
            e.deliveries
                .insert((scope, f.instance.as_str().into()), f.id.clone());
        } else if let Some(watch) = e.watch_index(&f.watch) {
            let key = InstanceRef {
                watch,
                scope,
                id: &f.instance,
            };
            if let Some(slot) = e.instances.find(key) {
                e.instances.set_finding(slot, Some(f.id.as_str().into()));
            }
            e.evidence_finding(watch, &f.service, record.last_seen_ns / 1_000_000_000);
        }
        e.findings.insert(f.id.clone(), record);
    }

    fn pending(&mut self, row: PendingRow) {
        let e = &mut *self.engine;
        let seq = row.seq;
        e.next_parked_seq = e.next_parked_seq.max(seq + 1);
        let parsed = (e.observation_of(&row.body)).and_then(|o| Some((o.trace_id?, o)));
        let Some((trace, obs)) = parsed else {
            // Unreadable (or trace-less) rows would be read again on every start: they go
            // with the first commit, counted.
            tracing::warn!(
                seq,
                "dropping an unreadable waiting observation from the store"
            );
            e.count_evicted("", "pending_unreadable");
            e.unreadable_pending.push(seq);
            return;
        };
        let received = Received {
            wall_ns: row.received_ns,
            at: std::time::Instant::now(),
        };
        // A fresh wait: the trace's user may arrive now that crosstalk is back.
        let deadline = self.now_ns.saturating_add(e.wait_ns);
        // Over capacity after a restart with a smaller bound: the oldest are settled at
        // the first tick instead (their deadline has passed).
        let overflow = e
            .pending
            .park(trace, Parked { obs, received, seq }, deadline);
        e.restored_overflow.extend(overflow);
    }

    fn evidence(&mut self, row: SeenRow) {
        self.evidence.push(row);
    }
}

/// Add a restored use, keeping as many users per instance as observing keeps, the most
/// recent: an instance with tens of thousands of stored bindings must not make every later
/// observation scan them. Bounded work per row, whatever order the rows come in.
fn keep_recent(table: &mut InstanceTable, slot: u32, u: UseRef<'_>) {
    let users = table.users(slot);
    if users < MAX_USES_PER_INSTANCE {
        table.push_use(slot, u);
        return;
    }
    let oldest = (0..users).min_by_key(|&i| table.last_ns(slot, i));
    if let Some(i) = oldest.filter(|&i| table.last_ns(slot, i) < u.last_ns) {
        table.replace_use(slot, i, u);
    }
}
