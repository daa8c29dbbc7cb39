//! The correlation engine: which principals (users or tenants) each watched instance serves,
//! the policies that turn a second principal into a finding, and misdelivered events.
//!
//! The engine is a plain struct owned by one thread (see [`crate::pipeline`]); it does no I/O.
//! What must be made durable is handed back as [`Effects`] for the store to commit before the
//! producers are acknowledged. Policies compare event times, never arrival order.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::attribution::{Parked, Pending, Received, TraceUsers};
use super::evidence::{Evidence, WatchInfo};
use super::finding::Finding;
use crate::config::{Boundary, Config, Policy, Scope, Watch};
use crate::correlate::FastMap;
use crate::normalize::{Observation, Resource, Signal, SpanId, TraceId};
use crate::privacy::Pseudonymizer;
use crate::telemetry::metrics::{Metrics, WatchLabels};
use observe::Sighting;
use table::InstanceTable;
use undo::{Undo, UndoLog};

/// The pseudo-watch under which misdelivered events are reported.
pub const DELIVERY_WATCH: &str = "event_delivery";
/// How long a trace's user is remembered for late spans.
const TRACE_TTL_NS: u64 = 300 * 1_000_000_000;
/// How often tracked instances are checked against their watch's retention.
const SWEEP_EVERY_NS: u64 = 10 * 1_000_000_000;
/// How often evidence gauges are refreshed and first/last times handed to the store: the
/// window's distinct counts are merges of bucket tallies, not worth doing per batch.
const EVIDENCE_EVERY_NS: u64 = 2 * 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct InstanceKey {
    watch: u16,
    /// Interned process scope; 0 for global watches.
    scope: u32,
    id: Box<str>,
}

/// An [`InstanceKey`] borrowed from the observation (or from the instance's record): looking up
/// a known instance copies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct InstanceRef<'a> {
    watch: u16,
    scope: u32,
    id: &'a str,
}

impl InstanceKey {
    fn as_ref(&self) -> InstanceRef<'_> {
        InstanceRef {
            watch: self.watch,
            scope: self.scope,
            id: &self.id,
        }
    }
}

impl InstanceRef<'_> {
    fn owned(self) -> InstanceKey {
        InstanceKey {
            watch: self.watch,
            scope: self.scope,
            id: self.id.into(),
        }
    }
}

/// One principal's use of an instance.
#[derive(Debug, Clone)]
struct Use {
    user: Arc<str>,
    tenant: Option<Arc<str>>,
    first_ns: u64,
    last_ns: u64,
    /// Merged recent intervals, kept only for `concurrent` watches.
    intervals: Vec<(u64, u64)>,
    first: Seed,
}

/// Enough of an observation to cite it as evidence later.
#[derive(Debug, Clone, Copy)]
struct Seed {
    time_ns: u64,
    trace_id: Option<TraceId>,
    span_id: Option<SpanId>,
    signal: Signal,
    scope: u32,
}

impl Seed {
    fn of(obs: &Observation, scope: u32) -> Seed {
        Seed {
            time_ns: obs.start_ns,
            trace_id: obs.trace_id,
            span_id: obs.span_id,
            signal: obs.signal,
            scope,
        }
    }
}

/// A tracked instance as a plain value: what the undo log keeps of it (the table keeps it
/// packed, see `table.rs`).
#[derive(Debug, Default, Clone)]
struct InstanceState {
    uses: Vec<Use>,
    finding: Option<Box<str>>,
    /// Wall clock of the last observation, seconds; drives retention and eviction.
    touched_s: u64,
}

struct WatchCounters {
    observed: Counter,
    unattributed: Counter,
    tracked: Gauge,
}

impl WatchCounters {
    fn of(metrics: &Metrics, w: &Watch) -> Self {
        let label = WatchLabels {
            watch: w.name.clone(),
        };
        WatchCounters {
            observed: metrics.watched_observations.get_or_create(&label).clone(),
            unattributed: metrics.unattributed.get_or_create(&label).clone(),
            tracked: metrics.tracked_instances.get_or_create(&label).clone(),
        }
    }
}

