//! crosstalk's integration tests: one binary, real servers on port 0, real clients.

mod util;

mod cli;
mod events;
mod otlp;
