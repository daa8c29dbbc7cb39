//! The admin listener: `/live`, `/ready`, `/metrics`, the findings API and the store's status,
//! routed by a plain `match` on method and path.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::correlate::FindingKind;
use crate::correlate::evidence::Evidence;
use crate::correlate::finding::{FindingState, now_ns, parse_rfc3339};
use crate::http::{Handler, HttpResponse, json as json_response, json_error, respond};
use crate::privacy::Pseudonymizer;
use crate::ready::Readiness;
use crate::sources::discovery_tap::DiscoveryTap;
use crate::store::{Cursor, FindingFilter, StoreHealth, StoreReader, Triage};
use crate::telemetry::events::AdminBadRequest;
use crate::telemetry::metrics::Metrics;

mod actions;

/// Findings a list returns unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// The admin API's handler.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub reader: Arc<StoreReader>,
    /// Whether the store takes writes, for `/api/v1/status`.
    pub store: Arc<StoreHealth>,
    /// Ready once every listener serves and state is restored.
    pub ready: Readiness,
    /// Required for everything but `/live` and `/ready` (the kubelet's probes) when set.
    pub token: Option<crate::auth::BearerToken>,
    /// The engine's isolation evidence, read for `/api/v1/watches`.
    pub evidence: Arc<parking_lot::Mutex<Evidence>>,
    /// Discovery's candidates (None when disabled).
    pub discovery: Option<Arc<DiscoveryTap>>,
    /// Set in `hmac` mode: discovery's example users are shown as pseudonyms.
    pub pseudonyms: Option<Pseudonymizer>,
    /// Acknowledging and resolving findings (`POST /api/v1/findings/{id}/ack|resolve`).
    pub triage: Arc<Triage>,
    /// `POST /api/v1/reload` (None: this process cannot reload, e.g. `crosstalk run`).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        let path = request.uri().path().to_owned();
        let post = request.method() == Method::POST;
        if !post && request.method() != Method::GET && request.method() != Method::HEAD {
            AdminBadRequest {
                reason: "method_not_allowed",
            }
            .emit(&self.metrics);
            return json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET (or POST to act)");
        }
        let open = matches!(path.as_str(), "/live" | "/ready");
        if let Some(token) = self.token.as_ref().filter(|_| !open) {
            if !token.accepts(request.headers().get(header::AUTHORIZATION)) {
                AdminBadRequest {
                    reason: "unauthorized",
                }
                .emit(&self.metrics);
                let mut r = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
        if post {
            return self.act(request, &path).await;
        }
        match path.as_str() {
            "/live" => respond(StatusCode::OK, "text/plain", "live\n"),
            "/ready" if self.ready.is_ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
            "/ready" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
            "/metrics" => self.metrics_page(&request),
            "/api/v1/findings" => self.list(&request).await,
            "/api/v1/watches" => self.watches(),
            // Not `/ready`: a full disk on crosstalk's volume must not take the application's
            // pod out of service (crosstalk is a native sidecar); it is reported here instead.
            "/api/v1/status" => json_response(StatusCode::OK, &json!(self.store.status())),
            "/api/v1/discovery" => self.discovery().await,
            p if p.starts_with("/api/v1/findings/") => {
                let id = p["/api/v1/findings/".len()..].to_owned();
                self.one(id).await
            }
            _ => {
                AdminBadRequest {
                    reason: "not_found",
                }
                .emit(&self.metrics);
                json_error(StatusCode::NOT_FOUND, format!("no such path `{path}`"))
            }
        }
    }
}

