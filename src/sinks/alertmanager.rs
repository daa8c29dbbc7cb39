//! Direct push of findings to Alertmanager (`POST /api/v2/alerts`) from a durable outbox.
//!
//! The engine's commit queues one outbox row per new or grown finding in the same transaction as
//! the finding, so neither an Alertmanager outage nor a crosstalk restart loses an alert: this
//! task sends whatever is due, re-sends while firing, backs off on failure, and resolves (sends
//! `endsAt`) once the instance has been quiet for `resolve_after`. A finding someone acknowledged
//! or resolved is sent once as ended and then never again (Alertmanager has no "acknowledged":
//! ending the alert stops its notifications at once, where merely not re-sending would keep it
//! active until its `endsAt`, up to four resend intervals); a new user reopening a resolved
//! finding fires it again. User ids leave only as HMAC pseudonyms. The store owns the outbox's SQL; this task only asks it what is due.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Alertmanager, UserIds};
use crate::correlate::finding::{now_ns, rfc3339};
use crate::correlate::{Finding, FindingKind};
use crate::privacy::Pseudonymizer;
use crate::store::{AlertState, DueAlert, Outbox, Settled};
use crate::telemetry::metrics::Metrics;

const POLL: Duration = Duration::from_millis(250);
const MAX_BACKOFF_S: u64 = 60;
/// Alerts sent per poll at most, so a backlog drains in steps.
const BATCH: usize = 64;

/// The outbox sender.
pub struct AlertSender {
    pub config: Alertmanager,
    /// The store's outbox: which alerts are due, and where their next due time is written.
    pub outbox: Arc<Outbox>,
    /// Where people reach the findings API (`external_url`, else the admin address).
    pub findings_base: String,
    pub pseudonyms: Pseudonymizer,
    pub user_ids: UserIds,
    pub metrics: Arc<Metrics>,
}

impl AlertSender {
    /// Send until shutdown; what is still due then stays in the outbox for the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let url = format!("{}/api/v2/alerts", self.config.url);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let outbox = self.outbox.clone();
            let due = match tokio::task::spawn_blocking(move || outbox.due(now_ns(), BATCH)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the alert outbox failed");
                    continue;
                }
                Err(_) => continue,
            };
            for id in &due.unreadable {
                self.metrics.alert_failures.inc();
                tracing::error!(finding = %id, "alert outbox row names an unreadable finding; set aside until the finding is written again");
            }
            for item in due.alerts {
                let settled = self.send(&client, &url, &item).await;
                let outbox = self.outbox.clone();
                let id = item.finding.id.clone();
                let written =
                    tokio::task::spawn_blocking(move || outbox.settle(&id, settled)).await;
                if let Ok(Err(e)) = written {
                    self.metrics.store_errors.inc();
                    tracing::warn!(finding = %item.finding.id, error = %e, "writing the alert's next due time failed; held until then");
                }
            }
        }
    }

    /// Send one due alert (or its resolution); what to write back.
    async fn send(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        url: &str,
        item: &DueAlert,
    ) -> Settled {
        let now = now_ns();
        let quiet =
            now.saturating_sub(item.last_seen_ns) > self.config.resolve_after.as_nanos() as u64;
        let body = self.payload(&item.finding, quiet || item.ending, now);
        if self.post(client, url, body).await {
            self.metrics.alerts_sent.inc();
            let (state, due_ns) = if item.ending {
                (AlertState::Silenced, u64::MAX)
            } else if quiet {
                (AlertState::Resolved, u64::MAX)
            } else {
                let resend = self.config.resend_interval.as_nanos() as u64;
                (AlertState::Firing, now.saturating_add(resend))
            };
            return Settled {
                state,
                due_ns,
                attempts: 0,
                sent_ns: Some(now),
            };
        }
        self.metrics.alert_failures.inc();
        let backoff = (1u64 << item.attempts.min(6)).min(MAX_BACKOFF_S);
        Settled {
            state: if item.ending {
                AlertState::Ending
            } else {
                AlertState::Firing
            },
            due_ns: now.saturating_add(backoff * 1_000_000_000),
            attempts: item.attempts.saturating_add(1),
            sent_ns: None,
        }
    }

    async fn post(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        url: &str,
        body: String,
    ) -> bool {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            return false;
        };
        match tokio::time::timeout(self.config.timeout, client.request(request)).await {
            Ok(Ok(resp)) if resp.status().is_success() => true,
            Ok(Ok(resp)) => {
                tracing::warn!(status = %resp.status(), "Alertmanager refused an alert; will retry");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Alertmanager unreachable; will retry");
                false
            }
            Err(_) => {
                tracing::warn!("Alertmanager timed out; will retry");
                false
            }
        }
    }

    /// A user as alerts may show it.
    fn shown(&self, user: &str) -> String {
        match self.user_ids {
            // Already a pseudonym in the store.
            UserIds::Hmac => user.to_owned(),
            UserIds::Raw => self.pseudonyms.pseudonym(user),
        }
    }

    /// The API v2 body: one alert for one finding.
    pub fn payload(&self, f: &Finding, resolved: bool, now: u64) -> String {
        let alertname = match f.kind {
            FindingKind::SharedInstance => "CrossUserStateLeak",
            FindingKind::MisdeliveredEvent => "MisdeliveredEvent",
        };
        let users: Vec<String> = f.users.iter().map(|u| self.shown(u)).collect();
        let traces: Vec<&str> = f
            .evidence
            .iter()
            .filter_map(|e| e.trace_id.as_deref())
            .take(5)
            .collect();
        let link = format!("{}/api/v1/findings/{}", self.findings_base, f.id);
        let what = match f.kind {
            FindingKind::SharedInstance => format!(
                "{} instance {} in {} served {} users{}",
                f.watch,
                f.instance,
                f.service,
                f.user_count,
                if f.cross_tenant {
                    " across tenants"
                } else {
                    ""
                }
            ),
            FindingKind::MisdeliveredEvent => format!(
                "events of one user reached connection {} of another user in {}",
                f.instance, f.service
            ),
        };
        let ends = if resolved {
            now
        } else {
            now + 4 * self.config.resend_interval.as_nanos() as u64
        };
        let mut alert = json!({
            "labels": {
                "alertname": alertname,
                "watch": f.watch,
                "service": f.service,
                "severity": f.severity,
                "finding_id": f.id,
            },
            "annotations": {
                "summary": what,
                "description": format!("{what}. First seen {}, last seen {}. Policy {}, boundary {}.", f.first_seen, f.last_seen, f.policy, f.boundary),
                "affected_users": f.user_count.to_string(),
                "users": users.join(", "),
                "cross_tenant": f.cross_tenant.to_string(),
                "trace_ids": traces.join(", "),
                "finding_url": link,
                "runbook_url": self.config.runbook_url,
            },
            "startsAt": f.detected_at,
            "endsAt": rfc3339(ends),
            "generatorURL": link,
        });
        // Where the shared instance was made, when the service reported it (the kit does).
        if let Some(origin) = f.evidence.iter().find_map(|e| e.origin.as_deref()) {
            alert["annotations"]["origin"] = json!(origin);
        }
        // Ended because someone acknowledged or resolved it: say so to whoever reads the
        // resolved notification.
        if let Some(change) = &f.state_change {
            alert["annotations"]["state"] = json!(f.state.as_str());
            alert["annotations"]["state_by"] = json!(change.by);
        }
        json!([alert]).to_string()
    }
}
