//! Sinks: where findings and self-telemetry leave crosstalk.

pub mod metrics;
