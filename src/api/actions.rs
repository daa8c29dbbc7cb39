//! The admin API's actions (`POST`): acknowledging and resolving findings, reloading the
//! config. Behind the admin token like everything but the probes; a refused request answers 4xx
//! and is counted in `crosstalk_admin_bad_requests_total{reason}` (a config file that does not
//! load is the file's fault, not the request's: 422, counted as a failed reload).

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::correlate::finding::{FindingState, now_ns};
use crate::http::{HttpResponse, json as json_response, json_error};
use crate::reload::ReloadError;
use crate::store::{StateRequest, Triaged};
use crate::telemetry::events::AdminBadRequest;

/// An action's body is a few names and a note: anything bigger is a mistake.
const MAX_BODY: usize = 64 * 1024;
const MAX_BY: usize = 128;
const MAX_NOTE: usize = 4096;

/// `{"by": "alice", "note": "..."}`: who acts (required), and why (optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    by: String,
    #[serde(default)]
    note: String,
}

impl Admin {
    /// Route a `POST`.
    pub(super) async fn act(
        self: &Arc<Self>,
        request: Request<Incoming>,
        path: &str,
    ) -> HttpResponse {
        if path == "/api/v1/reload" {
            return self.reload().await;
        }
        let finding = path.strip_prefix("/api/v1/findings/");
        let target = finding.and_then(|rest| {
            let (id, to) = rest.rsplit_once('/')?;
            let to = match to {
                "ack" => FindingState::Acknowledged,
                "resolve" => FindingState::Resolved,
                _ => return None,
            };
            Some((id.to_owned(), to))
        });
        let Some((id, to)) = target else {
            return self.refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("`{path}` takes no POST"),
            );
        };
        let body = match read_state_body(request).await {
            Ok(b) => b,
            Err(msg) => return self.refuse(StatusCode::BAD_REQUEST, "bad_body", msg),
        };
        let req = StateRequest {
            to,
            by: body.by,
            note: body.note,
            now_ns: now_ns(),
        };
        let triage = self.triage.clone();
        let (id2, req2) = (id.clone(), req.clone());
        let outcome = tokio::task::spawn_blocking(move || triage.set_state(&id2, &req2)).await;
        match outcome {
            Ok(Ok(Triaged::Changed(f))) => {
                tracing::info!(finding = %id, state = to.as_str(), by = %req.by, "finding state set");
                json_response(StatusCode::OK, &json!(f))
            }
            Ok(Ok(Triaged::NotFound)) => {
                self.refuse(StatusCode::NOT_FOUND, "unknown_finding", "no such finding")
            }
            Ok(Ok(Triaged::Refused(why))) => self.refuse(StatusCode::CONFLICT, "conflict", why),
            Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }

    /// Re-read the config file and apply its watches; what changed and what needs a restart.
    async fn reload(&self) -> HttpResponse {
        let Some(reloader) = self.reloader.clone() else {
            let msg = "this crosstalk cannot reload (only `serve` can)";
            return self.refuse(StatusCode::NOT_FOUND, "not_found", msg);
        };
        match reloader.reload("api").await {
            Ok(report) => json_response(StatusCode::OK, &json!(report)),
            Err(e @ ReloadError::Engine(_)) => json_error(StatusCode::SERVICE_UNAVAILABLE, e),
            Err(e) => json_error(StatusCode::UNPROCESSABLE_ENTITY, e),
        }
    }

    fn refuse(
        &self,
        status: StatusCode,
        reason: &'static str,
        message: impl std::fmt::Display,
    ) -> HttpResponse {
        AdminBadRequest { reason }.emit(&self.metrics);
        json_error(status, message)
    }
}

/// Read and check `{"by": ..., "note": ...}`; what is wrong with it, for the 400.
async fn read_state_body(request: Request<Incoming>) -> Result<StateBody, String> {
    let bytes = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body failed ({e}); at most {MAX_BODY} bytes"))?
        .to_bytes();
    parse_state_body(&bytes)
}

fn parse_state_body(bytes: &[u8]) -> Result<StateBody, String> {
    let expected = r#"expected a JSON body {"by": "<who>", "note": "<why, optional>"}"#;
    let body: StateBody = serde_json::from_slice(bytes).map_err(|e| format!("{expected}: {e}"))?;
    let by = body.by.trim();
    if by.is_empty() || by.len() > MAX_BY || by.chars().any(char::is_control) {
        return Err(format!(
            "`by` must name who acts: 1 to {MAX_BY} bytes, no control characters"
        ));
    }
    if body.note.len() > MAX_NOTE {
        return Err(format!("`note` is longer than {MAX_NOTE} bytes"));
    }
    Ok(StateBody {
        by: by.to_owned(),
        note: body.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_body_needs_who_and_refuses_unknown_keys_and_oversize() {
        let b = parse_state_body(br#"{"by":" alice ","note":"on it"}"#).unwrap();
        assert_eq!((b.by.as_str(), b.note.as_str()), ("alice", "on it"));
        assert_eq!(parse_state_body(br#"{"by":"alice"}"#).unwrap().note, "");
        let long_by = format!(r#"{{"by":"{}"}}"#, "a".repeat(MAX_BY + 1));
        let long_note = format!(r#"{{"by":"a","note":"{}"}}"#, "n".repeat(MAX_NOTE + 1));
        for bad in [
            "",
            "not json",
            r#"{"note":"x"}"#,
            r#"{"by":"   "}"#,
            r#"{"by":"a\u0007"}"#,
            r#"{"by":"alice","user":"bob"}"#,
            r#"{"by":42}"#,
            &long_by,
            &long_note,
        ] {
            assert!(parse_state_body(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
