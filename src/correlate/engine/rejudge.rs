//! Judging again, at start-up, conflicts the store already holds: bindings of two principals on
//! one instance with no finding (written by a process that crashed between binding and judging,
//! or by an older release). No conflict depends on having been seen within one process's life.
//!
//! The findings raised here are handed to the first commit with their news (alerts, counters),
//! like any new finding; if that commit fails they wait for the next one.

use std::sync::Arc;

use super::observe::{Rule, Sighting};
use super::undo::Undo;
use super::{Effects, Engine, FindingNews, FindingRecord, InstanceKey, Received, Use};
use crate::config::{Policy, Scope};
use crate::normalize::Observation;

impl Engine {
    /// Judge every restored instance with more than one principal and no finding.
    pub(super) fn rejudge_restored(&mut self) {
        let now = Received::now();
        let mut fx = Effects::default();
        let t = &self.instances;
        let suspects: Vec<InstanceKey> = (t.iter())
            .filter(|&(slot, _)| t.finding(slot).is_none() && t.users(slot) > 1)
            .map(|(_, k)| k.owned())
            .collect();
        for key in suspects {
            let watch = &self.watches[key.watch as usize];
            let rule = Rule {
                policy: watch.policy,
                boundary: watch.boundary,
                coordinated: self.cluster && watch.scope == Scope::Global,
            };
            // Allowed sharing is no conflict; coordinated watches are Redis's to judge.
            if rule.policy == Policy::Allow || rule.coordinated || watch.allows_instance(&key.id) {
                continue;
            }
            let Some(slot) = self.instances.find(key.as_ref()) else {
                continue;
            };
            let mut uses = self.instances.state(slot).uses;
            uses.sort_by_key(|u| u.first_ns);
            let conflicting: Vec<Use> = uses
                .iter()
                .filter(|u| uses.iter().any(|v| rule.conflict(u, v)))
                .cloned()
                .collect();
            let mut conflicting = conflicting;
            let Some(last) = conflicting.pop() else {
                continue;
            };
            let obs = Observation {
                signal: last.first.signal,
                start_ns: last.first.time_ns,
                end_ns: last.last_ns,
                trace_id: last.first.trace_id,
                span_id: last.first.span_id,
                resource: Arc::clone(&self.scopes[last.first.scope as usize]),
                user: None,
                tenant: None,
                watched: Vec::new(),
                delivery: None,
            };
            let s = Sighting {
                key: key.as_ref(),
                obs: &obs,
                seed: last.first,
                origin: None,
                user: &last.user,
                tenant: last.tenant.as_deref(),
                received: now,
                now,
            };
            let id = self.raise(&s, conflicting, last.clone(), &mut fx);
            tracing::warn!(finding = %id, "a conflict already in the store is judged at start-up");
            if let Some(slot) = self.instances.find(key.as_ref()) {
                self.instances.set_finding(slot, Some(id.into()));
            }
        }
        let news = fx.news.into_iter();
        self.rejudged = fx.findings.into_iter().zip(news).collect();
    }

    /// Hand the start-up's findings to the next commit (see the module doc).
    pub(super) fn flush_rejudged(&mut self, fx: &mut Effects) {
        if self.rejudged.is_empty() {
            return;
        }
        let rejudged: Vec<(FindingRecord, FindingNews)> = std::mem::take(&mut self.rejudged);
        if self.undo.is_on() {
            self.undo.push(Undo::Rejudged(rejudged.clone()));
        }
        for (record, news) in rejudged {
            fx.findings.push(record);
            fx.news.push(news);
        }
    }
}
