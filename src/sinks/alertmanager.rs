//! Direct push of findings to Alertmanager (`POST /api/v2/alerts`) from a durable outbox.
//!
//! The engine's commit queues one outbox row per new or grown finding in the same transaction as
//! the finding, so neither an Alertmanager outage nor a crosstalk restart loses an alert: this
//! task sends whatever is due, re-sends while firing, backs off on failure, and resolves (sends
//! `endsAt`) once the instance has been quiet for `resolve_after`. User ids leave only as HMAC
//! pseudonyms.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusqlite::{Connection, params};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Alertmanager, UserIds};
use crate::correlate::finding::{now_ns, rfc3339};
use crate::correlate::{Finding, FindingKind};
use crate::privacy::Pseudonymizer;
use crate::sinks::metrics::Metrics;

const POLL: Duration = Duration::from_millis(250);
const MAX_BACKOFF_S: u64 = 60;
/// Alerts sent per poll at most, so a backlog drains in steps.
const BATCH: usize = 64;

/// One alert due for sending.
struct Due {
    finding: Finding,
    state: String,
    attempts: i64,
    last_seen_ns: u64,
}

/// The outbox sender.
pub struct AlertSender {
    pub config: Alertmanager,
    pub db_path: PathBuf,
    /// Where people reach the findings API (`external_url`, else the admin address).
    pub findings_base: String,
    pub pseudonyms: Pseudonymizer,
    pub user_ids: UserIds,
    pub metrics: Arc<Metrics>,
}

impl AlertSender {
    /// Send until shutdown; what is still due then stays in the outbox for the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let db = match Connection::open(&self.db_path) {
            Ok(c) => {
                let _ = c.busy_timeout(Duration::from_secs(5));
                Arc::new(Mutex::new(c))
            }
            Err(e) => {
                tracing::error!(error = %e, "alert outbox unavailable; alerts will wait for a restart");
                return;
            }
        };
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let url = format!("{}/api/v2/alerts", self.config.url);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let due = {
                let db = db.clone();
                tokio::task::spawn_blocking(move || load_due(&db, now_ns())).await
            };
            let due = match due {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the alert outbox failed");
                    continue;
                }
                Err(_) => continue,
            };
            for item in due {
                let now = now_ns();
                let quiet = now.saturating_sub(item.last_seen_ns)
                    > self.config.resolve_after.as_nanos() as u64;
                let resolving = item.state == "firing" && quiet;
                let body = self.payload(&item.finding, resolving, now);
                let ok = self.post(&client, &url, body).await;
                let (state, due_ns, attempts) = if ok {
                    self.metrics.alerts_sent.inc();
                    if resolving {
                        ("resolved", i64::MAX, 0)
                    } else {
                        (
                            "firing",
                            (now + self.config.resend_interval.as_nanos() as u64) as i64,
                            0,
                        )
                    }
                } else {
                    self.metrics.alert_failures.inc();
                    let backoff = (1u64 << item.attempts.clamp(0, 6)).min(MAX_BACKOFF_S);
                    (
                        item.state.as_str(),
                        (now + backoff * 1_000_000_000) as i64,
                        item.attempts + 1,
                    )
                };
                let db = db.clone();
                let id = item.finding.id.clone();
                let state = state.to_owned();
                let sent = ok.then_some(now as i64);
                let _ = tokio::task::spawn_blocking(move || {
                    let db = db.lock().unwrap_or_else(|e| e.into_inner());
                    db.execute(
                        "UPDATE alert_outbox SET state = ?2, due_ns = ?3, attempts = ?4,
                             last_sent_ns = COALESCE(?5, last_sent_ns) WHERE finding_id = ?1",
                        params![id, state, due_ns, attempts, sent],
                    )
                })
                .await;
            }
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
        json!([{
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
        }])
        .to_string()
    }
}

fn load_due(db: &Mutex<Connection>, now: u64) -> rusqlite::Result<Vec<Due>> {
    let db = db.lock().unwrap_or_else(|e| e.into_inner());
    let mut stmt = db.prepare_cached(
        "SELECT f.body, o.state, o.attempts, f.last_seen_ns FROM alert_outbox o
         JOIN findings f ON f.id = o.finding_id
         WHERE o.due_ns <= ?1 AND o.state = 'firing' ORDER BY o.due_ns LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now as i64, BATCH as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (body, state, attempts, last_seen) = row?;
        if let Ok(finding) = serde_json::from_str(&body) {
            out.push(Due {
                finding,
                state,
                attempts,
                last_seen_ns: last_seen as u64,
            });
        }
    }
    Ok(out)
}