/// What evidence needs of a watch.
fn watch_info(w: &Watch) -> WatchInfo {
    WatchInfo {
        name: w.name.clone(),
        allow: w.policy == Policy::Allow,
        expected: w.expected,
    }
}

/// The correlation engine. See the module doc.
pub struct Engine {
    /// By slot: a watch keeps its index across reloads (see [`Engine::reconfigure`]).
    watches: Vec<Watch>,
    /// By slot: still configured. A removed watch's slot stays taken, so an observation
    /// normalized before the reload can never be judged under another watch.
    live: Vec<bool>,
    wait_ns: u64,
    max_instances: usize,
    scopes: Vec<Arc<Resource>>,
    scope_index: FastMap<String, u32>,
    /// The resource whose scope was interned last, and its index.
    last_scope: Option<(Arc<Resource>, u32)>,
    instances: InstanceTable,
    /// Findings by id, and the instance (or connection) each one is about.
    findings: FastMap<String, FindingRecord>,
    deliveries: FastMap<(u32, Box<str>), String>,
    /// `storage.findings_retention`, in nanoseconds.
    findings_retention_ns: u64,
    traces: TraceUsers,
    pending: Pending,
    dirty_findings: Vec<String>,
    last_sweep_ns: u64,
    last_evidence_ns: u64,
    metrics: Arc<Metrics>,
    counters: Vec<WatchCounters>,
    /// In `hmac` privacy mode: users and tenants are replaced by pseudonyms before they are
    /// bound, so neither the store nor the API ever holds a raw id.
    pseudonyms: Option<Pseudonymizer>,
    /// Global watches are coordinated through Redis (`[cluster]`).
    cluster: bool,
    next_parked_seq: u64,
    /// Restored waiting observations that did not fit; settled at the first tick.
    restored_overflow: Vec<Parked>,
    /// Waiting rows found unreadable at restore; deleted by the first commit.
    unreadable_pending: Vec<u64>,
    /// Shared with the admin API, which reads verdicts from it; locked per watched
    /// observation (uncontended but for an API read).
    evidence: Arc<parking_lot::Mutex<Evidence>>,
    /// How to undo what uncommitted batches changed (see `undo.rs`).
    undo: UndoLog,
    /// Scopes whose row an undone batch carried: written with the next commit.
    unwritten_scopes: Vec<u32>,
    /// Findings raised at start-up from conflicts already in the store, for the next commit.
    rejudged: Vec<(FindingRecord, FindingNews)>,
}

