//! `POST /v1/events`, routed here by the OTLP/HTTP listener after its token, path and method
//! checks: WebSocket event lines as NDJSON (one event per line) or a JSON array of events.
//!
//! The answer counts the lines accepted and rejected and says why each rejected line was:
//! `{"accepted", "rejected", "reasons", "errors": [{"line", "reason", "message"}]}` (200, or 400
//! when no line was usable); a request unreadable as a whole is `{"error": "..."}`. Either way
//! the answer comes only once the accepted lines are durable, as for OTLP.

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::lines::numbered;
use crate::correlate::Received;
use crate::http::{HttpResponse, json as json_response, media_type};
use crate::normalize::events::{Rejection, observe_event_line, observe_event_value};
use crate::normalize::{Extractor, Observation, Tally};
use crate::sources::IngestContext;
use crate::sources::body::off_worker;
use crate::telemetry::events::Rejected;

const SOURCE: &str = "events_http";
/// Per-line errors echoed back in an answer at most.
const MAX_LINE_ERRORS: usize = 100;

/// Answer one `/v1/events` request.
pub async fn handle(ctx: &IngestContext, request: Request<Incoming>) -> HttpResponse {
    let array = match media_type(&request).as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/json-seq" | "text/plain" => {
            false
        }
        "application/json" => true,
        other => {
            let message = format!(
                "unsupported content type `{other}`: use application/x-ndjson or application/json"
            );
            return refuse(
                ctx,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                &message,
            );
        }
    };
    let body = match ctx.read_body(request).await {
        Ok(b) => b,
        Err(e) => return refuse(ctx, e.status(), e.reason(), &e.to_string()),
    };
    let received = Received::now();
    let (ex, now_ns) = (ctx.extractor.current(), received.wall_ns);
    let parsed = off_worker(body.len(), move || parse(&body, array, &ex, now_ns));
    let parsed = match parsed.await {
        Ok(parsed) => parsed,
        Err(message) => return refuse(ctx, StatusCode::BAD_REQUEST, "decode_error", &message),
    };
    let Parsed {
        observations,
        tally,
        errors,
    } = parsed;
    let accepted = tally.accepted();
    if accepted == 0 && tally.rejected_total() > 0 {
        // Nothing usable at all: the request itself is bad.
        ctx.count_rejections(SOURCE, &tally);
        return json_response(StatusCode::BAD_REQUEST, &summary(&tally, errors));
    }
    let submitted = ctx
        .submit_and_wait(observations, received, "events", "http", accepted)
        .await;
    if let Err(e) = submitted {
        return refuse(
            ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            e.reason(),
            &e.to_string(),
        );
    }
    ctx.count_rejections(SOURCE, &tally);
    json_response(StatusCode::OK, &summary(&tally, errors))
}

/// A request refused whole: counted once under `reason`; a 503 says when to retry.
fn refuse(ctx: &IngestContext, status: StatusCode, reason: &str, message: &str) -> HttpResponse {
    Rejected {
        source: SOURCE,
        reason,
        n: 1,
    }
    .emit(&ctx.metrics);
    let mut r = json_response(status, &json!({ "error": message }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// The body's events, parsed one by one.
#[derive(Default)]
struct Parsed {
    observations: Vec<Observation>,
    tally: Tally,
    /// The first [`MAX_LINE_ERRORS`] rejected lines, as the answer shows them.
    errors: Vec<Value>,
}

impl Parsed {
    fn note(&mut self, line: usize, result: Result<Observation, Rejection>) {
        self.tally.items += 1;
        match result {
            Ok(obs) => self.observations.push(obs),
            Err(rejection) => {
                self.tally
                    .reject(rejection.reason, || rejection.message.clone());
                if self.errors.len() < MAX_LINE_ERRORS {
                    self.errors.push(json!({"line": line, "reason": rejection.reason.as_str(), "message": rejection.message}));
                }
            }
        }
    }
}

/// Parse every event; Err only when a JSON array body is not one.
fn parse(body: &Bytes, array: bool, ex: &Extractor, now_ns: u64) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    if !array {
        for (line, text) in numbered(body.split(|b| *b == b'\n')) {
            let result = observe_event_line(text, ex, now_ns, &mut parsed.tally);
            parsed.note(line, result);
        }
        return Ok(parsed);
    }
    let values = match serde_json::from_slice(body) {
        Ok(Value::Array(values)) => values,
        Ok(single @ Value::Object(_)) => vec![single],
        Ok(_) => return Err("expected a JSON array of event objects".to_owned()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    for (i, v) in values.iter().enumerate() {
        let result = observe_event_value(v, ex, now_ns, &mut parsed.tally);
        parsed.note(i + 1, result);
    }
    Ok(parsed)
}

fn summary(tally: &Tally, errors: Vec<Value>) -> Value {
    let reasons: serde_json::Map<String, Value> = tally
        .rejected
        .iter()
        .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "accepted": tally.accepted(),
        "rejected": tally.rejected_total(),
        "reasons": reasons,
        "errors": errors,
    })
}
