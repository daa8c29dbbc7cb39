//! Findings: the JSON contract of `/api/v1/findings`, `crosstalk check` and alerts.
//!
//! A finding's id is derived from what it is about (kind, watch, scope, instance), so the same
//! instance can never be found twice, across restarts or across sidecars.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Users and evidence items a finding lists at most; `user_count` keeps counting past it.
pub const MAX_LISTED_USERS: usize = 100;
/// Distinct users a finding counts exactly (a set of 64-bit hashes); a sketch beyond.
pub const EXACT_USERS: usize = 10_000;

/// A finding's distinct users: exact up to [`EXACT_USERS`], then HyperLogLog (precision 14).
pub type UserCounter = crate::correlate::distinct::DistinctCounter<14, EXACT_USERS>;

fn exact_by_default() -> bool {
    true
}
pub const MAX_EVIDENCE: usize = 50;

/// The two kinds of cross-user leak crosstalk reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// One instance served more than one user (or tenant) against its watch's policy.
    SharedInstance,
    /// An event carrying one user's data reached a connection authenticated as another user.
    MisdeliveredEvent,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::SharedInstance => "shared_instance",
            FindingKind::MisdeliveredEvent => "misdelivered_event",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "shared_instance" => Some(FindingKind::SharedInstance),
            "misdelivered_event" => Some(FindingKind::MisdeliveredEvent),
            _ => None,
        }
    }
}

/// One observation that backs a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub time: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    /// `span`, `log` or `event`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Where the instance was made (`module:function:line`), as the service reported it in the
    /// watch attribute's companion `.origin` attribute; an instance has one origin, so every
    /// entry of a finding shows the one reported with the observation that raised or grew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Evidence {
    /// This entry, naming where the instance was made (if known).
    pub fn with_origin(mut self, origin: Option<&str>) -> Self {
        self.origin = origin.map(str::to_owned);
        self
    }
}

/// A cross-user leak. Field names are a fixed contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FindingKind,
    pub watch: String,
    pub instance: String,
    /// Resource attributes of the process the instance lives in (for global watches: of the
    /// process that reported the conflict).
    pub scope: BTreeMap<String, String>,
    pub service: String,
    pub policy: String,
    pub boundary: String,
    pub severity: String,
    /// Distinct users, in order first seen (event time); at most [`MAX_LISTED_USERS`].
    pub users: Vec<String>,
    /// Distinct users: exact up to [`EXACT_USERS`], a HyperLogLog estimate beyond (±2 % at
    /// 100 k); never decreasing.
    pub user_count: u64,
    /// False once `user_count` is an estimate.
    #[serde(default = "exact_by_default")]
    pub user_count_exact: bool,
    /// Distinct tenants involved, in order first seen, where known.
    pub tenants: Vec<String>,
    /// Whether the users involved belong to more than one tenant.
    pub cross_tenant: bool,
    pub first_seen: String,
    pub detected_at: String,
    pub last_seen: String,
    pub evidence: Vec<Evidence>,
    /// Where people are with it: `open` until acknowledged or resolved through the API; a new
    /// user reopens a resolved finding. The store holds it beside the finding (the engine's
    /// copy is always `open`), so it survives restarts and the engine never overwrites it.
    #[serde(default)]
    pub state: FindingState,
    /// Who last set `state`, when, and why (crosstalk itself when it reopened the finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_change: Option<StateChange>,
}

/// Where a finding is in its triage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    /// Alerts are sent (and re-sent) for it.
    #[default]
    Open,
    /// Someone is on it: no more alerts, even when it grows.
    Acknowledged,
    /// Fixed, as far as people know: reopens when it gains a user it did not list.
    Resolved,
}

impl FindingState {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingState::Open => "open",
            FindingState::Acknowledged => "acknowledged",
            FindingState::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(FindingState::Open),
            "acknowledged" => Some(FindingState::Acknowledged),
            "resolved" => Some(FindingState::Resolved),
            _ => None,
        }
    }
}

/// The last change of a finding's `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// Who: the `by` of the API request, or `crosstalk` for a reopening.
    pub by: String,
    /// When, RFC 3339.
    pub at: String,
    pub note: String,
}

