//! crosstalk's integration tests: one binary, real servers on port 0, real clients.

mod util;

mod alerting;
mod allocations;
mod cli;
mod cluster;
mod dashboards;
mod discovery;
mod durability;
mod e2e;
mod edges;
mod events;
mod evidence;
mod gate;
mod grpc_edges;
mod grpc_raw;
mod hostile;
mod kit;
mod operator;
mod otlp;
mod reload;
mod span_times;
mod store_faults;
mod triage;
