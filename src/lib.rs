//! crosstalk: catches cross-user state leaks from a service's traces and WebSocket event logs.
//!
//! ```text
//!  OTLP/gRPC ─┐                                          ┌─> store (SQLite): bindings, findings, offsets
//!  OTLP/HTTP ─┼─> normalize ─> Observation ─> [queue] ─> engine ─┤
//!  /v1/events ┤   (sources/*,   (normalize/)   (pipeline)  (correlate/) ├─> metrics (/metrics)
//!  event files┘    per task)                                       └─> findings API (api/)
//! ```
//!
//! A newcomer follows one span through five files (socket → normalize → engine → store →
//! finding/API):
//!
//! 1. `sources/otlp/http.rs` (or `sources/otlp/grpc.rs`) reads the request and answers only once
//!    the batch is durable;
//! 2. `normalize/otlp_fast.rs` reads each span of a protobuf body straight from its bytes into an
//!    `Observation` (`normalize/otlp.rs` does the same from a decoded message), and `pipeline.rs`
//!    queues the batch to the engine thread;
//! 3. `correlate/engine/observe.rs` decides whether the instance now serves a second user;
//! 4. `store/writer.rs` commits the effects in one transaction;
//! 5. `correlate/finding.rs` is the finding's JSON, served by `api/mod.rs`.
//!
//! Folders: `config/` (raw → resolved `Config`), `sources/` (`otlp/`, `events/`), `normalize/`,
//! `correlate/` (`engine/`, `discovery/`, `evidence/`), `store/` (the only owner of SQL),
//! `sinks/` (Alertmanager), `telemetry/` (self-metrics, named events), `api/` (admin router),
//! `gate/` (`check`, `discover`, `run`), `cluster/`. Files: `cli.rs` parses and dispatches,
//! `serve.rs` runs `serve` and its signals, `app.rs` wires everything and owns the one shutdown,
//! `ready.rs` is the readiness latch. No folder imports a folder that imports it back.
//!
//! Performance is measured by `scripts/bench` (criterion benches under `benches/`, the
//! `crosstalk-loadgen` binary); `fuzz/` holds the cargo-fuzz targets.
#![forbid(unsafe_code)]

// The public surface is only what the binaries, benches, fuzz targets and integration tests
// reach (`main.rs`: `cli`, `telemetry`; `crosstalk-loadgen` and `benches/`: `config`,
// `correlate`, `normalize`, `store`, `telemetry`; `fuzz/`: `config`, `correlate`,
// `normalize`). Everything else is private, so the compiler reports what nothing uses.
mod api;
mod app;
mod auth;
#[doc(hidden)]
pub mod cli;
mod cluster;
#[doc(hidden)]
pub mod config;
mod connections;
#[doc(hidden)]
pub mod correlate;
mod gate;
mod http;
#[doc(hidden)]
pub mod normalize;
mod pipeline;
mod privacy;
mod ready;
mod reload;
mod serve;
mod sinks;
mod sources;
#[doc(hidden)]
pub mod store;
#[doc(hidden)]
pub mod telemetry;
mod tls;

pub use app::App;
pub use config::Config;