impl Admin {
    /// `GET /api/v1/discovery`: every key's verdict, suspects first. Advisory only.
    async fn discovery(self: &Arc<Self>) -> HttpResponse {
        let Some(tap) = self.discovery.clone() else {
            return json_response(StatusCode::OK, &json!({"enabled": false, "candidates": []}));
        };
        let me = self.clone();
        match tokio::task::spawn_blocking(move || tap.report(me.pseudonyms.as_ref())).await {
            Ok(report) => match serde_json::to_string(&report) {
                Ok(body) => respond(StatusCode::OK, "application/json", body),
                Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    fn metrics_page(&self, request: &Request<Incoming>) -> HttpResponse {
        if let Some(tap) = &self.discovery {
            tap.refresh_gauge(&self.metrics);
        }
        let wants_openmetrics = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/openmetrics-text"));
        if wants_openmetrics {
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode_openmetrics(),
            )
        } else {
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.encode_prometheus_text(),
            )
        }
    }

    async fn list(&self, request: &Request<Incoming>) -> HttpResponse {
        let filter = match parse_filter(request.uri().query().unwrap_or("")) {
            Ok(f) => f,
            Err(msg) => {
                AdminBadRequest {
                    reason: "bad_query",
                }
                .emit(&self.metrics);
                return json_error(StatusCode::BAD_REQUEST, msg);
            }
        };
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || reader.findings(&filter)).await {
            Ok(Ok((findings, next))) => json_response(
                StatusCode::OK,
                &json!({ "findings": findings, "next": next.map(|c| encode_cursor(&c)) }),
            ),
            Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }

    /// Per watch and service: the verdict and the numbers behind it (see `correlate::evidence`).
    fn watches(&self) -> HttpResponse {
        let now_s = now_ns() / 1_000_000_000;
        let watches = self.evidence.lock().report(now_s);
        json_response(StatusCode::OK, &json!({ "watches": watches }))
    }

    async fn one(&self, id: String) -> HttpResponse {
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || reader.finding(&id)).await {
            Ok(Ok(Some(f))) => json_response(StatusCode::OK, &json!(f)),
            Ok(Ok(None)) => json_error(StatusCode::NOT_FOUND, "no such finding"),
            Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

/// The `next` token: opaque to clients, `<detected_ns>.<id>` inside.
fn encode_cursor(c: &Cursor) -> String {
    format!("{}.{}", c.detected_ns, c.id)
}

fn decode_cursor(token: &str) -> Option<Cursor> {
    let (ns, id) = token.split_once('.')?;
    let ok_id = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    ok_id.then_some(())?;
    Some(Cursor {
        detected_ns: ns.parse().ok()?,
        id: id.to_owned(),
    })
}

/// `type`, `watch`, `state` (open, acknowledged, resolved), `since` (RFC 3339, or a duration
/// back from now like `15m`), `limit` (1..=10000) and `cursor` (the `next` token of the previous
/// page; `next=` works too).
pub fn parse_filter(query: &str) -> Result<FindingFilter, String> {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut filter = FindingFilter {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "type" => {
                filter.kind = Some(FindingKind::parse(&value).ok_or_else(|| {
                    format!("type `{value}` is not shared_instance or misdelivered_event")
                })?)
            }
            "watch" => filter.watch = Some(value),
            "state" => {
                filter.state = Some(FindingState::parse(&value).ok_or_else(|| {
                    format!("state `{value}` is not open, acknowledged or resolved")
                })?)
            }
            "since" => {
                let ns = parse_rfc3339(&value)
                    .or_else(|| {
                        humantime::parse_duration(&value)
                            .ok()
                            .map(|d| now_ns().saturating_sub(d.as_nanos() as u64))
                    })
                    .ok_or_else(|| {
                        format!("since `{value}` is neither RFC 3339 nor a duration like 15m")
                    })?;
                filter.since_ns = Some(ns);
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!("limit `{value}` is not a number from 1 to {MAX_LIMIT}")
                    })?;
            }
            "cursor" | "next" => {
                filter.after = Some(decode_cursor(&value).ok_or_else(|| {
                    format!("cursor `{value}` is not a `next` token from a previous page")
                })?);
            }
            other => return Err(format!("unknown query parameter `{other}`")),
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_reject_nonsense() {
        let f = parse_filter("type=misdelivered_event&watch=agent_factory&limit=5").unwrap();
        assert_eq!(f.kind, Some(FindingKind::MisdeliveredEvent));
        assert_eq!(f.watch.as_deref(), Some("agent_factory"));
        assert_eq!(f.limit, 5);
        let f = parse_filter("since=2026-01-02T03%3A04%3A05Z").unwrap();
        assert_eq!(f.since_ns, Some(1_767_323_045_000_000_000));
        assert!(parse_filter("since=15m").unwrap().since_ns.is_some());
        assert!(parse_filter("type=other").is_err());
        let f = parse_filter("state=acknowledged").unwrap();
        assert_eq!(f.state, Some(FindingState::Acknowledged));
        assert!(parse_filter("state=closed").is_err());
        assert!(parse_filter("since=whenever").is_err());
        assert!(parse_filter("colour=red").is_err());
    }

    #[test]
    fn limits_outside_one_to_ten_thousand_and_forged_cursors_are_refused() {
        for bad in [
            "limit=0",
            "limit=-1",
            "limit=10001",
            "limit=ten",
            "cursor=x",
            "cursor=1.a-b",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_filter("limit=10000").unwrap().limit, 10_000);
        let c = Cursor {
            detected_ns: 42,
            id: "4f1c0b8e2a9d7c31".into(),
        };
        let q = format!("cursor={}", encode_cursor(&c));
        assert_eq!(parse_filter(&q).unwrap().after, Some(c));
    }
}
