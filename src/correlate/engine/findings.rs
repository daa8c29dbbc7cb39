//! Findings: raising a shared-instance finding, growing it as more users arrive, misdelivered
//! events, and the evidence and metrics every finding carries.
//!
//! Every finding is built by [`Finding::new`] and grows only through [`FindingRecord::absorb`],
//! locally, through a misdelivered event or through a cluster verdict alike.

use super::observe::Sighting;
use super::undo::Undo;
use super::{DELIVERY_WATCH, Effects, Engine, FindingNews, FindingRecord, Received, Seed, Use};
use crate::config::{Boundary, Policy};
use crate::correlate::distinct::item_hash;
use crate::correlate::finding::{
    Evidence, Finding, FindingKind, Growth, Lengths, MAX_EVIDENCE, MAX_LISTED_USERS, Subject,
    UserCounter, rfc3339,
};
use crate::normalize::{Observation, TraceId};
use crate::telemetry::metrics::{FindingLabels, TraceExemplar, WatchServiceLabels};

impl FindingRecord {
    /// A finding about `subject` with no users yet, first seen at `first_seen_ns`.
    pub fn new(subject: Subject<'_>, first_seen_ns: u64, detected_ns: u64) -> Self {
        FindingRecord {
            scope_key: subject.scope_key.to_owned(),
            finding: Finding::new(subject, first_seen_ns, detected_ns),
            detected_ns,
            last_seen_ns: first_seen_ns,
            users: UserCounter::new(),
        }
    }

    /// Every rule about how a finding grows, in one place (raising is growing an empty one):
    /// users are counted once each and listed up to the list's cap; tenants are listed once
    /// each; evidence is kept only when it cites a user this call added (up to
    /// [`MAX_EVIDENCE`], no duplicates), so seeing known users again never bloats a finding;
    /// crossing tenants makes a finding `critical`, however it grew; `last_seen` never moves
    /// back.
    ///
    /// The user count is the one place to swap for an exact-then-approximate counter when
    /// findings must grow in O(1) with very many users.
    pub fn absorb<'u>(
        &mut self,
        users: impl IntoIterator<Item = &'u str>,
        tenants: impl IntoIterator<Item = &'u str>,
        evidence: impl IntoIterator<Item = Evidence>,
        last_seen_ns: u64,
    ) -> Growth {
        let f = &mut self.finding;
        let mut growth = Growth {
            before: Lengths {
                users: f.users.len(),
                user_count: f.user_count,
                tenants: f.tenants.len(),
                evidence: f.evidence.len(),
            },
            ..Growth::default()
        };
        let mut added: Vec<&str> = Vec::new();
        for user in users {
            let hash = item_hash(user.as_bytes());
            // Exactly known while exact; past it the sketch takes the user again harmlessly
            // (it cannot list or cite it: lists and evidence are full long before).
            let new = self.users.contains_hash(hash) == Some(false);
            self.users.insert_hash(hash);
            if new {
                growth.counted.push(hash);
                if f.users.len() < MAX_LISTED_USERS {
                    f.users.push(user.to_owned());
                }
                added.push(user);
            }
        }
        // The counter's count never decreases; the delta is what this call added.
        growth.users = self.users.count().saturating_sub(f.user_count);
        f.user_count = f.user_count.max(self.users.count());
        f.user_count_exact = self.users.is_exact();
        for tenant in tenants {
            if !f.tenants.iter().any(|t| t == tenant) {
                f.tenants.push(tenant.to_owned());
                growth.tenants += 1;
            }
        }
        f.cross_tenant = f.tenants.len() > 1;
        if f.cross_tenant && f.severity != "critical" {
            f.severity = "critical".into();
            growth.escalated = true;
        }
        for ev in evidence {
            if f.evidence.len() < MAX_EVIDENCE
                && added.contains(&ev.user.as_str())
                && !f.evidence.contains(&ev)
            {
                f.evidence.push(ev);
            }
        }
        if last_seen_ns > self.last_seen_ns {
            self.last_seen_ns = last_seen_ns;
            f.last_seen = rfc3339(last_seen_ns);
            growth.last_seen = true;
        }
        growth
    }

    /// Undo `growth`; `severity`: the one it had before escalating, if it did.
    pub(super) fn shrink(&mut self, growth: &Growth, severity: Option<&str>) {
        let before = growth.before;
        self.users.forget_hashes(&growth.counted);
        let f = &mut self.finding;
        f.users.truncate(before.users);
        f.user_count = before.user_count;
        f.user_count_exact = self.users.is_exact();
        f.tenants.truncate(before.tenants);
        f.cross_tenant = f.tenants.len() > 1;
        f.evidence.truncate(before.evidence);
        if let Some(severity) = severity {
            f.severity = severity.to_owned();
        }
    }
}

