//! crosstalk: catches cross-user state leaks from a service's traces and WebSocket event logs.
//!
//! ```text
//!  OTLP/gRPC ─┐                                          ┌─> store (SQLite): bindings, findings, offsets
//!  OTLP/HTTP ─┼─> normalize ─> Observation ─> [queue] ─> engine ─┤
//!  /v1/events ┤   (sources/*,   (normalize/)   (pipeline)  (correlate/) ├─> metrics (/metrics)
//!  event files┘    per task)                                       └─> findings API (api/)
//! ```
//!
//! A newcomer follows one span: [`sources::otlp::http`] reads the request,
//! [`normalize::otlp_fast`] reads each span of a protobuf body straight from its bytes
//! ([`normalize::otlp`] does the same from a decoded message: JSON, gRPC) into an
//! [`normalize::Observation`], [`pipeline`] queues the batch to the engine thread,
//! [`correlate::engine`] decides whether the instance now serves a second user, and [`store`]
//! makes the result durable before the request is answered.
//!
//! Performance is measured by `scripts/bench` (criterion benches under `benches/`, the
//! `crosstalk-loadgen` binary); `fuzz/` holds the cargo-fuzz targets.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod correlate;
pub mod gate;
pub mod http;
pub mod normalize;
pub mod pipeline;
pub mod privacy;
pub mod ready;
pub mod reload;
pub mod serve;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use app::App;
pub use config::Config;
