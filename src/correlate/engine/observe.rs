//! One observation of one watched instance: record the use, persist a new binding, and judge
//! it against the instance's other users under the watch's policy and boundary.
//!
//! Conflicts are judged against the uses as they were before this observation, so the order in
//! which one principal's spans arrive never matters.

use std::sync::Arc;

use hashbrown::hash_map::EntryRef;

use super::isolation::InstanceSeen;
use super::undo::Undo;
use super::{BindingRow, Effects, Engine, InstanceRef, InstanceState, Received, Seed, Use};
use crate::config::{Boundary, Policy, Scope};
use crate::normalize::Observation;

/// Distinct users remembered per instance; past it the least recently seen is forgotten.
pub(super) const MAX_USES_PER_INSTANCE: usize = 32;
/// Recent use intervals remembered per user of a `concurrent` instance.
const MAX_INTERVALS: usize = 8;

/// One observation of one watched instance, with its principal resolved; borrowed from the
/// observation, so that seeing a known binding copies nothing.
pub(super) struct Sighting<'a> {
    pub key: InstanceRef<'a>,
    pub obs: &'a Observation,
    pub seed: Seed,
    /// Where the service says the instance was made, for evidence.
    pub origin: Option<&'a str>,
    pub user: &'a str,
    pub tenant: Option<&'a str>,
    pub received: Received,
    pub now: Received,
}

/// How a watch judges its instances.
#[derive(Clone, Copy)]
pub(super) struct Rule {
    pub policy: Policy,
    pub boundary: Boundary,
    /// Global watches in a cluster are judged by Redis, across every sidecar.
    pub coordinated: bool,
}

impl Rule {
    /// The principal a use counts as under this boundary.
    fn principal<'u>(&self, user: &'u str, tenant: Option<&'u str>) -> Option<&'u str> {
        match self.boundary {
            Boundary::User => Some(user),
            Boundary::Tenant => tenant,
        }
    }

    /// Whether two recorded uses conflict (restored state, judged again at start-up).
    pub fn conflict(&self, a: &Use, b: &Use) -> bool {
        let (pa, pb) = (
            self.principal(&a.user, a.tenant.as_deref()),
            self.principal(&b.user, b.tenant.as_deref()),
        );
        pa.is_some()
            && pb.is_some()
            && pa != pb
            && match self.policy {
                Policy::Allow => false,
                Policy::Exclusive => true,
                Policy::Concurrent => a
                    .intervals
                    .iter()
                    .any(|&(s, e)| b.intervals.iter().any(|&(s2, e2)| s <= e2 && s2 <= e)),
            }
    }
}

impl Engine {
    pub(super) fn observe_instance(&mut self, s: Sighting<'_>, fx: &mut Effects) -> InstanceSeen {
        let watch = &self.watches[s.key.watch as usize];
        // Shared by design: tracked and counted like an `allow` watch, never a finding.
        let allowed = watch.allows_instance(s.key.id);
        let rule = Rule {
            policy: if allowed { Policy::Allow } else { watch.policy },
            boundary: watch.boundary,
            coordinated: self.cluster && watch.scope == Scope::Global,
        };
        let state = self.instance_entry(&s, fx);
        let conflicts = state.conflicts(&s, rule);
        let (i, new) = state.record_use(&s, rule.policy);
        let users = state.uses.len() as u32;
        // A finding from before the instance was allowed is kept as it is, but no longer grows.
        let existing = state.finding.clone().filter(|_| !allowed);
        // Copied only to be bound, cited or judged: a known binding of an instance without
        // a finding copies nothing.
        let judged = new || existing.is_some() || !conflicts.is_empty();
        let Some(this_use) = judged.then(|| state.uses[i].clone()) else {
            return InstanceSeen {
                users,
                leaking: false,
                allowed,
            };
        };
        if new {
            self.bind(&s, &this_use, rule, fx);
        }
        let seen = InstanceSeen {
            users,
            leaking: existing.is_some() || !conflicts.is_empty(),
            allowed,
        };
        if let Some(id) = existing {
            // Coordinated findings grow from Redis's verdicts, not from what this sidecar saw.
            let grow = (!rule.coordinated).then_some(&this_use);
            self.touch_finding(&id, grow, &conflicts, &s, fx);
        } else if !conflicts.is_empty() {
            let id = self.raise(&s, conflicts, this_use, fx);
            if let Some(state) = self.instances.get_mut(&s.key) {
                let before = state.finding.replace(id.into());
                self.undo.push(Undo::Link(s.key.owned(), before));
            }
        }
        seen
    }