impl Engine {
    /// A new shared-instance finding naming the conflicting uses and this one.
    pub(super) fn raise(
        &mut self,
        s: &Sighting<'_>,
        mut uses: Vec<Use>,
        this_use: Use,
        fx: &mut Effects,
    ) -> String {
        let current_user = this_use.user.clone();
        uses.push(this_use);
        uses.sort_by_key(|u| u.first_ns);
        let watch = &self.watches[s.key.watch as usize];
        let resource = &self.scopes[s.seed.scope as usize];
        let subject = Subject {
            kind: FindingKind::SharedInstance,
            watch: &watch.name,
            scope_key: &self.scopes[s.key.scope as usize].scope_key,
            instance: s.key.id,
            scope: resource.identity.clone(),
            service: resource.service(),
            policy: watch.policy.as_str(),
            boundary: watch.boundary.as_str(),
            severity: watch.severity.as_str(),
        };
        let first = uses.iter().map(|u| u.first_ns).min();
        let last = uses.iter().map(|u| u.last_ns).max();
        let mut record =
            FindingRecord::new(subject, first.unwrap_or(s.seed.time_ns), s.now.wall_ns);
        // The observation that made the conflict, unless it is some user's first use already.
        let current_tenant = uses
            .iter()
            .find(|u| u.user == current_user)
            .and_then(|u| u.tenant.as_deref());
        let evidence: Vec<Evidence> = uses
            .iter()
            .map(|u| self.evidence(&u.user, u.tenant.as_deref(), u.first, None))
            .chain([self.evidence(&current_user, current_tenant, s.seed, None)])
            .map(|e| e.with_origin(s.origin))
            .collect();
        record.absorb(
            uses.iter().map(|u| &*u.user),
            uses.iter().filter_map(|u| u.tenant.as_deref()),
            evidence,
            last.unwrap_or(s.seed.time_ns),
        );
        self.publish(record, s.obs.trace_id, s.received, fx)
    }

    /// An instance already found is used again: extend the finding with any new user.
    pub(super) fn touch_finding(
        &mut self,
        id: &str,
        this_use: Option<&Use>,
        conflicts: &[Use],
        s: &Sighting<'_>,
        fx: &mut Effects,
    ) {
        let Some(record) = self.findings.get(id) else {
            return;
        };
        let mut grown: Vec<&Use> = Vec::new();
        for u in conflicts.iter().chain(this_use) {
            // Known users (exactly, while the count is exact) cost a hash lookup, nothing more.
            let known = record.users.contains_hash(item_hash(u.user.as_bytes()));
            if known != Some(true) && !grown.iter().any(|g| g.user == u.user) {
                grown.push(u);
            }
        }
        let evidence: Vec<Evidence> = grown
            .iter()
            .map(|u| {
                let current = this_use.is_some_and(|t| t.user == u.user);
                let seed = if current { s.seed } else { u.first };
                self.evidence(&u.user, u.tenant.as_deref(), seed, None)
                    .with_origin(s.origin)
            })
            .collect();
        let Some(record) = self.findings.get_mut(id) else {
            return;
        };
        let growth = record.absorb(
            grown.iter().map(|u| &*u.user),
            grown.iter().filter_map(|u| u.tenant.as_deref()),
            evidence,
            s.obs.end_ns,
        );
        self.grew(id, growth, fx);
    }

    /// Report what an `absorb` changed: news (with the record) now, a later `last_seen` at the
    /// next flush so that a busy finding is not rewritten on every batch.
    pub(super) fn grew(&mut self, id: &str, growth: Growth, fx: &mut Effects) {
        let Some(record) = self.findings.get(id) else {
            return;
        };
        let (news, changed, users) = (growth.is_news(), growth.changed(), growth.users);
        if growth.structural() {
            self.undo.push(Undo::FindingGrown(id.to_owned(), growth));
        }
        if news {
            fx.findings.retain(|f| f.finding.id != id);
            fx.findings.push(record.clone());
            fx.news.push(FindingNews {
                id: id.to_owned(),
                new: false,
                received: None,
                users,
                trace: None,
            });
        } else if changed && !self.dirty_findings.iter().any(|d| d == id) {
            self.dirty_findings.push(id.to_owned());
        }
    }

