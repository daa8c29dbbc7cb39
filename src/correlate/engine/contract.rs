//! The engine↔store contract: what one batch changed that must be durable ([`Effects`]) and
//! what the store hands back at start-up, row by row ([`RestoreSink`]; [`Restored`] collects
//! them). Plain named rows, no SQL, no I/O: the store maps them to tables, the engine to its
//! state.

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

impl BindingRow {
    /// The row as the store reads it back.
    pub fn as_stored(&self) -> StoredBinding<'_> {
        StoredBinding {
            watch: &self.watch,
            scope_key: &self.scope_key,
            instance: &self.instance,
            user: &self.user,
            tenant: self.tenant.as_deref(),
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            last_start_ns: self.last_start_ns,
            last_end_ns: self.last_end_ns,
            trace_id: self.trace_id,
            span_id: self.span_id,
            signal: self.signal,
            evidence_scope_key: &self.evidence_scope_key,
        }
    }
}

/// A binding as the store reads it back, borrowed from the row being read: restoring a million
/// bindings allocates only what the engine keeps of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBinding<'a> {
    pub watch: &'a str,
    pub scope_key: &'a str,
    pub instance: &'a str,
    pub user: &'a str,
    pub tenant: Option<&'a str>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub last_start_ns: u64,
    pub last_end_ns: u64,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub signal: Signal,
    pub evidence_scope_key: &'a str,
}

impl From<StoredBinding<'_>> for BindingRow {
    fn from(b: StoredBinding<'_>) -> Self {
        BindingRow {
            watch: b.watch.to_owned(),
            scope_key: b.scope_key.to_owned(),
            instance: b.instance.to_owned(),
            user: b.user.to_owned(),
            tenant: b.tenant.map(str::to_owned),
            first_ns: b.first_ns,
            last_ns: b.last_ns,
            last_start_ns: b.last_start_ns,
            last_end_ns: b.last_end_ns,
            trace_id: b.trace_id,
            span_id: b.span_id,
            signal: b.signal,
            evidence_scope_key: b.evidence_scope_key.to_owned(),
        }
    }
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

/// Where the store's rows go at start-up, one at a time, so that nothing holds every row at
/// once. The store hands them in this order, which the engine relies on: every scope, then
/// every binding (after `expect_bindings`), then findings, waiting observations (oldest
/// first) and first/last observation times.
pub trait RestoreSink {
    /// How many bindings follow: an upper bound on the instances they make.
    fn expect_bindings(&mut self, _count: usize) {}
    fn scope(&mut self, scope: RestoredScope);
    fn binding(&mut self, binding: StoredBinding<'_>);
    fn finding(&mut self, record: FindingRecord);
    fn pending(&mut self, row: PendingRow);
    fn evidence(&mut self, row: SeenRow);
}

/// State read back from the store at start-up, all of it at once (tests, tools; the server
/// streams it into the engine instead, see [`RestoreSink`]).
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

impl Restored {
    /// Hand every row to `sink` in the order [`RestoreSink`] promises.
    pub fn replay(self, sink: &mut impl RestoreSink) {
        self.scopes.into_iter().for_each(|s| sink.scope(s));
        sink.expect_bindings(self.bindings.len());
        self.bindings
            .iter()
            .for_each(|b| sink.binding(b.as_stored()));
        self.findings.into_iter().for_each(|f| sink.finding(f));
        self.pending.into_iter().for_each(|p| sink.pending(p));
        self.evidence.into_iter().for_each(|e| sink.evidence(e));
    }
}

impl RestoreSink for Restored {
    fn scope(&mut self, scope: RestoredScope) {
        self.scopes.push(scope);
    }
    fn binding(&mut self, binding: StoredBinding<'_>) {
        self.bindings.push(binding.into());
    }
    fn finding(&mut self, record: FindingRecord) {
        self.findings.push(record);
    }
    fn pending(&mut self, row: PendingRow) {
        self.pending.push(row);
    }
    fn evidence(&mut self, row: SeenRow) {
        self.evidence.push(row);
    }
}
