//! The correlation engine: which principals (users or tenants) each watched instance serves,
//! the policies that turn a second principal into a finding, and misdelivered events.
//!
//! The engine is a plain struct owned by one thread (see [`crate::pipeline`]); it does no I/O.
//! What must be made durable is handed back as [`Effects`] for the store to commit before the
//! producers are acknowledged. Policies compare event times, never arrival order.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::attribution::{Parked, Pending, Received, TraceUsers};
use super::finding::Finding;
use crate::config::{Boundary, Config, Policy, Scope, Watch};
use crate::normalize::{Observation, Resource, Signal, SpanId, TraceId};
use crate::privacy::Pseudonymizer;
use crate::sinks::metrics::{Metrics, WatchLabels};

/// The pseudo-watch under which misdelivered events are reported.
pub const DELIVERY_WATCH: &str = "event_delivery";
/// Distinct users remembered per instance; past it the least recently seen is forgotten.
const MAX_USES_PER_INSTANCE: usize = 32;
/// Recent use intervals remembered per user of a `concurrent` instance.
const MAX_INTERVALS: usize = 8;
/// How long a trace's user is remembered for late spans.
const TRACE_TTL_NS: u64 = 300 * 1_000_000_000;
/// How often tracked instances are checked against their watch's retention.
const SWEEP_EVERY_NS: u64 = 10 * 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct InstanceKey {
    watch: u16,
    /// Interned process scope; 0 for global watches.
    scope: u32,
    id: Box<str>,
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

#[derive(Debug, Default)]
struct InstanceState {
    uses: Vec<Use>,
    finding: Option<Box<str>>,
    /// Wall clock of the last observation, seconds; drives retention and eviction.
    touched_s: u64,
}

/// A binding (instance, user) to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    pub watch: String,
    pub scope_key: String,
    pub instance: String,
    pub user: String,
    pub tenant: Option<String>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub last_start_ns: u64,
    pub last_end_ns: u64,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub signal: String,
    pub evidence_scope_key: String,
}

/// An instance whose bindings were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedInstance {
    pub watch: String,
    pub scope_key: String,
    pub instance: String,
}

/// A finding with the columns the store indexes it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRecord {
    pub finding: Finding,
    pub scope_key: String,
    pub detected_ns: u64,
    pub last_seen_ns: u64,
}

/// A finding created or grown by this batch, for sinks that react to news (alerts, logs).
#[derive(Debug, Clone)]
pub struct FindingNews {
    pub id: String,
    pub new: bool,
}

/// What one batch changed that must be durable before it is acknowledged.
#[derive(Debug, Default)]
pub struct Effects {
    pub scopes: Vec<(String, String)>,
    pub bindings: Vec<BindingRow>,
    pub evicted: Vec<EvictedInstance>,
    /// Findings to upsert (new, grown, or with a later `last_seen`).
    pub findings: Vec<FindingRecord>,
    pub news: Vec<FindingNews>,
    /// New (instance, user) pairs of coordinated global watches, for Redis to judge.
    pub cluster: Vec<ClusterCheck>,
    /// Observations now waiting for their trace's user: (seq, received, row), to persist.
    pub parked: Vec<(u64, u64, String)>,
    /// Waiting observations settled since: their rows go.
    pub unparked: Vec<u64>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
            && self.bindings.is_empty()
            && self.evicted.is_empty()
            && self.findings.is_empty()
            && self.parked.is_empty()
            && self.unparked.is_empty()
    }
}

/// State read back from the store at start-up.
#[derive(Debug, Default)]
pub struct Restored {
    pub scopes: Vec<(String, std::collections::BTreeMap<String, String>)>,
    pub bindings: Vec<BindingRow>,
    pub findings: Vec<FindingRecord>,
    /// Observations that were waiting for their trace's user: (seq, received, row).
    pub pending: Vec<(u64, u64, String)>,
}

struct WatchCounters {
    observed: Counter,
    unattributed: Counter,
    tracked: Gauge,
}