impl Engine {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let counters = (config.watches.iter())
            .map(|w| WatchCounters::of(&metrics, w))
            .collect();
        let global = Arc::new(Resource::from_identity(Default::default(), None, None));
        let infos = config.watches.iter().map(watch_info).collect();
        let evidence = Evidence::new(infos, config.evidence_window);
        Engine {
            watches: config.watches.clone(),
            live: vec![true; config.watches.len()],
            wait_ns: config.attribution.wait.as_nanos() as u64,
            max_instances: config.limits.max_tracked_instances,
            scopes: vec![global],
            scope_index: FastMap::from_iter([(String::new(), 0)]),
            last_scope: None,
            instances: InstanceTable::default(),
            findings: FastMap::default(),
            deliveries: FastMap::default(),
            findings_retention_ns: config.findings_retention.as_nanos() as u64,
            traces: TraceUsers::new(config.attribution.max_pending.max(1024) * 2, TRACE_TTL_NS),
            pending: Pending::new(config.attribution.max_pending),
            dirty_findings: Vec::new(),
            last_sweep_ns: 0,
            last_evidence_ns: 0,
            metrics,
            counters,
            pseudonyms: None,
            cluster: false,
            next_parked_seq: 1,
            restored_overflow: Vec::new(),
            unreadable_pending: Vec::new(),
            evidence: Arc::new(parking_lot::Mutex::new(evidence)),
            undo: UndoLog::default(),
            unwritten_scopes: Vec::new(),
            rejudged: Vec::new(),
        }
    }

    /// The per-watch evidence, for the admin API and the gate's summary.
    pub fn watch_evidence(&self) -> Arc<parking_lot::Mutex<Evidence>> {
        self.evidence.clone()
    }

    /// Leave conflicts on global watches to the cluster (Redis) instead of judging them here.
    pub fn with_cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Bind pseudonyms instead of raw user and tenant ids (`[privacy] user_ids = "hmac"`).
    pub fn with_pseudonyms(mut self, pseudonyms: Pseudonymizer) -> Self {
        self.pseudonyms = Some(pseudonyms);
        self
    }

    /// Instances currently tracked.
    pub fn tracked_instances(&self) -> usize {
        self.instances.len()
    }

    /// Observations waiting for their trace's user.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A finding held in memory.
    pub fn finding(&self, id: &str) -> Option<&Finding> {
        self.findings.get(id).map(|r| &r.finding)
    }

    /// Every finding held in memory, newest first.
    pub fn findings(&self) -> Vec<&Finding> {
        let mut all: Vec<&FindingRecord> = self.findings.values().collect();
        all.sort_by(|a, b| {
            b.detected_ns
                .cmp(&a.detected_ns)
                .then(b.finding.id.cmp(&a.finding.id))
        });
        all.into_iter().map(|r| &r.finding).collect()
    }

    fn watch_index(&self, name: &str) -> Option<u16> {
        (self.watches.iter().zip(&self.live))
            .position(|(w, &live)| live && w.name == name)
            .map(|i| i as u16)
    }

    fn intern_scope(&mut self, resource: &Arc<Resource>, fx: &mut Effects) -> u32 {
        // A batch's observations share their resource: one pointer comparison instead of
        // hashing its (long) scope key again for each. Scopes are never removed.
        if let Some((last, i)) = &self.last_scope {
            if Arc::ptr_eq(last, resource) {
                return *i;
            }
        }
        if let Some(&i) = self.scope_index.get(&resource.scope_key) {
            self.last_scope = Some((resource.clone(), i));
            return i;
        }
        let i = self.scopes.len() as u32;
        self.scopes.push(resource.clone());
        self.scope_index.insert(resource.scope_key.clone(), i);
        self.undo.push(Undo::Scope(i));
        fx.scopes.push(ScopeRow {
            scope_key: resource.scope_key.clone(),
            identity_json: serde_json::to_string(&resource.identity).unwrap_or_default(),
        });
        self.zero_series(resource.service());
        i
    }

    /// Take in one batch of observations received together.
    pub fn ingest(&mut self, batch: Vec<Observation>, received: Received, fx: &mut Effects) {
        // Learn every trace's user first, so that within a batch order does not matter.
        let mut released = Vec::new();
        for obs in &batch {
            if let Some(trace) = obs.trace_id {
                let learned = self.traces.learn(
                    trace,
                    obs.user.as_deref(),
                    obs.tenant.as_deref(),
                    received.wall_ns,
                );
                if learned {
                    released.extend(self.pending.take(&trace));
                }
            }
        }
        for parked in released {
            self.settle_parked(parked, received, fx);
        }
        for obs in batch {
            if !obs.is_relevant() {
                continue;
            }
            let needs_trace =
                obs.user.is_none() || (obs.tenant.is_none() && self.has_tenant_watch(&obs));
            match obs.trace_id {
                Some(trace) if needs_trace && self.wait_ns > 0 && !self.trace_known(&trace) => {
                    let deadline = received.wall_ns.saturating_add(self.wait_ns);
                    let seq = self.next_parked_seq;
                    self.next_parked_seq += 1;
                    fx.parked.push(PendingRow {
                        seq,
                        received_ns: received.wall_ns,
                        body: self.parked_row(&obs),
                    });
                    self.undo.push(Undo::Parked(trace, seq));
                    let parked = Parked { obs, received, seq };
                    for p in self.pending.park(trace, parked, deadline) {
                        self.count_evicted("", "pending_full");
                        self.settle_parked(p, received, fx);
                    }
                }
                _ => self.settle(obs, received, received, fx),
            }
        }
    }

    fn trace_known(&self, trace: &TraceId) -> bool {
        self.traces.get(trace).is_some_and(|t| t.user.is_some())
    }

    fn has_tenant_watch(&self, obs: &Observation) -> bool {
        obs.watched
            .iter()
            .any(|w| self.watches[w.watch as usize].boundary == Boundary::Tenant)
    }

    /// Periodic work: settle observations whose wait ran out, apply retention, flush `last_seen`.
    pub fn tick(&mut self, now: Received, fx: &mut Effects) {
        if !self.unreadable_pending.is_empty() {
            self.undo
                .push(Undo::Unreadable(self.unreadable_pending.clone()));
            fx.unparked.append(&mut self.unreadable_pending);
        }
        self.flush_rejudged(fx);
        for i in std::mem::take(&mut self.unwritten_scopes) {
            let r = &self.scopes[i as usize];
            fx.scopes.push(ScopeRow {
                scope_key: r.scope_key.clone(),
                identity_json: serde_json::to_string(&r.identity).unwrap_or_default(),
            });
            self.undo.push(Undo::Scope(i));
        }
        for parked in std::mem::take(&mut self.restored_overflow) {
            self.settle_parked(parked, now, fx);
        }
        for parked in self.pending.expired(now.wall_ns) {
            self.settle_parked(parked, now, fx);
        }
        self.traces.expire(now.wall_ns);
        if now.wall_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_EVERY_NS {
            self.last_sweep_ns = now.wall_ns;
            self.sweep_retention(now.wall_ns / 1_000_000_000, fx);
            self.expire_findings(now.wall_ns, fx);
        }
        if now.wall_ns.saturating_sub(self.last_evidence_ns) >= EVIDENCE_EVERY_NS {
            self.last_evidence_ns = now.wall_ns;
            self.publish_evidence(now.wall_ns / 1_000_000_000, fx);
        }
        self.flush_dirty(fx);
    }

    /// Settle everything still waiting (shutdown, end of a `check` run).
    pub fn settle_all(&mut self, now: Received, fx: &mut Effects) {
        for parked in self.pending.drain() {
            self.settle_parked(parked, now, fx);
        }
        self.publish_evidence(now.wall_ns / 1_000_000_000, fx);
        self.flush_dirty(fx);
    }

    fn settle_parked(&mut self, parked: Parked, now: Received, fx: &mut Effects) {
        fx.unparked.push(parked.seq);
        if self.undo.is_on() {
            self.undo.push(Undo::Settled(parked.clone()));
        }
        self.settle(parked.obs, parked.received, now, fx);
    }

    fn flush_dirty(&mut self, fx: &mut Effects) {
        for id in self.dirty_findings.drain(..) {
            if let Some(r) = self.findings.get(&id) {
                if !fx.findings.iter().any(|f| f.finding.id == id) {
                    fx.findings.push(r.clone());
                }
            }
        }
    }

    /// Resolve the observation's user and tenant (own, trace, resource) and apply it. Both are
    /// borrowed (a trace's are shared): a known binding allocates nothing.
    fn settle(
        &mut self,
        mut obs: Observation,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let trace = obs.trace_id.and_then(|t| self.traces.get(&t)).cloned();
        let (trace_user, trace_tenant) =
            (trace.as_ref()).map_or((None, None), |t| (t.user.as_deref(), t.tenant.as_deref()));
        let user = (obs.user.as_deref())
            .or(trace_user)
            .or(obs.resource.user.as_deref());
        let tenant = (obs.tenant.as_deref())
            .or(trace_tenant)
            .or(obs.resource.tenant.as_deref());
        let Some(p) = &self.pseudonyms else {
            return self.apply(&obs, (user, tenant), received, now, fx);
        };
        let (user, tenant) = (user.map(|u| p.pseudonym(u)), tenant.map(|t| p.pseudonym(t)));
        if let Some(d) = obs.delivery.as_deref_mut() {
            d.connection_user = d.connection_user.take().map(|u| p.pseudonym(&u).into());
            d.connection_tenant = d.connection_tenant.take().map(|t| p.pseudonym(&t).into());
        }
        obs.user = None;
        obs.tenant = None;
        self.apply(
            &obs,
            (user.as_deref(), tenant.as_deref()),
            received,
            now,
            fx,
        );
    }

    fn apply(
        &mut self,
        obs: &Observation,
        (user, tenant): (Option<&str>, Option<&str>),
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let obs_scope = self.intern_scope(&obs.resource, fx);
        for watched in &obs.watched {
            let w = watched.watch as usize;
            if !self.live.get(w).copied().unwrap_or(false) {
                continue; // normalized just before a reload removed its watch
            }
            self.counters[w].observed.inc();
            let (boundary, scope_kind) = (self.watches[w].boundary, self.watches[w].scope);
            let principal_known = match boundary {
                Boundary::User => user.is_some(),
                Boundary::Tenant => tenant.is_some(),
            };
            let scope = match scope_kind {
                Scope::Process => obs_scope,
                Scope::Global => 0,
            };
            if !principal_known {
                self.counters[w].unattributed.inc();
                self.observe_evidence(watched.watch, obs, scope, &watched.id, None, received);
                continue;
            }
            let key = InstanceRef {
                watch: watched.watch,
                scope,
                id: &watched.id,
            };
            let principal = match boundary {
                Boundary::User => user,
                Boundary::Tenant => tenant,
            };
            let principal = super::evidence::item_hash(&[principal.unwrap_or("").as_bytes()]);
            let sighting = Sighting {
                key,
                obs,
                seed: Seed::of(obs, obs_scope),
                origin: watched.origin.as_deref(),
                user: user.unwrap_or("unknown"),
                tenant,
                received,
                now,
            };
            let seen = self.observe_instance(sighting, fx);
            let attributed = Some((principal, seen));
            self.observe_evidence(watched.watch, obs, scope, &watched.id, attributed, received);
        }
        if let Some(delivery) = &obs.delivery {
            if let (Some(user), Some(conn_user)) = (user, &delivery.connection_user) {
                if user != &**conn_user {
                    let seed = Seed::of(obs, obs_scope);
                    let who = (user, tenant);
                    self.misdelivered(obs, seed, who, (received, now), fx);
                }
            }
        }
    }
}

mod bounds;
mod contract;
mod findings;
mod isolation;
mod observe;
mod reconfigure;
mod record;
mod rejudge;
mod remote;
mod restore;
mod table;
mod undo;

pub use contract::{
    BindingRow, Effects, EvictedInstance, FindingNews, FindingRecord, PendingRow, RestoreSink,
    Restored, RestoredScope, ScopeRow, StoredBinding,
};
pub use reconfigure::WatchChanges;
pub use remote::{ClusterCheck, RemoteConflict, RemoteUse};
pub use restore::Restoring;
pub use undo::UndoMark;

#[cfg(test)]
pub(crate) mod tests;

/// What tests of bounded state outside this module (the store's) need to see.
#[cfg(test)]
impl Engine {
    /// The most uses any tracked instance keeps.
    pub(crate) fn max_uses_per_instance(&self) -> usize {
        (self.instances.slots())
            .map(|slot| self.instances.users(slot))
            .max()
            .unwrap_or(0)
    }

    /// The largest persisted user counter of any finding, in bytes.
    pub(crate) fn max_user_counter_bytes(&self) -> usize {
        self.findings
            .values()
            .map(|r| r.users.to_bytes().len())
            .max()
            .unwrap_or(0)
    }
}
