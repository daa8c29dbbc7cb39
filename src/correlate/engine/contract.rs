//! The engine↔store contract: what one batch changed that must be durable ([`Effects`]) and
//! what the store hands back at start-up ([`Restored`]). Plain named rows, no SQL, no I/O: the
//! store maps them to tables, the engine to its state.

use std::collections::BTreeMap;

use crate::correlate::evidence::SeenRow;
use crate::correlate::finding::{Finding, UserCounter};
use crate::normalize::{Signal, SpanId, TraceId};

use super::remote::ClusterCheck;

/// A process scope first seen by this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRow {
    pub scope_key: String,
    /// Resource identity attributes as JSON.
    pub identity_json: String,
}

/// A process scope as the store remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredScope {
    pub scope_key: String,
    pub identity: BTreeMap<String, String>,
}

/// A binding (instance, user) to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    pub watch: String,
    pub scope_key: String,
    pub instance: String,
    pub user: String,
    pub tenant: Option<String>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub last_start_ns: u64,
    pub last_end_ns: u64,
    /// Raw ids and the signal, not their text: a binding row is made for every new
    /// (instance, user) pair, and the store writes the hex without allocating.
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub signal: Signal,
    pub evidence_scope_key: String,
}

/// An instance whose bindings were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedInstance {
    pub watch: String,
    pub scope_key: String,
    pub instance: String,
}

/// A finding with the columns the store indexes it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRecord {
    pub finding: Finding,
    pub scope_key: String,
    pub detected_ns: u64,
    pub last_seen_ns: u64,
    /// Every distinct user, counted (the finding lists only the first few): stored compactly
    /// beside the finding, so that growing it after a restart costs O(1) per observation.
    pub users: UserCounter,
}

/// A finding created or grown by this batch, for sinks that react to news (alerts, logs).
#[derive(Debug, Clone)]
pub struct FindingNews {
    pub id: String,
    pub new: bool,
    /// For a new finding: when the conflicting observation was received. The detection delay
    /// is measured from it once the finding is committed (visible), not inside the engine.
    pub received: Option<std::time::Instant>,
    /// Users this news adds to the finding (all of them for a new one): counted in
    /// `crosstalk_affected_users_total` only once the commit succeeds, so a refused batch
    /// that is retried is not counted twice.
    pub users: u64,
    /// The conflicting span's trace, the exemplar of `crosstalk_findings_total`.
    pub trace: Option<TraceId>,
}

/// An observation acknowledged while still waiting for its trace's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    /// Engine-assigned, increasing; the row's key.
    pub seq: u64,
    pub received_ns: u64,
    /// The observation as JSON (see `restore.rs`).
    pub body: String,
}

/// What one batch changed that must be durable before it is acknowledged.
#[derive(Debug, Default)]
pub struct Effects {
    pub scopes: Vec<ScopeRow>,
    pub bindings: Vec<BindingRow>,
    pub evicted: Vec<EvictedInstance>,
    /// Findings to upsert (new, grown, or with a later `last_seen`).
    pub findings: Vec<FindingRecord>,
    /// Findings past `storage.findings_retention`: deleted, by id, after the upserts.
    pub expired_findings: Vec<String>,
    pub news: Vec<FindingNews>,
    /// New (instance, user) pairs of coordinated global watches, for Redis to judge.
    pub cluster: Vec<ClusterCheck>,
    /// Observations now waiting for their trace's user, to persist.
    pub parked: Vec<PendingRow>,
    /// Waiting rows settled since (or unreadable at restore): they go, by `seq`.
    pub unparked: Vec<u64>,
    /// First/last observation per (watch, service), so that `blind` survives a restart.
    pub evidence: Vec<SeenRow>,
}

impl Effects {
    /// Nothing to write (news alone never is: it always comes with its finding).
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
            && self.bindings.is_empty()
            && self.evicted.is_empty()
            && self.findings.is_empty()
            && self.expired_findings.is_empty()
            && self.parked.is_empty()
            && self.unparked.is_empty()
            && self.evidence.is_empty()
    }
}

/// State read back from the store at start-up.
#[derive(Debug, Default)]
pub struct Restored {
    pub scopes: Vec<RestoredScope>,
    pub bindings: Vec<BindingRow>,
    pub findings: Vec<FindingRecord>,
    /// Observations that were waiting for their trace's user, oldest first.
    pub pending: Vec<PendingRow>,
    /// First/last observation per (watch, service).
    pub evidence: Vec<SeenRow>,
}
