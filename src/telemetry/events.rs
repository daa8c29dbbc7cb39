//! Named internal events, vector-style: each struct says what happened, and its one `emit()`
//! writes the log line and bumps the counter together, so the two never drift apart.
//!
//! Per-item events (rejections, receipts) log at `debug`: a hostile or broken client can send
//! millions, and the counter is what an operator alerts on. Labels stay low-cardinality: sources,
//! reasons and signals are fixed names, never ids.

use super::metrics::{
    DiscardLabels, Metrics, ReasonLabels, RejectLabels, ResultLabels, SignalLabels,
};
use crate::reload::{ReloadError, ReloadReport};

/// Requests or items refused at an edge; `crosstalk_rejected_total{source, reason}`.
pub struct Rejected<'a> {
    pub source: &'a str,
    pub reason: &'a str,
    pub n: u64,
}

impl Rejected<'_> {
    pub fn emit(self, metrics: &Metrics) {
        if self.n == 0 {
            return;
        }
        tracing::debug!(
            source = self.source,
            reason = self.reason,
            n = self.n,
            "rejected"
        );
        metrics
            .rejected
            .get_or_create(&RejectLabels {
                source: self.source.to_owned(),
                reason: self.reason.to_owned(),
            })
            .inc_by(self.n);
    }
}

/// User, tenant or watched attribute values that could not be used (empty, or a bool, double,
/// array or map): the items were kept without them, so they may go unattributed. Counted in
/// `crosstalk_rejected_total{source, reason}` with reasons like `user_empty`, `user_not_string`,
/// `instance_empty`, so that it is never silent.
pub struct ValuesUnusable<'a> {
    pub source: &'a str,
    pub kind: crate::normalize::UnusableValue,
    /// The first attribute key of this kind in the payload.
    pub attribute: &'a str,
    pub n: u64,
}

impl ValuesUnusable<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let reason = self.kind.as_str();
        tracing::debug!(
            source = self.source,
            reason,
            attribute = self.attribute,
            n = self.n,
            "attribute values unusable; items kept without them"
        );
        metrics
            .rejected
            .get_or_create(&RejectLabels {
                source: self.source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(self.n);
    }
}

/// Span times corrected by normalization (the span is still used);
/// `crosstalk_clamped_total{reason}`.
pub struct SpanTimesClamped {
    pub reason: crate::normalize::ClampReason,
    pub n: u64,
}

impl SpanTimesClamped {
    pub fn emit(self, metrics: &Metrics) {
        let reason = self.reason.as_str();
        tracing::debug!(reason, n = self.n, "span times clamped");
        metrics
            .clamped
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc_by(self.n);
    }
}

/// An admin API request refused; `crosstalk_admin_bad_requests_total{reason}` (kept apart from
/// `rejected`, which alerts read as "telemetry is being lost").
pub struct AdminBadRequest<'a> {
    pub reason: &'a str,
}

impl AdminBadRequest<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::debug!(reason = self.reason, "admin request refused");
        metrics
            .admin_bad_requests
            .get_or_create(&ReasonLabels {
                reason: self.reason.to_owned(),
            })
            .inc();
    }
}

/// Items accepted and dropped unread (signals crosstalk does not read);
/// `crosstalk_discarded_total{signal}`.
pub struct Discarded<'a> {
    pub signal: &'a str,
    pub n: u64,
}

impl Discarded<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::debug!(signal = self.signal, n = self.n, "discarded unread");
        metrics
            .discarded
            .get_or_create(&DiscardLabels {
                signal: self.signal.to_owned(),
            })
            .inc_by(self.n);
    }
}

/// Items made durable; `crosstalk_received_total{signal, transport}`.
pub struct ItemsReceived<'a> {
    pub signal: &'a str,
    pub transport: &'a str,
    pub n: u64,
}

impl ItemsReceived<'_> {
    pub fn emit(self, metrics: &Metrics) {
        if self.n == 0 {
            return;
        }
        metrics
            .received
            .get_or_create(&SignalLabels {
                signal: self.signal.to_owned(),
                transport: self.transport.to_owned(),
            })
            .inc_by(self.n);
    }
}

/// A commit to the embedded store failed; producers are told to retry.
/// `crosstalk_store_errors_total`.
/// The log line names the storage directory and the OS error, so "disk full" is read at once.
/// (The error is taken as a trait object: telemetry does not depend on the store.)
pub struct StoreCommitFailed<'a> {
    pub error: &'a dyn std::error::Error,
    /// The OS error under it, when there is one (`No space left on device`).
    pub os_error: Option<std::io::Error>,
    pub dir: &'a std::path::Path,
}

impl StoreCommitFailed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let os_error = self.os_error.map(|e| e.to_string());
        tracing::error!(
            path = %self.dir.display(), error = %self.error, os_error = os_error.as_deref(),
            "store commit failed; the batches are undone and producers told to retry"
        );
        metrics.store_errors.inc();
    }
}

/// A config reload was applied or refused; `crosstalk_config_reloads_total{result}`. A refused
/// one logs at error with the reason: the old config keeps running.
pub struct ConfigReloaded<'a> {
    /// What asked: `sighup` or `api`.
    pub reason: &'static str,
    pub outcome: &'a Result<ReloadReport, ReloadError>,
}

impl ConfigReloaded<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let result = match self.outcome {
            Ok(r) => {
                let w = &r.watches;
                tracing::info!(
                    by = self.reason, added = ?w.added, removed = ?w.removed,
                    changed = ?w.changed, reset = ?w.reset, applied = ?r.applied,
                    needs_restart = ?r.needs_restart,
                    "config reloaded"
                );
                if !r.needs_restart.is_empty() {
                    tracing::warn!(sections = ?r.needs_restart,
                        "config reloaded, but these settings changed and need a restart; not applied");
                }
                "ok"
            }
            Err(e) => {
                tracing::error!(by = self.reason, error = %e,
                    "config reload refused; the running config is unchanged");
                "error"
            }
        };
        metrics
            .config_reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_counts_by_source_and_reason_and_ignores_zero() {
        let m = Metrics::new();
        Rejected {
            source: "otlp_http",
            reason: "decode_error",
            n: 2,
        }
        .emit(&m);
        Rejected {
            source: "otlp_http",
            reason: "queue_full",
            n: 0,
        }
        .emit(&m);
        let text = m.encode_prometheus_text();
        assert!(
            text.contains(
                "crosstalk_rejected_total{source=\"otlp_http\",reason=\"decode_error\"} 2\n"
            ),
            "{text}"
        );
        assert!(!text.contains("queue_full"), "{text}");
    }
}
