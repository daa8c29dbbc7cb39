//! The engine's side of isolation evidence: what each watched observation adds to it, and the
//! periodic hand-out of first/last times (to the store) and per-watch gauges (to `/metrics`).

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{Effects, Engine};
use crate::correlate::{Received, evidence};
use crate::normalize::Observation;
use crate::telemetry::metrics::{WatchLabels, WatchServiceLabels};

/// What observing an instance showed, for the evidence.
#[derive(Debug, Clone, Copy)]
pub(super) struct InstanceSeen {
    /// Distinct principals the instance is now known to serve.
    pub users: u32,
    /// The instance has (or just got) a finding.
    pub leaking: bool,
    /// The instance is in its watch's `allow_instances`: never a finding.
    pub allowed: bool,
}

impl Engine {
    /// Count one observation of a watched instance as evidence; `attributed`: the principal's
    /// hash and what the engine made of the instance.
    pub(super) fn observe_evidence(
        &self,
        watch: u16,
        obs: &Observation,
        scope: u32,
        id: &str,
        attributed: Option<(u64, InstanceSeen)>,
        received: Received,
    ) {
        let now_s = received.wall_ns / 1_000_000_000;
        let seen = evidence::Seen {
            instance: evidence::item_hash(&[&scope.to_le_bytes(), id.as_bytes()]),
            user: attributed.map(|(u, _)| u),
            users_of_instance: attributed.map_or(0, |(_, s)| s.users),
            allowed: attributed.is_some_and(|(_, s)| s.allowed),
        };
        let service = obs.resource.service();
        let mut e = self.evidence.lock();
        e.observe(watch, service, now_s, &seen);
        if attributed.is_some_and(|(_, s)| s.leaking) {
            e.finding_seen(watch, service, now_s);
        }
    }

    /// A finding of `watch` in `service` was raised or grew outside the local path (cluster).
    pub(super) fn evidence_finding(&self, watch: u16, service: &str, now_s: u64) {
        self.evidence.lock().finding_seen(watch, service, now_s);
    }

    /// Take back the stored first/last times, and show them on `/metrics` at once: a restart
    /// must not look like a gap in the evidence.
    pub(super) fn restore_evidence(&self, rows: &[evidence::SeenRow]) {
        self.evidence.lock().restore(rows);
        let now_s = crate::correlate::finding::now_ns() / 1_000_000_000;
        self.publish_evidence(now_s, &mut Effects::default());
    }

    /// Hand every first/last time not yet persisted to the store (shutdown).
    pub fn flush_evidence(&self, fx: &mut Effects) {
        fx.evidence
            .extend(self.evidence.lock().take_unpersisted(true));
    }

    /// Hand first/last times due for persisting to the store, and refresh the per-watch gauges.
    pub(super) fn publish_evidence(&self, now_s: u64, fx: &mut Effects) {
        let mut e = self.evidence.lock();
        fx.evidence.extend(e.take_unpersisted(false));
        for (w, _) in (self.watches.iter().zip(&self.live)).filter(|(_, live)| **live) {
            self.metrics
                .watch_expected
                .get_or_create(&WatchLabels {
                    watch: w.name.clone(),
                })
                .set(i64::from(w.expected));
        }
        for row in e.report(now_s) {
            let Some(service) = row.service else {
                continue;
            };
            let last = e.last_seen_s(&row.watch, &service);
            let labels = WatchServiceLabels {
                watch: row.watch,
                service: self.metrics.service_label(&service),
            };
            let m = &self.metrics;
            set_gauge(&m.watch_instances, &labels, row.window.instances);
            set_gauge(&m.watch_users, &labels, row.window.users);
            let most = u64::from(row.window.max_users_per_instance);
            set_gauge(&m.watch_max_users_per_instance, &labels, most);
            if let Some(last) = last {
                set_gauge(&m.watch_last_observation, &labels, last);
            }
        }
    }
}

fn set_gauge(family: &Family<WatchServiceLabels, Gauge>, labels: &WatchServiceLabels, v: u64) {
    family
        .get_or_create(labels)
        .set(i64::try_from(v).unwrap_or(i64::MAX));
}
