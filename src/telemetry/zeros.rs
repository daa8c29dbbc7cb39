//! Every series whose label values are known from the configuration, exported at zero from
//! start: a dashboard panel or an alert over `rate(...)` on a healthy sidecar then reads 0, not
//! "No data", and the first event is an increase Prometheus can see.
//!
//! Series labelled by `service` (findings, evidence) cannot be: services are learnt from
//! traffic. The engine zeroes those when it first sees a service.

use super::metrics::{
    DiscardLabels, EvictLabels, LabelName, Metrics, ReasonLabels, RejectLabels, SignalLabels,
};
use crate::config::{Config, Scope};
use crate::normalize::{RejectReason, UnusableValue};

/// How a request may be refused on its way to the ingest queue, by any network source.
const SUBMIT_REASONS: [&str; 3] = ["queue_full", "shutting_down", "store_error"];
/// How a listener refuses or cuts a connection (`connections`; on gRPC, a first request late).
const CONNECTION_REASONS: [&str; 2] = ["too_many_connections", "header_timeout"];
/// How an HTTP body may be refused (`sources::body::BodyError::reason`).
const BODY_REASONS: [&str; 6] = [
    "body_too_large",
    "decompressed_too_large",
    "unsupported_encoding",
    "bad_gzip",
    "read_error",
    "body_timeout",
];
/// What the OTLP/HTTP handler refuses besides bodies and the queue.
const OTLP_HTTP_REASONS: [&str; 4] = [
    "not_found",
    "method_not_allowed",
    "unsupported_media_type",
    "decode_error",
];
/// What `/v1/events` refuses besides bodies and the queue.
const EVENTS_HTTP_REASONS: [&str; 2] = ["unsupported_media_type", "decode_error"];
/// Items of an OTLP export refused or kept without a value (the rest of `RejectReason` are
/// event-line reasons).
const OTLP_ITEM_REASONS: [RejectReason; 2] = [RejectReason::IdTooLong, RejectReason::ControlChars];
const ADMIN_REASONS: [&str; 6] = [
    "bad_query",
    "not_found",
    "method_not_allowed",
    "bad_body",
    "unknown_finding",
    "conflict",
];
/// Evictions not tied to one watch (`watch=""`).
const UNWATCHED_EVICTIONS: [&str; 2] = ["pending_full", "pending_unreadable"];

impl Metrics {
    /// The families for `config`, with every series whose labels it determines at zero.
    pub fn for_config(config: &Config) -> Self {
        let metrics = Metrics::build(config.cluster.is_some(), config.limits.max_label_values);
        metrics.zero_known_series(config);
        metrics
    }

    fn zero_known_series(&self, config: &Config) {
        let token = config.auth.otlp_token_file.is_some();
        let otlp_items = OTLP_ITEM_REASONS
            .iter()
            .map(|r| r.as_str())
            .chain(UnusableValue::ALL.iter().map(|r| r.as_str()));
        let event_items: Vec<&str> = (RejectReason::ALL.iter().map(|r| r.as_str()))
            .chain(UnusableValue::ALL.iter().map(|r| r.as_str()))
            .collect();
        let auth = token.then_some("unauthorized");
        let otlp_http = (OTLP_HTTP_REASONS.iter().copied())
            .chain(BODY_REASONS)
            .chain(SUBMIT_REASONS)
            .chain(auth)
            .chain(CONNECTION_REASONS)
            .chain(otlp_items.clone());
        self.zero_rejected("otlp_http", otlp_http);
        let otlp_grpc = (SUBMIT_REASONS.iter().copied())
            .chain(auth)
            .chain(CONNECTION_REASONS)
            .chain(["body_timeout"])
            .chain(otlp_items);
        self.zero_rejected("otlp_grpc", otlp_grpc);
        self.zero_rejected("admin", CONNECTION_REASONS.into_iter());
        let events_http = (EVENTS_HTTP_REASONS.iter().copied())
            .chain(BODY_REASONS)
            .chain(SUBMIT_REASONS)
            .chain(event_items.iter().copied());
        self.zero_rejected("events_http", events_http);
        let files = !config.events.files.is_empty();
        if files {
            self.zero_rejected("events_file", event_items.iter().copied());
        }
        let mut received = vec![
            ("traces", "http"),
            ("traces", "grpc"),
            ("logs", "http"),
            ("logs", "grpc"),
            ("events", "http"),
        ];
        if files {
            received.push(("events", "file"));
        }
        for (signal, transport) in received {
            let _ = self.received.get_or_create(&SignalLabels {
                signal: signal.to_owned(),
                transport: transport.to_owned(),
            });
        }
        let _ = self.discarded.get_or_create(&DiscardLabels {
            signal: "metrics".to_owned(),
        });
        let admin_auth = config
            .auth
            .admin_token_file
            .is_some()
            .then_some("unauthorized");
        for reason in ADMIN_REASONS.iter().copied().chain(admin_auth) {
            let _ = self.admin_bad_requests.get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        self.zero_evicted(config);
        let _ = self.label_overflow.get_or_create(&LabelName {
            label: "service".to_owned(),
        });
    }

    fn zero_rejected<'a>(&self, source: &str, reasons: impl Iterator<Item = &'a str>) {
        for reason in reasons {
            let _ = self.rejected.get_or_create(&RejectLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    fn zero_evicted(&self, config: &Config) {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for w in &config.watches {
            pairs.push((&w.name, "capacity"));
            pairs.push((&w.name, "retention"));
            if config.cluster.is_some() && w.scope == Scope::Global {
                pairs.push((&w.name, "cluster_replay"));
            }
        }
        pairs.extend(UNWATCHED_EVICTIONS.iter().map(|r| ("", *r)));
        for (watch, reason) in pairs {
            let _ = self.evicted.get_or_create(&EvictLabels {
                watch: watch.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_sidecar_exports_rejections_evictions_and_receipts_at_zero() {
        let config = Config::default_config();
        let text = Metrics::for_config(&config).encode_prometheus_text();
        for sample in [
            "crosstalk_rejected_total{source=\"otlp_http\",reason=\"decode_error\"} 0",
            "crosstalk_rejected_total{source=\"otlp_grpc\",reason=\"user_not_string\"} 0",
            "crosstalk_rejected_total{source=\"events_http\",reason=\"missing_user\"} 0",
            "crosstalk_evicted_total{watch=\"agent_factory\",reason=\"capacity\"} 0",
            "crosstalk_received_total{signal=\"traces\",transport=\"grpc\"} 0",
            "crosstalk_discarded_total{signal=\"metrics\"} 0",
            "crosstalk_admin_bad_requests_total{reason=\"bad_query\"} 0",
            "crosstalk_label_overflow_total{label=\"service\"} 0",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
        // Without [events] files, without a token and without a cluster: nothing for them.
        for absent in ["events_file", "unauthorized", "cluster_replay"] {
            assert!(!text.contains(absent), "{absent}:\n{text}");
        }
    }
}
