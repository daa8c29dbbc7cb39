//! OTLP/HTTP: `POST /v1/traces` and `/v1/logs` (protobuf or JSON, optionally gzip), and
//! `POST /v1/events` (WebSocket event lines as NDJSON or a JSON array). `/v1/metrics` is
//! accepted and discarded (counted), so an app exporting every signal here logs no errors.
//!
//! Follows the OTLP/HTTP specification: the response uses the request's content type; an
//! undecodable body is 400 with a `google.rpc.Status`; an unsupported content type is 415;
//! unusable items are reported in `partial_success`; a full queue is 503 with `Retry-After`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::json;

use crate::correlate::Received;
use crate::http::{Handler, HttpResponse, json as json_response, media_type, respond};
use crate::normalize::events::observe_event_value;
use crate::normalize::{Observation, Tally, events::observe_event_line, otlp, otlp_fast};
use crate::sources::body::read_body;
use crate::sources::discovery_tap::Export;
use crate::sources::{IngestContext, SubmitError};
use crate::telemetry::events::{Discarded, Rejected};

const SOURCE: &str = "otlp_http";
const EVENTS_SOURCE: &str = "events_http";
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
/// Per-line errors echoed back in an events response at most.
const MAX_LINE_ERRORS: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

/// The OTLP/HTTP listener's handler.
pub struct OtlpHttp {
    pub ctx: Arc<IngestContext>,
}

impl Handler for OtlpHttp {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        if let Some(token) = &self.ctx.token {
            if !token.accepts(request.headers().get(header::AUTHORIZATION)) {
                let mut r = self.plain_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong bearer token",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        let path = request.uri().path().to_owned();
        let known = matches!(
            path.as_str(),
            "/v1/traces" | "/v1/logs" | "/v1/metrics" | "/v1/events"
        );
        if !known {
            return self.plain_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
        }
        if request.method() != Method::POST {
            let mut r = self.plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        if path == "/v1/events" {
            return self.events(request).await;
        }
        let encoding = match media_type(&request).as_str() {
            PROTOBUF => Encoding::Protobuf,
            JSON => Encoding::Json,
            other => {
                return self.plain_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    &format!("unsupported content type `{other}`: use {PROTOBUF} or {JSON}"),
                );
            }
        };
        let limits = &self.ctx.limits;
        let body = match read_body(
            request,
            limits.max_body_bytes,
            limits.max_decompressed_bytes,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return self.status_error(encoding, e.status(), e.reason(), &e.to_string()),
        };
        match path.as_str() {
            "/v1/traces" => self.traces(encoding, body).await,
            "/v1/metrics" => self.metrics(encoding, body),
            _ => self.logs(encoding, body).await,
        }
    }
}

impl OtlpHttp {
    async fn traces(&self, encoding: Encoding, body: Bytes) -> HttpResponse {
        let received = Received::now();
        let mut tally = Tally::default();
        let ex = &self.ctx.extractor;
        // Protobuf goes through the zero-copy reader, which accepts exactly what prost accepts
        // (see `normalize::otlp_fast`) without building the message.
        let obs = match encoding {
            Encoding::Protobuf => {
                otlp_fast::observe_traces_protobuf(&body, ex, received.wall_ns, &mut tally)
                    .map_err(|e| format!("invalid protobuf: {e}"))
            }
            Encoding::Json => decode::<ExportTraceServiceRequest>(encoding, &body)
                .map(|request| otlp::observe_traces(&request, ex, received.wall_ns, &mut tally)),
        };
        if let Err(refused) = self.admit(encoding, obs, received, &tally, "traces").await {
            return refused;
        }
        if let Some(tap) = &self.ctx.discovery {
            tap.offer(|| match encoding {
                Encoding::Protobuf => Export::TracesProtobuf(body),
                Encoding::Json => Export::TracesJson(body),
            });
        }
        let response = ExportTraceServiceResponse {
            partial_success: (tally.rejected_total() > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: tally.rejected_total() as i64,
                error_message: tally.error_message().unwrap_or_default(),
            }),
        };
        encode(encoding, &response)
    }

