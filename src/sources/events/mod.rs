//! WebSocket event lines: tailed from log files ([`file`]).

pub mod file;
