//! Prometheus metrics: the families crosstalk exports and their encoding.
//!
//! Labels are low-cardinality by construction: watch names come from config, services from
//! `service.name`, reasons and signals from fixed enums. No user id, tenant id or instance id is
//! ever a label value; the only per-finding detail is the `trace_id` exemplar.

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::CounterWithExemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::labels::LabelCap;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub r#type: String,
    pub watch: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchServiceLabels {
    pub watch: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: String,
    pub transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscardLabels {
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictLabels {
    pub watch: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelName {
    pub label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// Every metric family crosstalk exports. Cheap to share (`Arc<Metrics>`); all updates are atomic.
pub struct Metrics {
    registry: Registry,
    pub findings: Family<FindingLabels, CounterWithExemplar<TraceExemplar>>,
    pub affected_users: Family<WatchServiceLabels, Counter>,
    pub tracked_instances: Family<WatchLabels, Gauge>,
    pub received: Family<SignalLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub admin_bad_requests: Family<ReasonLabels, Counter>,
    /// Config reloads (SIGHUP, `POST /api/v1/reload`) by `result`: `ok` or `error`.
    pub config_reloads: Family<ResultLabels, Counter>,
    pub discarded: Family<DiscardLabels, Counter>,
    pub clamped: Family<ReasonLabels, Counter>,
    pub unattributed: Family<WatchLabels, Counter>,
    pub watched_observations: Family<WatchLabels, Counter>,
    pub detection_delay: Histogram,
    pub evicted: Family<EvictLabels, Counter>,
    pub queue_pushed: Family<QueueLabels, Counter>,
    pub queue_popped: Family<QueueLabels, Counter>,
    pub queue_full: Family<QueueLabels, Counter>,
    pub queue_capacity: Family<QueueLabels, Gauge>,
    pub store_errors: Counter,
    pub store_healthy: Gauge,
    pub alerts_sent: Counter,
    pub alert_failures: Counter,
    pub cluster_up: Gauge,
    pub cluster_pending: Gauge,
    pub cluster_dropped: Counter,
    pub cluster_round_trips: Counter,
    /// Isolation evidence per (watch, service); see `correlate::evidence`.
    pub watch_last_observation: Family<WatchServiceLabels, Gauge>,
    pub watch_max_users_per_instance: Family<WatchServiceLabels, Gauge>,
    pub watch_instances: Family<WatchServiceLabels, Gauge>,
    pub watch_users: Family<WatchServiceLabels, Gauge>,
    pub watch_expected: Family<WatchLabels, Gauge>,
    pub discovery_suspects: Family<ServiceLabels, Gauge>,
    pub discovery_evicted: Counter,
    /// Label values folded into `__other__` past `limits.max_label_values`, by label.
    pub label_overflow: Family<LabelName, Counter>,
    /// Caps the distinct `service` label values: every `service` label goes through
    /// [`Metrics::service_label`].
    service_cap: LabelCap,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Declares each family as a local (`Type::default()`) and registers it, one entry per family:
/// `local: Type = "name", "help";`. After `if COND,` the families exist either way but are
/// registered, and so exported, only when COND holds.
macro_rules! families {
    ($registry:ident; $($field:ident: $ty:ty = $name:literal, $help:literal;)*) => {
        $(
            let $field = <$ty>::default();
            $registry.register($name, $help, $field.clone());
        )*
    };
    (if $cond:expr, $registry:ident; $($field:ident: $ty:ty = $name:literal, $help:literal;)*) => {
        $(
            let $field = <$ty>::default();
            if $cond {
                $registry.register($name, $help, $field.clone());
            }
        )*
    };
}

impl Metrics {
    /// The families of a sidecar without `[cluster]`.
    pub fn new() -> Self {
        Self::with_cluster(false)
    }

    /// Every family; the `crosstalk_cluster_*` ones only when `cluster` is configured.
    pub fn with_cluster(cluster: bool) -> Self {
        Self::build(cluster, crate::config::DEFAULT_MAX_LABEL_VALUES)
    }

    /// Every family, with at most `max_label_values` distinct `service` values.
    pub(super) fn build(cluster: bool, max_label_values: usize) -> Self {
        let mut registry = Registry::default();
        families! { registry;
            findings: Family<FindingLabels, CounterWithExemplar<TraceExemplar>> = "crosstalk_findings",
                "Findings raised (a shared instance or a misdelivered event), with the conflicting trace as exemplar";
            affected_users: Family<WatchServiceLabels, Counter> = "crosstalk_affected_users",
                "Users named by findings (each user counted once per finding)";
            tracked_instances: Family<WatchLabels, Gauge> = "crosstalk_tracked_instances",
                "Instances whose users are currently tracked";
            received: Family<SignalLabels, Counter> = "crosstalk_received",
                "Items (spans, log records, event lines) accepted, counted once each";
            rejected: Family<RejectLabels, Counter> = "crosstalk_rejected",
                "Requests or items rejected, by source and reason";
        }
        // Apart from `rejected`: an operator's typo on the admin API must not page through
        // CrosstalkRejectingInput, which reads `rejected` as "telemetry is being lost".
        families! { registry;
            admin_bad_requests: Family<ReasonLabels, Counter> = "crosstalk_admin_bad_requests",
                "Admin API requests refused (bad query, wrong method, missing token, unknown path)";
            config_reloads: Family<ResultLabels, Counter> = "crosstalk_config_reloads",
                "Config reloads (SIGHUP or POST /api/v1/reload), ok or refused with an error";
        }
        for result in ["ok", "error"] {
            let _ = config_reloads.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        families! { registry;
            discarded: Family<DiscardLabels, Counter> = "crosstalk_discarded",
                "Items accepted and deliberately dropped: signals crosstalk does not read (metrics data points)";
            clamped: Family<ReasonLabels, Counter> = "crosstalk_clamped",
                "Spans whose times were corrected (end before start, end or start in the future); the span is still used";
        }
        // Every reason is known up front: export each at zero so a panel never shows "No data".
        for reason in crate::normalize::ClampReason::ALL {
            let _ = clamped.get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            });
        }
        families! { registry;
            unattributed: Family<WatchLabels, Counter> = "crosstalk_unattributed",
                "Observations of a watched instance for which no user (or tenant) could be found";
            watched_observations: Family<WatchLabels, Counter> = "crosstalk_watched_observations",
                "Observations of a watched instance";
        }
        let detection_delay = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "crosstalk_detection_delay_seconds",
            "Time from receiving the conflicting observation to the finding being committed (visible in the API)",
            detection_delay.clone(),
        );
        families! { registry;
            evicted: Family<EvictLabels, Counter> = "crosstalk_evicted",
                "Tracked instances or pending spans dropped to honour a bound";
            queue_pushed: Family<QueueLabels, Counter> = "crosstalk_queue_pushed",
                "Batches put on an internal queue";
            queue_popped: Family<QueueLabels, Counter> = "crosstalk_queue_popped",
                "Batches taken off an internal queue";
            queue_full: Family<QueueLabels, Counter> = "crosstalk_queue_full",
                "Times a producer found an internal queue full (answered 503/UNAVAILABLE or paused)";
            queue_capacity: Family<QueueLabels, Gauge> = "crosstalk_queue_capacity",
                "Capacity of an internal queue, in batches";
            store_errors: Counter = "crosstalk_store_errors",
                "Failed commits to the embedded store";
        }
        // Not /ready: a full disk on crosstalk's volume must not take the watched pod out of
        // service (crosstalk's readiness gates it as a native sidecar). This gauge is the signal.
        families! { registry;
            store_healthy: Gauge = "crosstalk_store_healthy",
                "1 while the last commit to the embedded store succeeded, 0 while commits fail";
            alerts_sent: Counter = "crosstalk_alerts_sent",
                "Alerts (firing or resolved) accepted by Alertmanager";
            alert_failures: Counter = "crosstalk_alert_failures",
                "Alert deliveries that failed and will be retried";
        }
        // Without [cluster] these families stay unregistered, so they are absent from /metrics:
        // a `crosstalk_cluster_up 0` there would fire CrosstalkClusterDown on every single sidecar.
        families! { if cluster, registry;
            cluster_up: Gauge = "crosstalk_cluster_up",
                "1 while Redis coordination of global watches is reachable (0 when down; absent without [cluster])";
            cluster_pending: Gauge = "crosstalk_cluster_pending",
                "Global observations waiting for Redis";
            cluster_dropped: Counter = "crosstalk_cluster_dropped",
                "Global observations dropped because the Redis queue was full";
            cluster_round_trips: Counter = "crosstalk_cluster_round_trips",
                "Checks judged by Redis";
        }
        let evidence = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<WatchServiceLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let watch_last_observation = evidence(
            &mut registry,
            "crosstalk_watch_last_observation_timestamp_seconds",
            "When a watched instance of this watch was last observed in this service (Unix seconds; kept across restarts)",
        );
        let watch_max_users_per_instance = evidence(
            &mut registry,
            "crosstalk_watch_max_users_per_instance",
            "The most users one instance served, over the evidence window",
        );
        let watch_instances = evidence(
            &mut registry,
            "crosstalk_watch_instances",
            "Distinct instances observed over the evidence window",
        );
        let watch_users = evidence(
            &mut registry,
            "crosstalk_watch_users",
            "Distinct users served by observed instances over the evidence window",
        );
        families! { registry;
            watch_expected: Family<WatchLabels, Gauge> = "crosstalk_watch_expected",
                "1 for a watch marked expected = true (it must see traffic), else 0";
            build_info: Family<VersionLabels, Gauge> = "crosstalk_build_info",
                "crosstalk version";
        }
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        families! { registry;
            discovery_suspects: Family<ServiceLabels, Gauge> = "crosstalk_discovery_suspects",
                "Attribute keys discovery judges leak suspects, by service (advisory: never alerts)";
            discovery_evicted: Counter = "crosstalk_discovery_evicted",
                "Attribute keys discovery dropped to stay within max_keys";
            label_overflow: Family<LabelName, Counter> = "crosstalk_label_overflow",
                "Label values folded into \"__other__\" past limits.max_label_values, each counted once";
        }
        let service_cap = LabelCap::new(
            max_label_values,
            label_overflow
                .get_or_create(&LabelName {
                    label: "service".to_owned(),
                })
                .clone(),
        );
        Metrics {
            registry,
            findings,
            affected_users,
            tracked_instances,
            received,
            rejected,
            admin_bad_requests,
            config_reloads,
            discarded,
            clamped,
            unattributed,
            watched_observations,
            detection_delay,
            evicted,
            queue_pushed,
            queue_popped,
            queue_full,
            queue_capacity,
            store_errors,
            store_healthy,
            alerts_sent,
            alert_failures,
            cluster_up,
            cluster_pending,
            cluster_dropped,
            cluster_round_trips,
            watch_last_observation,
            watch_max_users_per_instance,
            watch_instances,
            watch_users,
            watch_expected,
            discovery_suspects,
            discovery_evicted,
            label_overflow,
            service_cap,
        }
    }

    /// The `service` label value to use for `service`: itself, or `__other__` past
    /// `limits.max_label_values` distinct services.
    pub fn service_label(&self, service: &str) -> String {
        self.service_cap.value(service)
    }

    /// Set the suspects gauge: services with suspects now; the rest drop out (absent = none).
    pub fn set_discovery_suspects(&self, per_service: &std::collections::BTreeMap<&str, i64>) {
        self.discovery_suspects.clear();
        for (service, n) in per_service {
            self.discovery_suspects
                .get_or_create(&ServiceLabels {
                    service: self.service_label(service),
                })
                .inc_by(*n);
        }
    }

    /// OpenMetrics text, exemplars included.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Prometheus text format 0.0.4, for scrapers that do not ask for OpenMetrics: no exemplars,
    /// units or EOF marker, and a counter's `# HELP`/`# TYPE` name the `_total` samples they
    /// describe (OpenMetrics names the family without the suffix; 0.0.4 parsers would then see
    /// samples with no metadata).
    pub fn encode_prometheus_text(&self) -> String {
        let open = self.encode_openmetrics();
        let mut out = String::with_capacity(open.len());
        // OpenMetrics writes HELP before TYPE; hold HELP until TYPE says whether to rename.
        let mut help: Option<&str> = None;
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = Some(rest);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
                let suffix = if kind == "counter" { "_total" } else { "" };
                if let Some(h) = help.take() {
                    let text = h.split_once(' ').map_or("", |(_, t)| t);
                    out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
                }
                out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
                continue;
            }
            let sample = match line.find(" # {") {
                Some(i) if !line.starts_with('#') => &line[..i],
                _ => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exemplar_appears_in_openmetrics_but_not_plain_text() {
        let m = Metrics::new();
        m.findings
            .get_or_create(&FindingLabels {
                r#type: "shared_instance".into(),
                watch: "agent_factory".into(),
                service: "api".into(),
            })
            .inc_by(
                1,
                Some(TraceExemplar {
                    trace_id: "ab".repeat(16),
                }),
                None,
            );
        let open = m.encode_openmetrics();
        assert!(open.contains("crosstalk_findings_total{type=\"shared_instance\",watch=\"agent_factory\",service=\"api\"} 1 # {trace_id=\""), "{open}");
        assert!(open.ends_with("# EOF\n"));
        let plain = m.encode_prometheus_text();
        assert!(plain.contains("crosstalk_findings_total{type=\"shared_instance\",watch=\"agent_factory\",service=\"api\"} 1\n"), "{plain}");
        assert!(!plain.contains("trace_id"));
        assert!(!plain.contains("# EOF"));
        assert!(
            plain.contains("# TYPE crosstalk_findings_total counter\n"),
            "{plain}"
        );
        assert!(
            plain.contains("# HELP crosstalk_findings_total Findings raised"),
            "{plain}"
        );
        assert!(
            !plain.contains("# TYPE crosstalk_findings counter"),
            "{plain}"
        );
    }

    #[test]
    fn cluster_families_are_absent_without_a_cluster() {
        let single = Metrics::new().encode_openmetrics();
        assert!(!single.contains("crosstalk_cluster_"), "{single}");
        let clustered = Metrics::with_cluster(true).encode_openmetrics();
        assert!(clustered.contains("crosstalk_cluster_up 0"), "{clustered}");
    }
}
