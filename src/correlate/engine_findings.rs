//! Findings: raising a shared-instance finding, growing it as more users arrive, misdelivered
//! events, and the evidence and metrics every finding carries.

use super::{
    DELIVERY_WATCH, Effects, Engine, FindingNews, FindingRecord, InstanceKey, Received, Seed, Use,
};
use crate::config::{Boundary, Policy};
use crate::correlate::finding::{Evidence, Finding, FindingKind, finding_id, rfc3339};
use crate::normalize::{Observation, TraceId};
use crate::sinks::metrics::{FindingLabels, TraceExemplar, WatchServiceLabels};

impl Engine {
    /// A new shared-instance finding naming `uses` (the conflicting ones plus this one).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn raise(
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
    pub(super) fn touch_finding(
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
    pub(super) fn misdelivered(
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

    pub(super) fn evidence(
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

    pub(super) fn count_finding(
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
}
