//! Correlation: from observations to findings.
//!
//! - [`attribution`]: which user a trace served, and spans waiting to learn it;
//! - [`discovery`]: per-key statistics and verdicts that point at attributes nobody watches;
//! - [`distinct`]: distinct counts, exact while small and a HyperLogLog sketch beyond;
//! - [`engine`]: per-instance bindings, policies, scopes, boundaries, misdelivered events, and
//!   the engine↔store contract (`engine/contract.rs`);
//! - [`evidence`]: per-watch numbers and verdicts (isolated, leaking, blind, ...);
//! - [`finding`]: the findings contract.

pub mod attribution;
pub mod discovery;
pub mod distinct;
pub mod engine;
pub mod evidence;
pub mod finding;

pub use attribution::Received;

/// Maps keyed by ids that the engine looks up on every observation: foldhash (seeded per
/// process) instead of SipHash, which took about 5 % of the engine thread in a profile of the
/// flat-out bench.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use engine::{Effects, Engine, Restored};
pub use finding::{Finding, FindingKind};
