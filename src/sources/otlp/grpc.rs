//! OTLP/gRPC: `TraceService/Export` and `LogsService/Export`, gzip accepted;
//! `MetricsService/Export` accepted and discarded (counted).
//!
//! A full ingest queue answers `UNAVAILABLE` with a `RetryInfo` detail, which OTLP exporters
//! treat as retryable after the given delay. A message that does not arrive whole within
//! `limits.body_timeout` is answered `DEADLINE_EXCEEDED` ([`super::grpc_bounds`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::net::TcpListener;

use crate::connections::{Admitted, Bounds};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::grpc_bounds::RequestBounds;
use super::raw_grpc::RawTraceServer;
use super::{Answer, admit, answer};
use crate::correlate::Received;
use crate::normalize::{Extractor, Observation, Tally, otlp, otlp_fast};
use crate::ready::Latch;
use crate::sources::body::off_worker;
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

    /// Normalize, admit, offer to discovery and answer: the same for traces and logs.
    async fn export<Req, Resp: Answer>(
        &self,
        request: Request<Req>,
        signal: &'static str,
        observe: fn(&Req, &Extractor, u64, &mut Tally) -> Vec<Observation>,
        tap: fn(Box<Req>) -> Export,
    ) -> Result<Response<Resp>, Status> {
        let received = Received::now();
        let mut tally = Tally::default();
        let obs = observe(
            request.get_ref(),
            &self.ctx.extractor.current(),
            received.wall_ns,
            &mut tally,
        );
        admit(&self.ctx, SOURCE, obs, received, &tally, signal, "grpc")
            .await
            .map_err(unavailable)?;
        if let Some(discovery) = &self.ctx.discovery {
            discovery.offer(|| tap(Box::new(request.into_inner())));
        }
        Ok(Response::new(answer(&tally)))
    }
}

/// A refusal as `UNAVAILABLE` with a `RetryInfo` detail, which exporters retry after the delay.
fn unavailable(e: SubmitError) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        e.to_string(),
        ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
    )
}

impl OtlpGrpc {
    /// `TraceService/Export` from the request's raw bytes (see [`super::raw_grpc`]): the same
    /// reader as OTLP/HTTP protobuf, no prost message. A body prost would refuse is refused as
    /// prost's codec does, with `INTERNAL`.
    pub(super) async fn export_traces_protobuf(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let received = Received::now();
        let body = request.into_inner();
        let (ex, now_ns, bytes) = (self.ctx.extractor.current(), received.wall_ns, body.clone());
        let (obs, tally) = off_worker(body.len(), move || {
            let mut tally = Tally::default();
            let obs = otlp_fast::observe_traces_protobuf(&bytes, &ex, now_ns, &mut tally);
            (obs, tally)
        })
        .await;
        let obs = obs.map_err(|e| Status::new(Code::Internal, format!("invalid protobuf: {e}")))?;
        admit(&self.ctx, SOURCE, obs, received, &tally, "traces", "grpc")
            .await
            .map_err(unavailable)?;
        if let Some(discovery) = &self.ctx.discovery {
            discovery.offer(|| Export::TracesProtobuf(body));
        }
        Ok(Response::new(answer(&tally)))
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
        OtlpGrpc::export(self, request, "logs", otlp::observe_logs, Export::Logs).await
    }
}

/// The listener as tonic's stream of connections. Tonic first asks it for one once its set-up
/// (TLS included) succeeded and it is serving: that is when `up` is released.
struct Serving {
    listener: ReceiverStream<std::io::Result<Admitted>>,
    up: Option<Latch>,
}

impl Stream for Serving {
    type Item = std::io::Result<Admitted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(up) = self.up.take() {
            up.release();
        }
        Pin::new(&mut self.listener).poll_next(cx)
    }
}

/// Serve both services on `listener` until `shutdown` fires; `up` is released once serving.
/// An error is a server that never served or stopped serving.
pub async fn serve(
    listener: TcpListener,
    service: OtlpGrpc,
    bounds: Bounds,
    tls: Option<crate::tls::Tls>,
    shutdown: CancellationToken,
    up: Latch,
) -> Result<(), tonic::transport::Error> {
    let max = service.ctx.limits.max_decompressed_bytes;
    let token = service.ctx.token.clone();
    let metrics = service.ctx.metrics.clone();
    let requests = RequestBounds::new(service.ctx.limits.body_timeout, metrics.clone(), SOURCE);
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
    let traces = RawTraceServer::new(service.clone(), max);
    let traces = requests.around(InterceptedService::new(traces, check.clone()));
    let logs = LogsServiceServer::new(service.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let logs = requests.around(InterceptedService::new(logs, check.clone()));
    let metrics = MetricsServiceServer::new(service)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let metrics = requests.around(InterceptedService::new(metrics, check));
    // HTTP/2 pings find dead peers: one unanswered within header_timeout closes the connection.
    // A connection's first request must start within header_timeout of its accept (the
    // listener's connections see to it), and each message must arrive whole within
    // body_timeout (`RequestBounds`).
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(bounds.idle_timeout))
        .http2_keepalive_timeout(Some(bounds.header_timeout));
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let incoming = Serving {
        listener: bounds.incoming(listener),
        up: Some(up),
    };
    server
        .add_service(traces)
        .add_service(logs)
        .add_service(metrics)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