    /// The instance's state, made room for and created if new, touched now.
    fn instance_entry(&mut self, s: &Sighting<'_>, fx: &mut Effects) -> &mut InstanceState {
        // Only at the cap does a second lookup pay for itself; otherwise one `entry` both
        // finds the instance and says whether it is new.
        if self.instances.len() >= self.max_instances && !self.instances.contains_key(&s.key) {
            self.evict_least_recent(fx);
        }
        let state = match self.instances.entry_ref(&s.key) {
            EntryRef::Occupied(o) => {
                let state = o.into_mut();
                // A new user changes what later observations are judged against: keep the
                // instance as it was until the batch commits. A known user costs nothing.
                if self.undo.is_on() && !state.uses.iter().any(|u| *u.user == *s.user) {
                    self.undo
                        .push(Undo::Instance(s.key.owned(), Some(state.clone())));
                }
                state
            }
            EntryRef::Vacant(v) => {
                self.counters[s.key.watch as usize].tracked.inc();
                self.undo.push(Undo::Instance(s.key.owned(), None));
                v.insert_with_key(s.key.owned(), InstanceState::default())
            }
        };
        state.touched_s = s.received.wall_ns / 1_000_000_000;
        state
    }

    /// Persist a new (instance, user) binding, and hand coordinated ones to Redis.
    fn bind(&self, s: &Sighting<'_>, u: &Use, rule: Rule, fx: &mut Effects) {
        if rule.coordinated && rule.policy != Policy::Allow {
            fx.cluster.push(self.cluster_check(s.key, u, s.obs, s.seed));
        }
        let (start, end) = (s.obs.start_ns, s.obs.end_ns);
        fx.bindings.push(BindingRow {
            watch: self.watches[s.key.watch as usize].name.clone(),
            scope_key: self.scopes[s.key.scope as usize].scope_key.clone(),
            instance: s.key.id.to_string(),
            user: s.user.to_owned(),
            tenant: s.tenant.map(str::to_owned),
            first_ns: start,
            last_ns: end,
            last_start_ns: start,
            last_end_ns: end,
            trace_id: s.obs.trace_id,
            span_id: s.obs.span_id,
            signal: s.obs.signal,
            evidence_scope_key: s.obs.resource.scope_key.clone(),
        });
    }
}

impl InstanceState {
    /// The uses that conflict with this sighting under `rule`.
    fn conflicts(&self, s: &Sighting<'_>, rule: Rule) -> Vec<Use> {
        let mine = rule.principal(s.user, s.tenant);
        let (start, end) = (s.obs.start_ns, s.obs.end_ns);
        let conflicting = |u: &&Use| {
            rule.principal(&u.user, u.tenant.as_deref()) != mine
                && match rule.policy {
                    Policy::Allow => false,
                    Policy::Exclusive => true,
                    Policy::Concurrent => u.intervals.iter().any(|&(a, b)| a <= end && start <= b),
                }
        };
        if rule.coordinated {
            return Vec::new();
        }
        self.uses.iter().filter(conflicting).cloned().collect()
    }

    /// Record the sighting as a use: its index, and true when the user is new to this
    /// instance (a known user is updated in place).
    fn record_use(&mut self, s: &Sighting<'_>, policy: Policy) -> (usize, bool) {
        let (start, end) = (s.obs.start_ns, s.obs.end_ns);
        if let Some(i) = self.uses.iter().position(|u| *u.user == *s.user) {
            let u = &mut self.uses[i];
            u.first_ns = u.first_ns.min(start);
            u.last_ns = u.last_ns.max(end);
            if u.tenant.is_none() {
                u.tenant = s.tenant.map(Arc::from);
            }
            if policy == Policy::Concurrent {
                add_interval(&mut u.intervals, start, end);
            }
            return (i, false);
        }
        if self.uses.len() >= MAX_USES_PER_INSTANCE {
            let oldest = (0..self.uses.len()).min_by_key(|&i| self.uses[i].last_ns);
            if let Some(i) = oldest {
                self.uses.swap_remove(i);
            }
        }
        let u = Use {
            user: s.user.into(),
            tenant: s.tenant.map(Arc::from),
            first_ns: start,
            last_ns: end,
            intervals: if policy == Policy::Concurrent {
                vec![(start, end)]
            } else {
                Vec::new()
            },
            first: s.seed,
        };
        // Most instances only ever see one user: without this, the first push reserves
        // room for four `Use`s (448 bytes) per tracked instance.
        if self.uses.is_empty() {
            self.uses.reserve_exact(1);
        }
        self.uses.push(u);
        (self.uses.len() - 1, true)
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
