//! crosstalk: catches cross-user state leaks from a service's traces and WebSocket event logs.
#![forbid(unsafe_code)]

pub mod config;
pub mod correlate;
pub mod normalize;
pub mod sinks;
