//! OTLP/HTTP: `POST /v1/traces` and `/v1/logs` (protobuf or JSON, optionally gzip). `/v1/metrics`
//! is accepted and discarded (counted), so an app exporting every signal here logs no errors.
//! The listener also serves `POST /v1/events` (see `sources::events::http`) behind the same
//! token, path and method checks.
//!
//! Follows the OTLP/HTTP specification: the response uses the request's content type; an
//! undecodable body is 400 with a `google.rpc.Status`; an unsupported content type is 415;
//! unusable items are reported in `partial_success`; a full queue is 503 with `Retry-After`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::json;

use super::{Answer, admit, answer};
use crate::correlate::Received;
use crate::http::{Handler, HttpResponse, media_type, respond};
use crate::normalize::{Extractor, Observation, Tally, otlp, otlp_fast};
use crate::sources::body::off_worker;
use crate::sources::discovery_tap::Export;
use crate::sources::{IngestContext, events};
use crate::telemetry::events::{Discarded, Rejected};

const SOURCE: &str = "otlp_http";
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

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
                let status = StatusCode::UNAUTHORIZED;
                let message = "missing or wrong bearer token";
                let r = self.plain_error(status, "unauthorized", message);
                return with_header(r, header::WWW_AUTHENTICATE, "Bearer");
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
            let status = StatusCode::METHOD_NOT_ALLOWED;
            let r = self.plain_error(status, "method_not_allowed", "use POST");
            return with_header(r, header::ALLOW, "POST");
        }
        if path == "/v1/events" {
            return events::http::handle(&self.ctx, request).await;
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
        let body = match self.ctx.read_body(request).await {
            Ok(b) => b,
            Err(e) => return self.status_error(encoding, e.status(), e.reason(), &e.to_string()),
        };
        match path.as_str() {
            "/v1/traces" => {
                self.export::<ExportTraceServiceResponse>(encoding, body, TRACES)
                    .await
            }
            "/v1/metrics" => self.metrics(encoding, body).await,
            _ => {
                self.export::<ExportLogsServiceResponse>(encoding, body, LOGS)
                    .await
            }
        }
    }
}

impl OtlpHttp {
    /// Normalize, admit, offer to discovery and answer: the same for traces and logs.
    async fn export<A>(&self, encoding: Encoding, body: Bytes, signal: Signal) -> HttpResponse
    where
        A: Answer + Message + serde::Serialize,
    {
        let received = Received::now();
        let (obs, tally) = self.normalize(encoding, &body, received, signal.of).await;
        if let Err(refused) = self
            .admit(encoding, obs, received, &tally, signal.name)
            .await
        {
            return refused;
        }
        self.offer(|| signal.tap(encoding, body));
        encode(encoding, &answer::<A>(&tally))
    }

    /// Decode and normalize, off the async worker when the body is big (see `off_worker`).
    async fn normalize(
        &self,
        encoding: Encoding,
        body: &Bytes,
        received: Received,
        of: Normalize,
    ) -> (Result<Vec<Observation>, String>, Tally) {
        let (body, ex, now_ns) = (body.clone(), self.ctx.extractor.current(), received.wall_ns);
        off_worker(body.len(), move || {
            let mut tally = Tally::default();
            let obs = of(encoding, &body, &ex, now_ns, &mut tally);
            (obs, tally)
        })
        .await
    }

    fn offer(&self, export: impl FnOnce() -> Export) {
        if let Some(tap) = &self.ctx.discovery {
            tap.offer(export);
        }
    }

    /// Decoded (a malformed body is still a 400), counted, dropped: nothing to make durable.
    async fn metrics(&self, encoding: Encoding, body: Bytes) -> HttpResponse {
        let points = off_worker(body.len(), move || {
            decode::<ExportMetricsServiceRequest>(encoding, &body).map(|r| otlp::metric_points(&r))
        });
        match points.await {
            Ok(points) => {
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

    /// Answer a decode error with 400, else submit and wait until durable (503 when refused).
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
        admit(
            &self.ctx,
            SOURCE,
            observations,
            received,
            tally,
            signal,
            "http",
        )
        .await
        .map_err(|e| {
            let status = StatusCode::SERVICE_UNAVAILABLE;
            let mut r = status_body(encoding, status, &e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        })
    }

    fn plain_error(&self, status: StatusCode, reason: &str, message: &str) -> HttpResponse {
        self.status_error(Encoding::Json, status, reason, message)
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
        status_body(encoding, status, message)
    }
}

/// A refusal that tells the client what to do (`WWW-Authenticate`, `Allow`, `Retry-After`).
fn with_header(mut r: HttpResponse, name: header::HeaderName, value: &'static str) -> HttpResponse {
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    r
}

/// A `google.rpc.Status` body in the request's encoding.
fn status_body(encoding: Encoding, status: StatusCode, message: &str) -> HttpResponse {
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

/// Discovery's copy of an accepted body.
type Tap = fn(Bytes) -> Export;

/// What differs between the signals: how a body is read, how discovery is handed it.
struct Signal {
    name: &'static str,
    of: Normalize,
    /// Discovery's copy of a protobuf body, and of a JSON one.
    taps: (Tap, Tap),
}

impl Signal {
    fn tap(&self, encoding: Encoding, body: Bytes) -> Export {
        match encoding {
            Encoding::Protobuf => (self.taps.0)(body),
            Encoding::Json => (self.taps.1)(body),
        }
    }
}

const TRACES: Signal = Signal {
    name: "traces",
    // Protobuf goes through the zero-copy reader, which accepts exactly what prost accepts
    // (see `normalize::otlp_fast`) without building the message.
    of: |encoding, body, ex, now_ns, tally| match encoding {
        Encoding::Protobuf => otlp_fast::observe_traces_protobuf(body, ex, now_ns, tally)
            .map_err(|e| format!("invalid protobuf: {e}")),
        Encoding::Json => decode::<ExportTraceServiceRequest>(encoding, body)
            .map(|request| otlp::observe_traces(&request, ex, now_ns, tally)),
    },
    taps: (Export::TracesProtobuf, Export::TracesJson),
};

const LOGS: Signal = Signal {
    name: "logs",
    of: |encoding, body, ex, now_ns, tally| {
        decode::<ExportLogsServiceRequest>(encoding, body)
            .map(|request| otlp::observe_logs(&request, ex, now_ns, tally))
    },
    taps: (Export::LogsProtobuf, Export::LogsJson),
};

/// A body's observations (Err: undecodable), its unusable items counted in the tally.
type Normalize =
    fn(Encoding, &[u8], &Extractor, u64, &mut Tally) -> Result<Vec<Observation>, String>;

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
