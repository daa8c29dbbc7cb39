//! One observation of one watched instance: record the use, persist a new binding, and judge
//! it against the instance's other users under the watch's policy and boundary.
//!
//! Conflicts are judged against the uses as they were before this observation, so the order in
//! which one principal's spans arrive never matters.

use super::isolation::InstanceSeen;
use super::record::UseRef;
use super::undo::Undo;
use super::{BindingRow, Effects, Engine, InstanceRef, Received, Seed, Use};
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
    pub fn principal<'u>(&self, user: &'u str, tenant: Option<&'u str>) -> Option<&'u str> {
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
        let (slot, conflicts, (i, new)) = match self.instances.find(s.key) {
            Some(slot) => {
                // A new user changes what later observations are judged against: keep the
                // instance as it was until the batch commits. A known user costs nothing.
                let known = self.instances.use_of(slot, s.user);
                if self.undo.is_on() && known.is_none() {
                    let before = self.instances.state(slot);
                    self.undo.push(Undo::Instance(s.key.owned(), Some(before)));
                }
                let conflicts = self.conflicts(slot, &s, rule);
                (
                    slot,
                    conflicts,
                    self.record_use(slot, known, &s, rule.policy),
                )
            }
            None => (self.track(&s, rule.policy, fx), Vec::new(), (0, true)),
        };
        (self.instances).set_touched_s(slot, s.received.wall_ns / 1_000_000_000);
        let users = self.instances.users(slot) as u32;
        // A finding from before the instance was allowed is kept as it is, but no longer grows.
        let existing: Option<Box<str>> = (self.instances.finding(slot))
            .filter(|_| !allowed)
            .map(Into::into);
        // Copied only to be bound, cited or judged: a known binding of an instance without
        // a finding copies nothing.
        let judged = new || existing.is_some() || !conflicts.is_empty();
        let Some(this_use) = judged.then(|| self.instances.use_at(slot, i)).flatten() else {
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
            if let Some(slot) = self.instances.find(s.key) {
                let before = self.instances.set_finding(slot, Some(id.into()));
                self.undo.push(Undo::Link(s.key.owned(), before));
            }
        }
        seen
    }

    /// Track the sighting's instance, made room for, with the sighting as its first use.
    fn track(&mut self, s: &Sighting<'_>, policy: Policy, fx: &mut Effects) -> u32 {
        if self.instances.len() >= self.max_instances {
            self.evict_least_recent(fx);
        }
        self.counters[s.key.watch as usize].tracked.inc();
        self.undo.push(Undo::Instance(s.key.owned(), None));
        let interval = [(s.obs.start_ns, s.obs.end_ns)];
        let first = UseRef {
            user: s.user,
            tenant: s.tenant,
            first_ns: s.obs.start_ns,
            last_ns: s.obs.end_ns,
            intervals: if policy == Policy::Concurrent {
                &interval
            } else {
                &[]
            },
            first: s.seed,
        };
        let touched_s = s.received.wall_ns / 1_000_000_000;
        self.instances.insert(s.key, first, touched_s)
    }

    /// The instance's uses that conflict with this sighting under `rule`.
    fn conflicts(&self, slot: u32, s: &Sighting<'_>, rule: Rule) -> Vec<Use> {
        if rule.coordinated {
            return Vec::new();
        }
        let mine = (
            rule.boundary == Boundary::Tenant,
            rule.principal(s.user, s.tenant),
        );
        let (start, end) = (s.obs.start_ns, s.obs.end_ns);
        self.instances.conflicts(slot, mine, |u| match rule.policy {
            Policy::Allow => false,
            Policy::Exclusive => true,
            Policy::Concurrent => u.intervals.iter().any(|&(a, b)| a <= end && start <= b),
        })
    }

    /// Record the sighting as a use of the instance at `slot`, whose use `known` is the
    /// sighting's user's, if any: the use's number, and true when the user is new to it.
    fn record_use(
        &mut self,
        slot: u32,
        known: Option<usize>,
        s: &Sighting<'_>,
        policy: Policy,
    ) -> (usize, bool) {
        let (start, end) = (s.obs.start_ns, s.obs.end_ns);
        let t = &mut self.instances;
        if let Some(i) = known {
            t.widen(slot, i, (start, end), s.tenant);
            if policy == Policy::Concurrent {
                if let Some(intervals) = t.intervals_mut(slot, i) {
                    add_interval(intervals, start, end);
                }
            }
            return (i, false);
        }
        let users = t.users(slot);
        if users >= MAX_USES_PER_INSTANCE {
            let oldest = (0..users).min_by_key(|&i| t.last_ns(slot, i));
            if let Some(i) = oldest {
                t.swap_remove_use(slot, i);
            }
        }
        let interval = [(start, end)];
        let u = UseRef {
            user: s.user,
            tenant: s.tenant,
            first_ns: start,
            last_ns: end,
            intervals: if policy == Policy::Concurrent {
                &interval
            } else {
                &[]
            },
            first: s.seed,
        };
        (t.push_use(slot, u), true)
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
