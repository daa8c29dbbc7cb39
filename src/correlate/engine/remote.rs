//! The engine's side of cluster coordination: the [`ClusterCheck`]s it hands to Redis for
//! global watches, and the [`RemoteConflict`] verdicts it turns into findings.
//!
//! Only the sidecar that claimed the instance in Redis raises the finding, with the evidence every
//! sidecar recorded there, so a conflict is one finding across the whole cluster.

use serde::{Deserialize, Serialize};

use super::{Effects, Engine, FindingRecord, InstanceKey, InstanceRef, Received, Seed, Use};
use crate::config::Scope;
use crate::correlate::finding::{Evidence, FindingKind, Subject, finding_id};
use crate::normalize::{Observation, Resource, TraceId};

/// A new (instance, user) pair of a coordinated watch: what Redis records and judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterCheck {
    pub watch: String,
    pub policy: String,
    pub boundary: String,
    pub retention_ms: u64,
    pub instance: String,
    pub user: String,
    pub tenant: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub evidence: Evidence,
    /// Resource identity of the observation, the finding's `scope` if this sidecar raises it.
    pub scope: std::collections::BTreeMap<String, String>,
    pub service: String,
    pub trace_id: Option<String>,
}

/// One user of an instance as Redis recorded it (possibly from another sidecar).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteUse {
    pub user: String,
    pub tenant: Option<String>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub evidence: Evidence,
}

/// Redis found a conflict and this sidecar owns the finding.
#[derive(Debug, Clone)]
pub struct RemoteConflict {
    pub check: ClusterCheck,
    pub uses: Vec<RemoteUse>,
}

impl Engine {
    /// The check for a binding just made by `obs`.
    pub(super) fn cluster_check(
        &self,
        key: InstanceRef<'_>,
        u: &Use,
        obs: &Observation,
        seed: Seed,
    ) -> ClusterCheck {
        let origin = (obs.watched.iter())
            .find(|w| w.watch == key.watch && *w.id == *key.id)
            .and_then(|w| w.origin.as_deref());
        let evidence = self
            .evidence(&u.user, u.tenant.as_deref(), seed, Some(obs))
            .with_origin(origin);
        self.check_of(key, u, (obs.start_ns, obs.end_ns), evidence, &obs.resource)
    }

    /// Every global binding this sidecar knows, to publish again after Redis lost its state.
    pub fn cluster_resync(&self) -> Vec<ClusterCheck> {
        let mut out = Vec::new();
        for (slot, key) in self.instances.iter() {
            if self.watches[key.watch as usize].scope != Scope::Global {
                continue;
            }
            for u in self.instances.state(slot).uses {
                let interval = u
                    .intervals
                    .last()
                    .copied()
                    .unwrap_or((u.first_ns, u.last_ns));
                let evidence = self.evidence(&u.user, u.tenant.as_deref(), u.first, None);
                let resource = &self.scopes[u.first.scope as usize];
                out.push(self.check_of(key, &u, interval, evidence, resource));
            }
        }
        out
    }

    fn check_of(
        &self,
        key: InstanceRef<'_>,
        u: &Use,
        (start_ns, end_ns): (u64, u64),
        evidence: Evidence,
        resource: &Resource,
    ) -> ClusterCheck {
        let w = &self.watches[key.watch as usize];
        ClusterCheck {
            watch: w.name.clone(),
            policy: w.policy.as_str().into(),
            boundary: w.boundary.as_str().into(),
            retention_ms: w.retention.as_millis() as u64,
            instance: key.id.to_string(),
            user: u.user.to_string(),
            tenant: u.tenant.as_deref().map(str::to_owned),
            start_ns,
            end_ns,
            trace_id: evidence.trace_id.clone(),
            evidence,
            scope: resource.identity.clone(),
            service: resource.service().to_owned(),
        }
    }

    /// Raise (or grow) the finding Redis says this sidecar owns.
    pub fn remote_conflict(
        &mut self,
        rc: RemoteConflict,
        received: Received,
        now: Received,
        fx: &mut Effects,
    ) {
        let Some(watch) = self.watch_index(&rc.check.watch) else {
            return;
        };
        let mut uses = rc.uses;
        uses.sort_by_key(|u| u.first_ns);
        let last_ns = uses.iter().map(|u| u.last_ns).max();
        let last_ns = last_ns.unwrap_or(rc.check.end_ns);
        let w = &self.watches[watch as usize];
        let subject = Subject {
            kind: FindingKind::SharedInstance,
            watch: &w.name,
            scope_key: "",
            instance: &rc.check.instance,
            scope: rc.check.scope.clone(),
            service: &rc.check.service,
            policy: w.policy.as_str(),
            boundary: w.boundary.as_str(),
            severity: w.severity.as_str(),
        };
        let id = finding_id(subject.kind, subject.watch, "", subject.instance);
        let users = uses.iter().map(|u| u.user.as_str());
        let tenants = uses.iter().filter_map(|u| u.tenant.as_deref());
        let evidence = uses.iter().map(|u| u.evidence.clone());
        self.evidence_finding(watch, &rc.check.service, now.wall_ns / 1_000_000_000);
        if let Some(record) = self.findings.get_mut(&id) {
            let growth = record.absorb(users, tenants, evidence, last_ns);
            self.grew(&id, growth, fx);
            return;
        }
        let first = uses.first().map_or(rc.check.start_ns, |u| u.first_ns);
        let mut record = FindingRecord::new(subject, first, now.wall_ns);
        record.absorb(users, tenants, evidence, last_ns);
        let trace = rc.check.trace_id.as_deref().and_then(TraceId::from_hex);
        let id = self.publish(record, trace, received, fx);
        let key = InstanceKey {
            watch,
            scope: 0,
            id: rc.check.instance.as_str().into(),
        };
        if let Some(slot) = self.instances.find(key.as_ref()) {
            let before = self.instances.set_finding(slot, Some(id.into()));
            self.undo.push(super::undo::Undo::Link(key, before));
        }
    }
}