    /// Count, persist, announce and hold a new finding; its id.
    pub(super) fn publish(
        &mut self,
        record: FindingRecord,
        trace: Option<TraceId>,
        received: Received,
        fx: &mut Effects,
    ) -> String {
        let id = record.finding.id.clone();
        fx.findings.push(record.clone());
        fx.news.push(FindingNews {
            id: id.clone(),
            new: true,
            received: Some(received.at),
            users: record.finding.user_count,
            trace,
        });
        self.findings.insert(id.clone(), record);
        self.undo.push(Undo::FindingAdded(id.clone()));
        id
    }

    /// An event carrying `user`'s data reached a connection authenticated as someone else.
    pub(super) fn misdelivered(
        &mut self,
        obs: &Observation,
        seed: Seed,
        (user, tenant): (&str, Option<&str>),
        (received, now): (Received, Received),
        fx: &mut Effects,
    ) {
        let Some(delivery) = obs.delivery.as_deref() else {
            return;
        };
        let Some(conn_user) = delivery.connection_user.as_deref() else {
            return;
        };
        let connection = delivery.connection_id.as_deref().unwrap_or("unknown");
        let evidence = self.evidence(user, tenant, seed, Some(obs));
        let key = (seed.scope, Box::<str>::from(connection));
        if let Some(id) = self.deliveries.get(&key).cloned() {
            if let Some(record) = self.findings.get_mut(&id) {
                let growth = record.absorb([user], tenant, [evidence], obs.end_ns);
                self.grew(&id, growth, fx);
            }
            return;
        }
        let resource = &self.scopes[seed.scope as usize];
        let subject = Subject {
            kind: FindingKind::MisdeliveredEvent,
            watch: DELIVERY_WATCH,
            scope_key: &resource.scope_key,
            instance: connection,
            scope: resource.identity.clone(),
            service: resource.service(),
            policy: Policy::Exclusive.as_str(),
            boundary: Boundary::User.as_str(),
            severity: "critical",
        };
        let mut record = FindingRecord::new(subject, obs.start_ns, now.wall_ns);
        record.absorb(
            [user, conn_user],
            tenant
                .into_iter()
                .chain(delivery.connection_tenant.as_deref()),
            [evidence],
            obs.end_ns,
        );
        let id = self.publish(record, obs.trace_id, received, fx);
        self.undo.push(Undo::Delivery(key.clone()));
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
        let own = |v: Option<&str>| v.map(str::to_owned);
        Evidence {
            user: user.to_owned(),
            tenant: own(tenant),
            time: rfc3339(seed.time_ns),
            trace_id: seed.trace_id.map(|t| t.to_string()),
            span_id: seed.span_id.map(|s| s.to_string()),
            source: seed.signal.as_str().to_owned(),
            service: service.filter(|s| s != "unknown_service"),
            event: own(delivery.and_then(|d| d.event.as_deref())),
            connection_id: own(delivery.and_then(|d| d.connection_id.as_deref())),
            connection_user: own(delivery.and_then(|d| d.connection_user.as_deref())),
            run_id: own(delivery.and_then(|d| d.run_id.as_deref())),
            origin: None,
        }
    }

    /// Count committed news in `crosstalk_findings_total` (new findings, with the conflicting
    /// trace as exemplar) and `crosstalk_affected_users_total`. Called only after the store took
    /// the batch: a refused batch is undone and judged again on retry, and must not count twice.
    pub fn count_committed(&self, news: &FindingNews) {
        let Some(record) = self.findings.get(&news.id) else {
            return;
        };
        let f = &record.finding;
        let service = self.metrics.service_label(&f.service);
        if news.new {
            let exemplar = news.trace.map(|t| TraceExemplar {
                trace_id: t.to_string(),
            });
            self.metrics
                .findings
                .get_or_create(&FindingLabels {
                    r#type: f.kind.as_str().into(),
                    watch: f.watch.clone(),
                    service: service.clone(),
                })
                .inc_by(1, exemplar, None);
        }
        if news.users > 0 {
            self.metrics
                .affected_users
                .get_or_create(&WatchServiceLabels {
                    watch: f.watch.clone(),
                    service,
                })
                .inc_by(news.users);
        }
    }
}
