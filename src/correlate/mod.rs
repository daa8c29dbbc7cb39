//! Correlation: from observations to findings.
//!
//! - [`attribution`]: which user a trace served, and spans waiting to learn it;
//! - [`engine`]: per-instance bindings, policies, scopes, boundaries, misdelivered events;
//! - [`finding`]: the findings contract.

pub mod attribution;
pub mod engine;
pub mod finding;

pub use attribution::Received;
pub use engine::{Effects, Engine, Restored};
pub use finding::{Finding, FindingKind};
