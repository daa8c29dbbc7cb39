//! OTLP sources, one file per transport: [`http`] (`/v1/traces`, `/v1/logs`, `/v1/metrics`)
//! and [`grpc`] (`TraceService`, `LogsService`, `MetricsService`).
//!
//! What both transports share lives here: [`admit`] submits a normalized export and counts it
//! (refused, or taken with its per-item rejections) the same way on either, and [`answer`]
//! builds the signal's response with `partial_success` set only when some item was rejected.

pub mod grpc;
mod grpc_bounds;
pub mod http;
mod raw_grpc;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::correlate::Received;
use crate::normalize::{Observation, Tally};
use crate::sources::{IngestContext, SubmitError};
use crate::telemetry::events::Rejected;

/// A signal's export response: how it reports items it could not use.
pub trait Answer: Default {
    fn with_partial_success(rejected: i64, error_message: String) -> Self;
}

impl Answer for ExportTraceServiceResponse {
    fn with_partial_success(rejected_spans: i64, error_message: String) -> Self {
        ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans,
                error_message,
            }),
        }
    }
}

impl Answer for ExportLogsServiceResponse {
    fn with_partial_success(rejected_log_records: i64, error_message: String) -> Self {
        ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records,
                error_message,
            }),
        }
    }
}

/// The answer to an export that was taken: `partial_success` only when items were rejected.
pub fn answer<A: Answer>(tally: &Tally) -> A {
    match tally.rejected_total() {
        0 => A::default(),
        n => A::with_partial_success(n as i64, tally.error_message().unwrap_or_default()),
    }
}

/// Submit and wait until durable. A refusal is counted under `source` with its reason; a
/// taken export counts its per-item rejections (only then, so a retried export counts once).
pub async fn admit(
    ctx: &IngestContext,
    source: &'static str,
    observations: Vec<Observation>,
    received: Received,
    tally: &Tally,
    signal: &'static str,
    transport: &'static str,
) -> Result<(), SubmitError> {
    let submitted = ctx
        .submit_and_wait(observations, received, signal, transport, tally.accepted())
        .await;
    match &submitted {
        Ok(()) => ctx.count_rejections(source, tally),
        Err(e) => Rejected {
            source,
            reason: e.reason(),
            n: 1,
        }
        .emit(&ctx.metrics),
    }
    submitted
}
