//! Sinks: where findings leave crosstalk (self-telemetry lives in `telemetry/`).

pub mod alertmanager;
