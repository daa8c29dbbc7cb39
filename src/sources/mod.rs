//! Sources: where observations come in.
//!
//! - [`otlp`]: OTLP/HTTP `/v1/traces`, `/v1/logs` ([`otlp::http`], which also routes
//!   `/v1/events`) and OTLP/gRPC `TraceService/Export`, `LogsService/Export` ([`otlp::grpc`]);
//! - [`events`]: WebSocket event lines, posted to `/v1/events` ([`events::http`]) or tailed from
//!   log files with checkpointed offsets ([`events::file`]);
//! - [`discovery_tap`]: hands a sampled copy of each accepted export to discovery.
//!
//! Every source normalizes in its own task and submits through [`submit_and_wait`], which
//! answers only once the batch is durable.

pub mod body;
pub mod discovery_tap;
pub mod events;
pub mod otlp;

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::config::Limits;
use crate::correlate::Received;
use crate::normalize::{Observation, Tally};
use crate::pipeline::{Batch, IngestHandle, Refused};
use crate::reload::SharedExtractor;
use crate::telemetry::events::{Rejected, SpanTimesClamped, ValuesUnusable};
use crate::telemetry::metrics::Metrics;

/// What every network source shares.
pub struct IngestContext {
    pub ingest: IngestHandle,
    /// Swapped whole when a reload changes the watches.
    pub extractor: SharedExtractor,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Required of every OTLP and events request when set.
    pub token: Option<crate::auth::BearerToken>,
    /// Discovery's feed (None when `[discovery] enabled = false`).
    pub discovery: Option<Arc<discovery_tap::DiscoveryTap>>,
}

/// Why a batch was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("crosstalk is overloaded; retry later")]
    QueueFull,
    #[error("crosstalk is shutting down")]
    Stopped,
    #[error("could not make the batch durable: {0}")]
    Store(String),
}

impl SubmitError {
    /// The `reason` label a refusal is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            SubmitError::QueueFull => "queue_full",
            SubmitError::Stopped => "shutting_down",
            SubmitError::Store(_) => "store_error",
        }
    }
}

impl IngestContext {
    /// Read a request body within this listener's compressed and decompressed limits, and
    /// within `limits.body_timeout` (a client trickling its body holds a connection and a
    /// task; it is answered 408).
    pub async fn read_body(
        &self,
        request: http::Request<hyper::body::Incoming>,
    ) -> Result<bytes::Bytes, body::BodyError> {
        let limits = &self.limits;
        let read = body::read_body(
            request,
            limits.max_body_bytes,
            limits.max_decompressed_bytes,
        );
        tokio::time::timeout(limits.body_timeout, read)
            .await
            .map_err(|_| body::BodyError::Timeout(limits.body_timeout))?
    }

    /// Count a payload's per-item rejections under `source`, its unusable attribute values and
    /// its corrected span times.
    pub fn count_rejections(&self, source: &str, tally: &Tally) {
        count_tally(&self.metrics, source, tally);
    }

    /// Enqueue without waiting for room, then wait until the batch is durable.
    pub async fn submit_and_wait(
        &self,
        observations: Vec<Observation>,
        received: Received,
        signal: &'static str,
        transport: &'static str,
        items: u64,
    ) -> Result<(), SubmitError> {
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            observations,
            received,
            signal,
            transport,
            items,
            checkpoint: None,
            ack: Some(tx),
        };
        match self.ingest.try_submit(batch) {
            Ok(()) => {}
            Err(Refused::Full) => return Err(SubmitError::QueueFull),
            Err(Refused::Stopped) => return Err(SubmitError::Stopped),
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SubmitError::Store(e)),
            Err(_) => Err(SubmitError::Stopped),
        }
    }
}

/// Count a payload's per-item rejections under `source`, its unusable attribute values and its
/// corrected span times (for every source, networked or not).
pub fn count_tally(metrics: &Metrics, source: &str, tally: &Tally) {
    for (reason, n) in &tally.rejected {
        Rejected {
            source,
            reason: reason.as_str(),
            n: *n,
        }
        .emit(metrics);
    }
    for (&reason, &n) in &tally.clamped {
        SpanTimesClamped { reason, n }.emit(metrics);
    }
    for (&kind, (n, attribute)) in &tally.unusable {
        ValuesUnusable {
            source,
            kind,
            attribute,
            n: *n,
        }
        .emit(metrics);
    }
}