/// The correlation engine. See the module doc.
pub struct Engine {
    watches: Vec<Watch>,
    wait_ns: u64,
    max_instances: usize,
    scopes: Vec<Arc<Resource>>,
    scope_index: HashMap<String, u32>,
    instances: HashMap<InstanceKey, InstanceState>,
    /// Findings by id, and the instance (or connection) each one is about.
    findings: HashMap<String, FindingRecord>,
    deliveries: HashMap<(u32, Box<str>), String>,
    traces: TraceUsers,
    pending: Pending,
    dirty_findings: Vec<String>,
    last_sweep_ns: u64,
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
}

impl Engine {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let counters = config
            .watches
            .iter()
            .map(|w| {
                let label = WatchLabels {
                    watch: w.name.clone(),
                };
                WatchCounters {
                    observed: metrics.watched_observations.get_or_create(&label).clone(),
                    unattributed: metrics.unattributed.get_or_create(&label).clone(),
                    tracked: metrics.tracked_instances.get_or_create(&label).clone(),
                }
            })
            .collect();
        let global = Arc::new(Resource::from_identity(Default::default(), None, None));
        Engine {
            watches: config.watches.clone(),
            wait_ns: config.attribution.wait.as_nanos() as u64,
            max_instances: config.limits.max_tracked_instances,
            scopes: vec![global],
            scope_index: HashMap::from([(String::new(), 0)]),
            instances: HashMap::new(),
            findings: HashMap::new(),
            deliveries: HashMap::new(),
            traces: TraceUsers::new(config.attribution.max_pending.max(1024) * 2, TRACE_TTL_NS),
            pending: Pending::new(config.attribution.max_pending),
            dirty_findings: Vec::new(),
            last_sweep_ns: 0,
            metrics,
            counters,
            pseudonyms: None,
            cluster: false,
            next_parked_seq: 1,
            restored_overflow: Vec::new(),
        }
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
        self.watches
            .iter()
            .position(|w| w.name == name)
            .map(|i| i as u16)
    }

    fn intern_scope(&mut self, resource: &Arc<Resource>, fx: &mut Effects) -> u32 {
        if let Some(&i) = self.scope_index.get(&resource.scope_key) {
            return i;
        }
        let i = self.scopes.len() as u32;
        self.scopes.push(resource.clone());
        self.scope_index.insert(resource.scope_key.clone(), i);
        let attrs = serde_json::to_string(&resource.identity).unwrap_or_default();
        fx.scopes.push((resource.scope_key.clone(), attrs));
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
                    fx.parked
                        .push((seq, received.wall_ns, self.parked_row(&obs)));
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
        }
        self.flush_dirty(fx);
    }

    /// Settle everything still waiting (shutdown, end of a `check` run).
    pub fn settle_all(&mut self, now: Received, fx: &mut Effects) {
        for parked in self.pending.drain() {
            self.settle_parked(parked, now, fx);
        }
        self.flush_dirty(fx);
    }

    fn settle_parked(&mut self, parked: Parked, now: Received, fx: &mut Effects) {
        fx.unparked.push(parked.seq);
        self.settle(parked.obs, parked.received, now, fx);
    }

    /// Flush `last_seen` of findings used since the last commit.
    pub fn flush(&mut self, fx: &mut Effects) {
        self.flush_dirty(fx);
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

    /// Resolve the observation's user and tenant (own, trace, resource) and apply it.
    fn settle(
        &mut self,
        mut obs: Observation,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let trace = obs.trace_id.and_then(|t| self.traces.get(&t)).cloned();
        let user: Option<Arc<str>> = obs
            .user
            .as_deref()
            .map(Arc::from)
            .or_else(|| trace.as_ref().and_then(|t| t.user.clone()))
            .or_else(|| obs.resource.user.as_deref().map(Arc::from));
        let tenant: Option<Arc<str>> = obs
            .tenant
            .as_deref()
            .map(Arc::from)
            .or_else(|| trace.as_ref().and_then(|t| t.tenant.clone()))
            .or_else(|| obs.resource.tenant.as_deref().map(Arc::from));
        if let Some(p) = &self.pseudonyms {
            let hide = |id: Option<Arc<str>>| id.map(|i| Arc::from(p.pseudonym(&i)));
            let (user, tenant) = (hide(user), hide(tenant));
            if let Some(d) = obs.delivery.as_deref_mut() {
                d.connection_user = d.connection_user.take().map(|u| p.pseudonym(&u).into());
                d.connection_tenant = d.connection_tenant.take().map(|t| p.pseudonym(&t).into());
            }
            obs.user = None;
            obs.tenant = None;
            return self.apply(&obs, user, tenant, received, now, fx);
        }
        self.apply(&obs, user, tenant, received, now, fx);
    }

    fn apply(
        &mut self,
        obs: &Observation,
        user: Option<Arc<str>>,
        tenant: Option<Arc<str>>,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let obs_scope = self.intern_scope(&obs.resource, fx);
        for watched in &obs.watched {
            let w = watched.watch as usize;
            self.counters[w].observed.inc();
            let (boundary, scope_kind) = (self.watches[w].boundary, self.watches[w].scope);
            let principal_known = match boundary {
                Boundary::User => user.is_some(),
                Boundary::Tenant => tenant.is_some(),
            };
            if !principal_known {
                self.counters[w].unattributed.inc();
                continue;
            }
            let key = InstanceKey {
                watch: watched.watch,
                scope: match scope_kind {
                    Scope::Process => obs_scope,
                    Scope::Global => 0,
                },
                id: watched.id.clone(),
            };
            let user = user.clone().unwrap_or_else(|| Arc::from("unknown"));
            self.observe_instance(key, obs, obs_scope, user, tenant.clone(), received, now, fx);
        }
        if let Some(delivery) = &obs.delivery {
            if let (Some(user), Some(conn_user)) = (&user, &delivery.connection_user) {
                if **user != **conn_user {
                    self.misdelivered(obs, obs_scope, user, tenant.as_deref(), received, now, fx);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn observe_instance(
        &mut self,
        key: InstanceKey,
        obs: &Observation,
        obs_scope: u32,
        user: Arc<str>,
        tenant: Option<Arc<str>>,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let watch = &self.watches[key.watch as usize];
        let policy = watch.policy;
        let boundary = watch.boundary;
        // Global watches in a cluster are judged by Redis, across every sidecar.
        let coordinated = self.cluster && watch.scope == Scope::Global;
        // Only at the cap does a second lookup pay for itself; otherwise one `entry` both
        // finds the instance and says whether it is new.
        if self.instances.len() >= self.max_instances && !self.instances.contains_key(&key) {
            self.evict_least_recent(fx);
        }
        let state = match self.instances.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.counters[key.watch as usize].tracked.inc();
                v.insert(InstanceState::default())
            }
        };
        state.touched_s = received.wall_ns / 1_000_000_000;
        let (s, e) = (obs.start_ns, obs.end_ns);
        let seed = Seed {
            time_ns: s,
            trace_id: obs.trace_id,
            span_id: obs.span_id,
            signal: obs.signal,
            scope: obs_scope,
        };
        let principal = |u: &Use| -> Option<Arc<str>> {
            match boundary {
                Boundary::User => Some(u.user.clone()),
                Boundary::Tenant => u.tenant.clone(),
            }
        };
        let mine = match boundary {
            Boundary::User => Some(user.clone()),
            Boundary::Tenant => tenant.clone(),
        };
        // Conflicts are judged against the uses as they were before this observation.
        let conflicting: Vec<usize> = match policy {
            _ if coordinated => Vec::new(),
            Policy::Allow => Vec::new(),
            Policy::Exclusive => (0..state.uses.len())
                .filter(|&i| principal(&state.uses[i]) != mine)
                .collect(),
            Policy::Concurrent => (0..state.uses.len())
                .filter(|&i| {
                    let u = &state.uses[i];
                    principal(u) != mine && u.intervals.iter().any(|&(a, b)| a <= e && s <= b)
                })
                .collect(),
        };
        let mut conflict_users: Vec<Use> =
            conflicting.iter().map(|&i| state.uses[i].clone()).collect();
        let position = state.uses.iter().position(|u| u.user == user);
        let this_use = match position {
            Some(i) => {
                let u = &mut state.uses[i];
                u.first_ns = u.first_ns.min(s);
                u.last_ns = u.last_ns.max(e);
                if u.tenant.is_none() {
                    u.tenant = tenant.clone();
                }
                if policy == Policy::Concurrent {
                    add_interval(&mut u.intervals, s, e);
                }
                u.clone()
            }
            None => {
                if state.uses.len() >= MAX_USES_PER_INSTANCE {
                    let oldest = (0..state.uses.len()).min_by_key(|&i| state.uses[i].last_ns);
                    if let Some(i) = oldest {
                        state.uses.swap_remove(i);
                    }
                }
                let u = Use {
                    user: user.clone(),
                    tenant: tenant.clone(),
                    first_ns: s,
                    last_ns: e,
                    intervals: if policy == Policy::Concurrent {
                        vec![(s, e)]
                    } else {
                        Vec::new()
                    },
                    first: seed,
                };
                // Most instances only ever see one user: without this, the first push reserves
                // room for four `Use`s (448 bytes) per tracked instance.
                if state.uses.is_empty() {
                    state.uses.reserve_exact(1);
                }
                state.uses.push(u.clone());
                if coordinated && policy != Policy::Allow {
                    fx.cluster.push(self.cluster_check(&key, &u, obs, seed));
                }
                fx.bindings.push(BindingRow {
                    watch: self.watches[key.watch as usize].name.clone(),
                    scope_key: self.scopes[key.scope as usize].scope_key.clone(),
                    instance: key.id.to_string(),
                    user: user.to_string(),
                    tenant: tenant.as_deref().map(str::to_owned),
                    first_ns: s,
                    last_ns: e,
                    last_start_ns: s,
                    last_end_ns: e,
                    trace_id: obs.trace_id.map(|t| t.to_string()),
                    span_id: obs.span_id.map(|t| t.to_string()),
                    signal: obs.signal.as_str().to_owned(),
                    evidence_scope_key: obs.resource.scope_key.clone(),
                });
                u
            }
        };
        let existing = self.instances.get(&key).and_then(|s| s.finding.clone());
        if let Some(id) = existing {
            // Coordinated findings grow from Redis's verdicts, not from what this sidecar saw.
            let grow = if coordinated { None } else { Some(&this_use) };
            self.touch_finding(&id, grow, &conflict_users, obs, seed, fx);
        } else if !conflict_users.is_empty() {
            let current_user = this_use.user.clone();
            conflict_users.push(this_use);
            let id = self.raise(
                &key,
                obs_scope,
                conflict_users,
                &current_user,
                obs,
                seed,
                received,
                now,
                fx,
            );
            if let Some(state) = self.instances.get_mut(&key) {
                state.finding = Some(id.into());
            }
        }
    }
}

/// Add [s, e] to a user's recent intervals, merging overlaps and keeping the latest few.
fn add_interval(intervals: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    if let Some(iv) = intervals.iter_mut().find(|(a, b)| *a <= e && s <= *b) {
        iv.0 = iv.0.min(s);
        iv.1 = iv.1.max(e);
        return;
    }
    if intervals.len() >= MAX_INTERVALS {
        if let Some(i) = (0..intervals.len()).min_by_key(|&i| intervals[i].1) {
            intervals.swap_remove(i);
        }
    }
    intervals.push((s, e));
}

#[path = "engine_findings.rs"]
mod findings;
#[path = "engine_remote.rs"]
mod remote;
#[path = "engine_state.rs"]
mod state;
pub use remote::{ClusterCheck, RemoteConflict, RemoteUse};

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
