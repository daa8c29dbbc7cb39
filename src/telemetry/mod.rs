//! crosstalk's own telemetry: its logs ([`init`]), its Prometheus families ([`metrics`]) and the
//! named internal events ([`events`]) whose one `emit()` both logs and counts.
//!
//! Every other layer (sources, pipeline, correlate, sinks, cluster, api) reports through here;
//! this folder imports none of them.

pub mod events;
pub mod labels;
mod logging;
pub mod metrics;
mod zeros;

pub use logging::init;
pub use metrics::Metrics;
