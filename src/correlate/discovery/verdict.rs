//! The verdict on one (service, attribute key): a pure function of its summary numbers.
//!
//! The general rule, in order:
//! 1. fewer distinct users than `min_users` → `insufficient_data` (no guesses);
//! 2. a key the reviewed table calls shared → `shared_by_design`;
//! 3. values that are labels (numbers, words, routes, times) → never a suspect: shared labels are
//!    `shared_by_design`, unshared ones are healthy;
//! 4. values that are object identities (or a key the table calls an identity):
//!    - no value served two users → `per_request` (about one request per value) or `per_user`;
//!    - one value served `min_users` or more users → `leak_suspect` (a singleton);
//!    - otherwise most values serve one user but some served two or more → `leak_suspect`
//!      (a partial leak: a pool, a cache, a map keyed wrongly);
//!    - many values each shared by a few users (a team or group id) → `shared_by_design`, unless
//!      the table calls the key an identity.

use serde::Serialize;

use super::known::Known;
use super::shape::Shape;

/// Share of a key's values that must look like identities for the key to be judged as one.
pub const IDENTITY_SHARE: f64 = 0.8;
/// A partial leak: at most this share of an identity key's values served several users.
pub const PARTIAL_SHARE: f64 = 0.2;
/// Requests per value at or below which an unshared identity is per request.
pub const PER_REQUEST_MAX: f64 = 2.0;

/// The verdict on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Listed first: values that look like one object serving several users.
    LeakSuspect,
    InsufficientData,
    PerRequest,
    PerUser,
    SharedByDesign,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::LeakSuspect => "leak_suspect",
            Verdict::InsufficientData => "insufficient_data",
            Verdict::PerRequest => "per_request",
            Verdict::PerUser => "per_user",
            Verdict::SharedByDesign => "shared_by_design",
        }
    }
}

/// The numbers a verdict is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub known: Known,
    /// The most common shape among the key's values.
    pub shape: Shape,
    /// Share (0..=1) of the key's distinct values (as far as classified) shaped as identities.
    pub identity_share: f64,
    pub distinct_values: u64,
    pub distinct_users: u64,
    /// Observations (spans and log records) that carried the key with a known user.
    pub requests: u64,
    /// Values whose users are tracked (all of them unless the key outgrew its table).
    pub tracked_values: u64,
    /// Tracked identity-shaped values seen with two or more users (any value for a key the table
    /// calls an identity).
    pub shared_values: u64,
    /// The most users one such value served.
    pub max_users_per_value: u64,
}

impl Summary {
    fn is_identity(&self) -> bool {
        matches!(self.known, Known::Identity(_)) || self.identity_share >= IDENTITY_SHARE
    }

    pub fn requests_per_value(&self) -> f64 {
        self.requests as f64 / self.distinct_values.max(1) as f64
    }
}

/// Judge a key; the reason is one line with the numbers behind it.
pub fn judge(s: &Summary, min_users: u64) -> (Verdict, String) {
    if s.distinct_users < min_users {
        let why = format!(
            "{} distinct users seen, {} needed for a verdict",
            s.distinct_users, min_users
        );
        return (Verdict::InsufficientData, why);
    }
    if let Known::Shared(why) = s.known {
        return (
            Verdict::SharedByDesign,
            format!("known shared by design: {why}"),
        );
    }
    if !s.is_identity() {
        return label_verdict(s);
    }
    let shape = s.shape.as_str();
    if s.shared_values == 0 {
        return healthy(s, shape);
    }
    if s.max_users_per_value >= min_users {
        let why = format!(
            "one {shape} value served {} users ({} distinct values, {} users): a shared object",
            s.max_users_per_value, s.distinct_values, s.distinct_users
        );
        return (Verdict::LeakSuspect, why);
    }
    let share = s.shared_values as f64 / s.tracked_values.max(1) as f64;
    if share <= PARTIAL_SHARE || matches!(s.known, Known::Identity(_)) {
        let why = format!(
            "{} of {} {shape} values served 2+ users (up to {}), the rest one user each: a partial leak",
            s.shared_values, s.tracked_values, s.max_users_per_value
        );
        return (Verdict::LeakSuspect, why);
    }
    let why = format!(
        "{} of {} {shape} values are each shared by a few users (up to {}): a group id",
        s.shared_values, s.tracked_values, s.max_users_per_value
    );
    (Verdict::SharedByDesign, why)
}

fn healthy(s: &Summary, shape: &str) -> (Verdict, String) {
    let rpv = s.requests_per_value();
    if rpv <= PER_REQUEST_MAX {
        let why = format!(
            "{} {shape} values for {} users, {rpv:.1} requests each, none shared",
            s.distinct_values, s.distinct_users
        );
        (Verdict::PerRequest, why)
    } else {
        let why = format!(
            "{} {shape} values for {} users, none shared",
            s.distinct_values, s.distinct_users
        );
        (Verdict::PerUser, why)
    }
}

fn label_verdict(s: &Summary) -> (Verdict, String) {
    let shape = s.shape.as_str();
    if s.shared_values == 0 && s.distinct_values >= s.distinct_users {
        return healthy(s, shape);
    }
    let why = format!(
        "{} distinct {shape} values shared across {} users: labels, not objects",
        s.distinct_values, s.distinct_users
    );
    (Verdict::SharedByDesign, why)
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
