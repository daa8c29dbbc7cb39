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
use super::finding::{Evidence, Finding, FindingKind, finding_id, rfc3339};
use crate::config::{Boundary, Config, Policy, Scope, Watch};
use crate::normalize::{Observation, Resource, Signal, SpanId, TraceId};
use crate::privacy::Pseudonymizer;
use crate::sinks::metrics::{
    EvictLabels, FindingLabels, Metrics, TraceExemplar, WatchLabels, WatchServiceLabels,
};

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
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
            && self.bindings.is_empty()
            && self.evicted.is_empty()
            && self.findings.is_empty()
    }
}

/// State read back from the store at start-up.
#[derive(Debug, Default)]
pub struct Restored {
    pub scopes: Vec<(String, std::collections::BTreeMap<String, String>)>,
    pub bindings: Vec<BindingRow>,
    pub findings: Vec<FindingRecord>,
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

    /// Export the finding counters of a newly seen service at 0, so that its first finding is an
    /// increase Prometheus can see rather than a series born at 1.
    fn zero_series(&self, service: &str) {
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

    fn update_tracked_gauges(&self) {
        let mut per_watch = vec![0i64; self.watches.len()];
        for key in self.instances.keys() {
            per_watch[key.watch as usize] += 1;
        }
        for (c, n) in self.counters.iter().zip(per_watch) {
            c.tracked.set(n);
        }
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
            self.settle(parked.obs, parked.received, received, fx);
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
                    let overflow = self.pending.park(trace, Parked { obs, received }, deadline);
                    for p in overflow {
                        self.count_evicted("", "pending_full");
                        self.settle(p.obs, p.received, received, fx);
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
        for parked in self.pending.expired(now.wall_ns) {
            self.settle(parked.obs, parked.received, now, fx);
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
            self.settle(parked.obs, parked.received, now, fx);
        }
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
        let is_new_instance = !self.instances.contains_key(&key);
        if is_new_instance && self.instances.len() >= self.max_instances {
            self.evict_least_recent(fx);
        }
        let state = self.instances.entry(key.clone()).or_default();
        if is_new_instance {
            self.counters[key.watch as usize].tracked.inc();
        }
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

    /// A new shared-instance finding naming `uses` (the conflicting ones plus this one).
    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        key: &InstanceKey,
        obs_scope: u32,
        mut uses: Vec<Use>,
        current_user: &str,
        obs: &Observation,
        seed: Seed,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) -> String {
        let watch = self.watches[key.watch as usize].clone();
        let scope_key = self.scopes[key.scope as usize].scope_key.clone();
        let id = finding_id(
            FindingKind::SharedInstance,
            &watch.name,
            &scope_key,
            &key.id,
        );
        uses.sort_by_key(|u| u.first_ns);
        let resource = self.scopes[obs_scope as usize].clone();
        let mut finding = Finding {
            id: id.clone(),
            kind: FindingKind::SharedInstance,
            watch: watch.name.clone(),
            instance: key.id.to_string(),
            scope: resource.identity.clone(),
            service: resource.service().to_owned(),
            policy: watch.policy.as_str().to_owned(),
            boundary: watch.boundary.as_str().to_owned(),
            severity: watch.severity.clone(),
            users: Vec::new(),
            user_count: 0,
            tenants: Vec::new(),
            cross_tenant: false,
            first_seen: rfc3339(
                uses.iter()
                    .map(|u| u.first_ns)
                    .min()
                    .unwrap_or(seed.time_ns),
            ),
            detected_at: rfc3339(now.wall_ns),
            last_seen: rfc3339(uses.iter().map(|u| u.last_ns).max().unwrap_or(seed.time_ns)),
            evidence: Vec::new(),
        };
        for u in &uses {
            finding.add_user(&u.user);
            if let Some(t) = &u.tenant {
                finding.add_tenant(t);
            }
            finding.add_evidence(self.evidence(&u.user, u.tenant.as_deref(), u.first, None));
        }
        // The observation that made the conflict, unless it is some user's first use already.
        let current_tenant = uses
            .iter()
            .find(|u| &*u.user == current_user)
            .and_then(|u| u.tenant.as_deref());
        finding.add_evidence(self.evidence(current_user, current_tenant, seed, None));
        if finding.cross_tenant {
            finding.severity = "critical".into();
        }
        let last_seen_ns = uses.iter().map(|u| u.last_ns).max().unwrap_or(seed.time_ns);
        self.count_finding(&finding, obs.trace_id, finding.user_count, received, now);
        let record = FindingRecord {
            finding,
            scope_key,
            detected_ns: now.wall_ns,
            last_seen_ns,
        };
        fx.findings.push(record.clone());
        fx.news.push(FindingNews {
            id: id.clone(),
            new: true,
        });
        self.findings.insert(id.clone(), record);
        id
    }

    /// An instance already found is used again: extend the finding with any new user.
    fn touch_finding(
        &mut self,
        id: &str,
        this_use: Option<&Use>,
        conflict_users: &[Use],
        obs: &Observation,
        seed: Seed,
        fx: &mut Effects,
    ) {
        let mut grown = Vec::new();
        let Some(record) = self.findings.get(id) else {
            return;
        };
        for u in conflict_users.iter().chain(this_use) {
            if !record.finding.users.iter().any(|x| **x == *u.user)
                && !grown.iter().any(|g: &Use| g.user == u.user)
            {
                grown.push(u.clone());
            }
        }
        let evidence: Vec<Evidence> = grown
            .iter()
            .map(|u| {
                self.evidence(
                    &u.user,
                    u.tenant.as_deref(),
                    if this_use.is_some_and(|t| t.user == u.user) {
                        seed
                    } else {
                        u.first
                    },
                    None,
                )
            })
            .collect();
        let Some(record) = self.findings.get_mut(id) else {
            return;
        };
        let end = obs.end_ns;
        if end > record.last_seen_ns {
            record.last_seen_ns = end;
            record.finding.last_seen = rfc3339(end);
            if !self.dirty_findings.iter().any(|d| d == id) {
                self.dirty_findings.push(id.to_owned());
            }
        }
        if grown.is_empty() {
            return;
        }
        let mut added = 0;
        for (u, ev) in grown.iter().zip(evidence) {
            if record.finding.add_user(&u.user) {
                added += 1;
            }
            if let Some(t) = &u.tenant {
                record.finding.add_tenant(t);
            }
            record.finding.add_evidence(ev);
        }
        let snapshot = record.finding.clone();
        fx.findings.retain(|f| f.finding.id != id);
        fx.findings.push(record.clone());
        fx.news.push(FindingNews {
            id: id.to_owned(),
            new: false,
        });
        if added > 0 {
            self.metrics
                .affected_users
                .get_or_create(&WatchServiceLabels {
                    watch: snapshot.watch.clone(),
                    service: snapshot.service.clone(),
                })
                .inc_by(added);
        }
    }

    /// An event carrying `user`'s data reached a connection authenticated as someone else.
    #[allow(clippy::too_many_arguments)]
    fn misdelivered(
        &mut self,
        obs: &Observation,
        obs_scope: u32,
        user: &str,
        tenant: Option<&str>,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let Some(delivery) = obs.delivery.as_deref() else {
            return;
        };
        let Some(conn_user) = delivery.connection_user.as_deref() else {
            return;
        };
        let connection = delivery.connection_id.as_deref().unwrap_or("unknown");
        let seed = Seed {
            time_ns: obs.start_ns,
            trace_id: obs.trace_id,
            span_id: obs.span_id,
            signal: obs.signal,
            scope: obs_scope,
        };
        let evidence = self.evidence(user, tenant, seed, Some(obs));
        let key = (obs_scope, Box::<str>::from(connection));
        if let Some(id) = self.deliveries.get(&key).cloned() {
            if let Some(record) = self.findings.get_mut(&id) {
                let grew = record.finding.add_user(user);
                if let Some(t) = tenant {
                    record.finding.add_tenant(t);
                }
                if obs.end_ns > record.last_seen_ns {
                    record.last_seen_ns = obs.end_ns;
                    record.finding.last_seen = rfc3339(obs.end_ns);
                }
                if grew {
                    record.finding.add_evidence(evidence);
                    fx.findings.retain(|f| f.finding.id != id);
                    fx.findings.push(record.clone());
                    fx.news.push(FindingNews {
                        id: id.clone(),
                        new: false,
                    });
                    let labels = WatchServiceLabels {
                        watch: DELIVERY_WATCH.into(),
                        service: record.finding.service.clone(),
                    };
                    self.metrics.affected_users.get_or_create(&labels).inc();
                } else if !self.dirty_findings.contains(&id) {
                    self.dirty_findings.push(id);
                }
            }
            return;
        }
        let resource = &self.scopes[obs_scope as usize];
        let scope_key = resource.scope_key.clone();
        let id = finding_id(
            FindingKind::MisdeliveredEvent,
            DELIVERY_WATCH,
            &scope_key,
            connection,
        );
        let mut finding = Finding {
            id: id.clone(),
            kind: FindingKind::MisdeliveredEvent,
            watch: DELIVERY_WATCH.into(),
            instance: connection.to_owned(),
            scope: resource.identity.clone(),
            service: resource.service().to_owned(),
            policy: Policy::Exclusive.as_str().into(),
            boundary: Boundary::User.as_str().into(),
            severity: "critical".into(),
            users: Vec::new(),
            user_count: 0,
            tenants: Vec::new(),
            cross_tenant: false,
            first_seen: rfc3339(obs.start_ns),
            detected_at: rfc3339(now.wall_ns),
            last_seen: rfc3339(obs.end_ns),
            evidence: vec![evidence],
        };
        finding.add_user(user);
        finding.add_user(conn_user);
        if let Some(t) = tenant {
            finding.add_tenant(t);
        }
        if let Some(t) = delivery.connection_tenant.as_deref() {
            finding.add_tenant(t);
        }
        self.count_finding(&finding, obs.trace_id, finding.user_count, received, now);
        let record = FindingRecord {
            finding,
            scope_key,
            detected_ns: now.wall_ns,
            last_seen_ns: obs.end_ns,
        };
        fx.findings.push(record.clone());
        fx.news.push(FindingNews {
            id: id.clone(),
            new: true,
        });
        self.findings.insert(id.clone(), record);
        self.deliveries.insert(key, id);
    }

    fn evidence(
        &self,
        user: &str,
        tenant: Option<&str>,
        seed: Seed,
        obs: Option<&Observation>,
    ) -> Evidence {
        let delivery = obs.and_then(|o| o.delivery.as_deref());
        let service = self
            .scopes
            .get(seed.scope as usize)
            .map(|r| r.service().to_owned());
        Evidence {
            user: user.to_owned(),
            tenant: tenant.map(str::to_owned),
            time: rfc3339(seed.time_ns),
            trace_id: seed.trace_id.map(|t| t.to_string()),
            span_id: seed.span_id.map(|s| s.to_string()),
            source: seed.signal.as_str().to_owned(),
            service: service.filter(|s| s != "unknown_service"),
            event: delivery.and_then(|d| d.event.as_deref()).map(str::to_owned),
            connection_id: delivery
                .and_then(|d| d.connection_id.as_deref())
                .map(str::to_owned),
            connection_user: delivery
                .and_then(|d| d.connection_user.as_deref())
                .map(str::to_owned),
            run_id: delivery
                .and_then(|d| d.run_id.as_deref())
                .map(str::to_owned),
        }
    }

    fn count_finding(
        &self,
        f: &Finding,
        trace: Option<TraceId>,
        users: u64,
        received: Received,
        now: Received,
    ) {
        let exemplar = trace.map(|t| TraceExemplar {
            trace_id: t.to_string(),
        });
        self.metrics
            .findings
            .get_or_create(&FindingLabels {
                r#type: f.kind.as_str().into(),
                watch: f.watch.clone(),
                service: f.service.clone(),
            })
            .inc_by(1, exemplar, None);
        self.metrics
            .affected_users
            .get_or_create(&WatchServiceLabels {
                watch: f.watch.clone(),
                service: f.service.clone(),
            })
            .inc_by(users);
        let delay = now.at.saturating_duration_since(received.at);
        self.metrics.detection_delay.observe(delay.as_secs_f64());
    }

    fn count_evicted(&self, watch: &str, reason: &str) {
        self.metrics
            .evicted
            .get_or_create(&EvictLabels {
                watch: watch.into(),
                reason: reason.into(),
            })
            .inc();
    }

    fn evicted_row(&self, key: &InstanceKey) -> EvictedInstance {
        EvictedInstance {
            watch: self.watches[key.watch as usize].name.clone(),
            scope_key: self.scopes[key.scope as usize].scope_key.clone(),
            instance: key.id.to_string(),
        }
    }

    fn remove_instance(&mut self, key: &InstanceKey, reason: &str, fx: &mut Effects) {
        if self.instances.remove(key).is_some() {
            self.counters[key.watch as usize].tracked.dec();
            let name = self.watches[key.watch as usize].name.clone();
            self.count_evicted(&name, reason);
            fx.evicted.push(self.evicted_row(key));
        }
    }

    /// Over the global cap: drop the least recently seen tenth (at least one), so that the
    /// scan is paid once per many inserts.
    fn evict_least_recent(&mut self, fx: &mut Effects) {
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

    fn sweep_retention(&mut self, now_s: u64, fx: &mut Effects) {
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

#[path = "engine_remote.rs"]
mod remote;
pub use remote::{ClusterCheck, RemoteConflict, RemoteUse};

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
