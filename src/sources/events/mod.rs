//! WebSocket event lines: posted to `/v1/events` ([`http`]) or tailed from log files
//! ([`file`]); both cut and number lines the same way ([`lines`]) before
//! `normalize::events` parses each.

pub mod file;
pub mod http;
pub mod lines;