/// What a finding is about: everything fixed when it is raised. Its id derives from
/// (kind, watch, scope key, instance).
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub kind: FindingKind,
    pub watch: &'a str,
    /// The interned process scope of the instance; empty for global watches.
    pub scope_key: &'a str,
    pub instance: &'a str,
    /// Resource attributes of the process that reported it.
    pub scope: BTreeMap<String, String>,
    pub service: &'a str,
    pub policy: &'a str,
    pub boundary: &'a str,
    /// The watch's severity; growth across tenants raises it to `critical`.
    pub severity: &'a str,
}

/// A finding's lists before one `absorb`: growth only appends, so cutting them back to these
/// lengths undoes it (the engine's undo log keeps this until the batch is committed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lengths {
    pub users: usize,
    pub user_count: u64,
    pub tenants: usize,
    pub evidence: usize,
}

/// What one `absorb` (the engine's single growth path for findings) changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Growth {
    /// Users the finding did not count before.
    pub users: u64,
    /// Tenants it did not name before.
    pub tenants: usize,
    /// It crossed tenants with this growth and its severity was raised to `critical`.
    pub escalated: bool,
    /// `last_seen` moved later.
    pub last_seen: bool,
    /// The lists before, to undo the growth.
    pub before: Lengths,
    /// Hashes of the users an exact count took in (to take them back if undone).
    pub counted: Vec<u64>,
}

impl Growth {
    /// News for sinks that react to a finding (alerts, logs): more users, or now critical.
    pub fn is_news(&self) -> bool {
        self.users > 0 || self.escalated
    }

    /// Anything that must be written back.
    pub fn changed(&self) -> bool {
        self.is_news() || self.tenants > 0 || self.last_seen
    }

    /// Anything a later judgement depends on (all but `last_seen`): what the undo log keeps.
    pub fn structural(&self) -> bool {
        self.is_news() || self.tenants > 0
    }
}

impl Finding {
    /// A finding with no users yet: the engine's `absorb` adds them. `first_seen` is fixed here;
    /// `last_seen` starts there and only moves later.
    pub fn new(subject: Subject<'_>, first_seen_ns: u64, detected_ns: u64) -> Finding {
        Finding {
            id: finding_id(
                subject.kind,
                subject.watch,
                subject.scope_key,
                subject.instance,
            ),
            kind: subject.kind,
            watch: subject.watch.to_owned(),
            instance: subject.instance.to_owned(),
            scope: subject.scope,
            service: subject.service.to_owned(),
            policy: subject.policy.to_owned(),
            boundary: subject.boundary.to_owned(),
            severity: subject.severity.to_owned(),
            users: Vec::new(),
            user_count: 0,
            user_count_exact: true,
            tenants: Vec::new(),
            cross_tenant: false,
            first_seen: rfc3339(first_seen_ns),
            detected_at: rfc3339(detected_ns),
            last_seen: rfc3339(first_seen_ns),
            evidence: Vec::new(),
            state: FindingState::Open,
            state_change: None,
        }
    }

    /// Whether `user` is listed (the first [`MAX_LISTED_USERS`]).
    pub fn names(&self, user: &str) -> bool {
        self.users.iter().any(|u| u == user)
    }
}

/// The id of the finding about one instance: 16 hex digits of SHA-256 over its identity.
pub fn finding_id(kind: FindingKind, watch: &str, scope_key: &str, instance: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind.as_str(), watch, scope_key, instance] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Unix nanoseconds as RFC 3339 (UTC, `Z`). Out-of-range values clamp to the epoch.
pub fn rfc3339(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// RFC 3339 text as Unix nanoseconds; times before the epoch are refused, times past 2262
/// (where nanoseconds leave `i64`, the store's integer) saturate.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let ns = t.unix_timestamp_nanos();
    (ns >= 0).then(|| ns.min(i64::MAX as i128) as u64)
}

/// Now, in Unix nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = finding_id(FindingKind::SharedInstance, "w", "s", "i");
        assert_eq!(a, finding_id(FindingKind::SharedInstance, "w", "s", "i"));
        assert_ne!(a, finding_id(FindingKind::SharedInstance, "w", "", "si"));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn time_round_trips() {
        let ns = 1_767_323_045_500_000_000;
        assert_eq!(rfc3339(ns), "2026-01-02T03:04:05.5Z");
        assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
    }
}