    async fn logs(&self, encoding: Encoding, body: Bytes) -> HttpResponse {
        let received = Received::now();
        let mut tally = Tally::default();
        let ex = &self.ctx.extractor;
        let obs = decode::<ExportLogsServiceRequest>(encoding, &body)
            .map(|request| otlp::observe_logs(&request, ex, received.wall_ns, &mut tally));
        if let Err(refused) = self.admit(encoding, obs, received, &tally, "logs").await {
            return refused;
        }
        if let Some(tap) = &self.ctx.discovery {
            tap.offer(|| match encoding {
                Encoding::Protobuf => Export::LogsProtobuf(body),
                Encoding::Json => Export::LogsJson(body),
            });
        }
        let response = ExportLogsServiceResponse {
            partial_success: (tally.rejected_total() > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: tally.rejected_total() as i64,
                error_message: tally.error_message().unwrap_or_default(),
            }),
        };
        encode(encoding, &response)
    }

    /// Decoded (a malformed body is still a 400), counted, dropped: nothing to make durable.
    fn metrics(&self, encoding: Encoding, body: Bytes) -> HttpResponse {
        match decode::<ExportMetricsServiceRequest>(encoding, &body) {
            Ok(request) => {
                let points = otlp::metric_points(&request);
                Discarded {
                    signal: "metrics",
                    n: points,
                }
                .emit(&self.ctx.metrics);
                encode(encoding, &ExportMetricsServiceResponse::default())
            }
            Err(msg) => self.status_error(encoding, StatusCode::BAD_REQUEST, "decode_error", &msg),
        }
    }

    /// Answer a decode error with 400, else submit and wait until durable (503 when refused);
    /// count the payload's per-item rejections once it is taken.
    async fn admit(
        &self,
        encoding: Encoding,
        observations: Result<Vec<Observation>, String>,
        received: Received,
        tally: &Tally,
        signal: &'static str,
    ) -> Result<(), HttpResponse> {
        let observations = observations.map_err(|msg| {
            self.status_error(encoding, StatusCode::BAD_REQUEST, "decode_error", &msg)
        })?;
        self.ctx
            .submit_and_wait(observations, received, signal, "http", tally.accepted())
            .await
            .map_err(|e| self.unavailable(encoding, e))?;
        self.ctx.count_rejections(SOURCE, tally);
        Ok(())
    }

    /// `/v1/events`: NDJSON (one event per line) or a JSON array of events. The answer counts
    /// the lines accepted and rejected and says why each rejected line was.
    async fn events(&self, request: Request<Incoming>) -> HttpResponse {
        let media = media_type(&request);
        let array = match media.as_str() {
            "application/x-ndjson"
            | "application/jsonl"
            | "application/json-seq"
            | "text/plain" => false,
            JSON => true,
            other => {
                Rejected {
                    source: EVENTS_SOURCE,
                    reason: "unsupported_media_type",
                    n: 1,
                }
                .emit(&self.ctx.metrics);
                return json_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &json!({"error": format!("unsupported content type `{other}`: use application/x-ndjson or application/json")}),
                );
            }
        };
        let limits = &self.ctx.limits;
        let body = match read_body(
            request,
            limits.max_body_bytes,
            limits.max_decompressed_bytes,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => {
                Rejected {
                    source: EVENTS_SOURCE,
                    reason: e.reason(),
                    n: 1,
                }
                .emit(&self.ctx.metrics);
                return json_response(e.status(), &json!({"error": e.to_string()}));
            }
        };
        let received = Received::now();
        let ex = &self.ctx.extractor;
        let mut tally = Tally::default();
        let mut errors = Vec::new();
        let mut observations = Vec::new();
        let mut note = |line: usize,
                        result: Result<_, crate::normalize::events::Rejection>,
                        tally: &mut Tally| match result {
            Ok(obs) => observations.push(obs),
            Err(rejection) => {
                tally.reject(rejection.reason, || rejection.message.clone());
                if errors.len() < MAX_LINE_ERRORS {
                    errors.push(json!({"line": line, "reason": rejection.reason.as_str(), "message": rejection.message}));
                }
            }
        };
        if array {
            let values: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
                Ok(serde_json::Value::Array(values)) => values,
                Ok(single @ serde_json::Value::Object(_)) => vec![single],
                Ok(_) => {
                    Rejected {
                        source: EVENTS_SOURCE,
                        reason: "decode_error",
                        n: 1,
                    }
                    .emit(&self.ctx.metrics);
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "expected a JSON array of event objects"}),
                    );
                }
                Err(e) => {
                    Rejected {
                        source: EVENTS_SOURCE,
                        reason: "decode_error",
                        n: 1,
                    }
                    .emit(&self.ctx.metrics);
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": format!("invalid JSON: {e}")}),
                    );
                }
            };
            for (i, v) in values.iter().enumerate() {
                tally.items += 1;
                note(
                    i + 1,
                    observe_event_value(v, ex, received.wall_ns),
                    &mut tally,
                );
            }
        } else {
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                tally.items += 1;
                note(
                    i + 1,
                    observe_event_line(line, ex, received.wall_ns),
                    &mut tally,
                );
            }
        }
        let accepted = tally.accepted();
        if accepted == 0 && tally.rejected_total() > 0 {
            // Nothing usable at all: the request itself is bad.
            self.ctx.count_rejections(EVENTS_SOURCE, &tally);
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "accepted": 0,
                    "rejected": tally.rejected_total(),
                    "reasons": reasons_of(&tally),
                    "errors": errors,
                }),
            );
        }
        if let Err(e) = self
            .ctx
            .submit_and_wait(observations, received, "events", "http", accepted)
            .await
        {
            Rejected {
                source: EVENTS_SOURCE,
                reason: submit_reason(&e),
                n: 1,
            }
            .emit(&self.ctx.metrics);
            let mut r = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": e.to_string()}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        self.ctx.count_rejections(EVENTS_SOURCE, &tally);
        json_response(
            StatusCode::OK,
            &json!({
                "accepted": accepted,
                "rejected": tally.rejected_total(),
                "reasons": reasons_of(&tally),
                "errors": errors,
            }),
        )
    }

    fn plain_error(&self, status: StatusCode, reason: &str, message: &str) -> HttpResponse {
        Rejected {
            source: SOURCE,
            reason,
            n: 1,
        }
        .emit(&self.ctx.metrics);
        self.status_error_uncounted(Encoding::Json, status, message)
    }

    fn status_error(
        &self,
        encoding: Encoding,
        status: StatusCode,
        reason: &str,
        message: &str,
    ) -> HttpResponse {
        Rejected {
            source: SOURCE,
            reason,
            n: 1,
        }
        .emit(&self.ctx.metrics);
        self.status_error_uncounted(encoding, status, message)
    }

    /// A `google.rpc.Status` body in the request's encoding.
    fn status_error_uncounted(
        &self,
        encoding: Encoding,
        status: StatusCode,
        message: &str,
    ) -> HttpResponse {
        let code = match status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3, // INVALID_ARGUMENT
            StatusCode::PAYLOAD_TOO_LARGE => 11,                               // OUT_OF_RANGE
            StatusCode::SERVICE_UNAVAILABLE => 14,                             // UNAVAILABLE
            StatusCode::UNAUTHORIZED => 16,                                    // UNAUTHENTICATED
            StatusCode::NOT_FOUND => 5,
            _ => 2,
        };
        match encoding {
            Encoding::Protobuf => {
                let body = tonic_types::Status {
                    code,
                    message: message.to_owned(),
                    details: Vec::new(),
                };
                respond(status, PROTOBUF, body.encode_to_vec())
            }
            Encoding::Json => respond(
                status,
                JSON,
                json!({"code": code, "message": message}).to_string(),
            ),
        }
    }

    fn unavailable(&self, encoding: Encoding, e: SubmitError) -> HttpResponse {
        let mut r = self.status_error(
            encoding,
            StatusCode::SERVICE_UNAVAILABLE,
            submit_reason(&e),
            &e.to_string(),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }
}

fn reasons_of(tally: &Tally) -> serde_json::Map<String, serde_json::Value> {
    tally
        .rejected
        .iter()
        .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
        .collect()
}

fn submit_reason(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::QueueFull => "queue_full",
        SubmitError::Stopped => "shutting_down",
        SubmitError::Store(_) => "store_error",
    }
}

fn decode<T>(encoding: Encoding, body: &[u8]) -> Result<T, String>
where
    T: Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| format!("invalid protobuf: {e}")),
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|e| format!("invalid OTLP JSON: {e}"))
        }
    }
}

fn encode<T: Message + serde::Serialize>(encoding: Encoding, message: &T) -> HttpResponse {
    let body = match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
    };
    respond(StatusCode::OK, encoding.content_type(), body)
}
