//! Sinks: where findings and self-telemetry leave crosstalk.

pub mod alertmanager;
pub mod metrics;
