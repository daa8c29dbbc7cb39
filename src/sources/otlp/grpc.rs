//! OTLP/gRPC: `TraceService/Export` and `LogsService/Export`, gzip accepted;
//! `MetricsService/Export` accepted and discarded (counted).
//!
//! A full ingest queue answers `UNAVAILABLE` with a `RetryInfo` detail, which OTLP exporters
//! treat as retryable after the given delay.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::correlate::Received;
use crate::normalize::{Tally, otlp};
use crate::sources::discovery_tap::Export;
use crate::sources::{IngestContext, SubmitError};
use crate::telemetry::events::{Discarded, Rejected};

const SOURCE: &str = "otlp_grpc";

/// The gRPC services.
#[derive(Clone)]
pub struct OtlpGrpc {
    ctx: Arc<IngestContext>,
}

impl OtlpGrpc {
    pub fn new(ctx: Arc<IngestContext>) -> Self {
        OtlpGrpc { ctx }
    }

    fn refuse(&self, e: SubmitError) -> Status {
        let reason = match e {
            SubmitError::QueueFull => "queue_full",
            SubmitError::Stopped => "shutting_down",
            SubmitError::Store(_) => "store_error",
        };
        Rejected {
            source: SOURCE,
            reason,
            n: 1,
        }
        .emit(&self.ctx.metrics);
        Status::with_error_details(
            Code::Unavailable,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        )
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let received = Received::now();
        let mut tally = Tally::default();
        let obs = otlp::observe_traces(
            request.get_ref(),
            &self.ctx.extractor,
            received.wall_ns,
            &mut tally,
        );
        self.ctx
            .submit_and_wait(obs, received, "traces", "grpc", tally.accepted())
            .await
            .map_err(|e| self.refuse(e))?;
        self.ctx.count_rejections(SOURCE, &tally);
        if let Some(tap) = &self.ctx.discovery {
            tap.offer(|| Export::Traces(Box::new(request.into_inner())));
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: (tally.rejected_total() > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: tally.rejected_total() as i64,
                error_message: tally.error_message().unwrap_or_default(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let points = otlp::metric_points(request.get_ref());
        Discarded {
            signal: "metrics",
            n: points,
        }
        .emit(&self.ctx.metrics);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let received = Received::now();
        let mut tally = Tally::default();
        let obs = otlp::observe_logs(
            request.get_ref(),
            &self.ctx.extractor,
            received.wall_ns,
            &mut tally,
        );
        self.ctx
            .submit_and_wait(obs, received, "logs", "grpc", tally.accepted())
            .await
            .map_err(|e| self.refuse(e))?;
        self.ctx.count_rejections(SOURCE, &tally);
        if let Some(tap) = &self.ctx.discovery {
            tap.offer(|| Export::Logs(Box::new(request.into_inner())));
        }
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: (tally.rejected_total() > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: tally.rejected_total() as i64,
                error_message: tally.error_message().unwrap_or_default(),
            }),
        }))
    }
}

/// Serve both services on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    service: OtlpGrpc,
    tls: Option<crate::tls::Tls>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max = service.ctx.limits.max_decompressed_bytes;
    let token = service.ctx.token.clone();
    let metrics = service.ctx.metrics.clone();
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let Some(token) = &token else {
            return Ok(request);
        };
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok());
        if token.accepts(header.as_ref()) {
            Ok(request)
        } else {
            Rejected {
                source: SOURCE,
                reason: "unauthorized",
                n: 1,
            }
            .emit(&metrics);
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    };
    let traces = TraceServiceServer::new(service.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let traces = InterceptedService::new(traces, check.clone());
    let logs = LogsServiceServer::new(service.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let logs = InterceptedService::new(logs, check.clone());
    let metrics = MetricsServiceServer::new(service)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let metrics = InterceptedService::new(metrics, check);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    server
        .add_service(traces)
        .add_service(logs)
        .add_service(metrics)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
}
