//! OTLP sources, one file per transport: [`http`] (`/v1/traces`, `/v1/logs`, `/v1/metrics`)
//! and [`grpc`] (`TraceService`, `LogsService`, `MetricsService`).

pub mod grpc;
pub mod http;
