//! What the user wrote: the TOML shape, strict (`deny_unknown_fields`), with every default written
//! out here so an empty file is a valid config. Nothing is validated in this file; see `resolve`.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub attribution: RawAttribution,
    #[serde(default)]
    pub limits: super::Limits,
    #[serde(default)]
    pub events: RawEvents,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub privacy: RawPrivacy,
    #[serde(default)]
    pub alertmanager: Option<RawAlertmanager>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub evidence: RawEvidence,
    #[serde(default)]
    pub discovery: RawDiscovery,
    /// `None`: the file lists no `[[watch]]`, so the default watches apply; `watch = []`
    /// (an explicit empty list) means none.
    #[serde(default, rename = "watch")]
    pub watches: Option<Vec<RawWatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub otlp_grpc: String,
    pub otlp_http: String,
    pub admin: String,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            otlp_grpc: "127.0.0.1:4317".into(),
            otlp_http: "127.0.0.1:4318".into(),
            admin: "127.0.0.1:9477".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStorage {
    pub dir: PathBuf,
    pub findings_retention: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./crosstalk-data"),
            findings_retention: "30d".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIdentity {
    pub user_attributes: Vec<String>,
    pub tenant_attributes: Vec<String>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            user_attributes: vec!["user.id".into(), "enduser.id".into()],
            tenant_attributes: vec!["tenant.id".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAttribution {
    pub wait: String,
    pub max_pending: usize,
}

impl Default for RawAttribution {
    fn default() -> Self {
        Self {
            wait: "2s".into(),
            max_pending: 100_000,
        }
    }
}

/// The default of `limits.max_label_values`.
pub const DEFAULT_MAX_LABEL_VALUES: usize = 1000;

/// A `humantime` duration such as `"10s"` or `"2m"`, for structs read straight from the file.
pub(super) fn duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}`: {e} (write e.g. \"10s\", \"2m\", \"1h\")"
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEvents {
    pub files: Vec<PathBuf>,
    pub start_at: String,
    pub max_line_bytes: usize,
    pub poll_interval: String,
    pub fields: EventFields,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            start_at: "beginning".into(),
            max_line_bytes: 1 << 20,
            poll_interval: "200ms".into(),
            fields: EventFields::default(),
        }
    }
}

/// Where each canonical event field is found in a line: a key, or a dotted path into nested
/// objects. A key that literally contains dots (`service.name`) is tried before the path.
///
/// Raw and resolved at once: any string is a usable key, so there is nothing to validate.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EventFields {
    pub time: String,
    pub event: String,
    pub user: String,
    pub connection: String,
    pub connection_user: String,
    pub tenant: String,
    pub connection_tenant: String,
    pub service: String,
    pub service_instance: String,
    pub trace_id: String,
    pub span_id: String,
    pub run_id: String,
}

impl Default for EventFields {
    fn default() -> Self {
        Self {
            time: "time".into(),
            event: "event".into(),
            user: "user_id".into(),
            connection: "connection_id".into(),
            connection_user: "connection_user_id".into(),
            tenant: "tenant_id".into(),
            connection_tenant: "connection_tenant_id".into(),
            service: "service.name".into(),
            service_instance: "service.instance.id".into(),
            trace_id: "trace_id".into(),
            span_id: "span_id".into(),
            run_id: "run_id".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEvidence {
    pub window: String,
}

impl Default for RawEvidence {
    fn default() -> Self {
        Self {
            window: "24h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawShutdown {
    pub grace: String,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            grace: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPrivacy {
    pub user_ids: String,
    pub hmac_key: Option<String>,
    pub hmac_key_file: Option<PathBuf>,
}

impl Default for RawPrivacy {
    fn default() -> Self {
        Self {
            user_ids: "raw".into(),
            hmac_key: None,
            hmac_key_file: None,
        }
    }
}

/// Optional section: present means "push to Alertmanager", so `url` has no default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlertmanager {
    pub url: String,
    #[serde(default = "default_resend")]
    pub resend_interval: String,
    #[serde(default = "default_resolve_after")]
    pub resolve_after: String,
    #[serde(default = "default_runbook")]
    pub runbook_url: String,
    #[serde(default)]
    pub external_url: Option<String>,
    #[serde(default = "default_alert_timeout")]
    pub timeout: String,
}

fn default_resend() -> String {
    "60s".into()
}
fn default_resolve_after() -> String {
    "15m".into()
}
fn default_runbook() -> String {
    "https://github.com/crosstalk-dev/crosstalk/blob/main/deploy/README.md#runbook".into()
}
fn default_alert_timeout() -> String {
    "5s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `redis_url` takes one URL (a single Redis) or a list (the nodes of a Redis Cluster).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub redis_url: OneOrMany,
    #[serde(default = "default_cluster_pending")]
    pub max_pending: usize,
    #[serde(default = "default_cluster_timeout")]
    pub timeout: String,
}

fn default_cluster_pending() -> usize {
    100_000
}
fn default_cluster_timeout() -> String {
    "1s".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub otlp_token_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    pub admin_insecure: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    pub name: String,
    pub attribute: String,
    #[serde(default = "default_policy")]
    pub policy: String,
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default = "default_boundary")]
    pub boundary: String,
    #[serde(default = "default_retention")]
    pub retention: String,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub expected: bool,
    #[serde(default)]
    pub allow_instances: Vec<String>,
}

fn default_policy() -> String {
    "exclusive".into()
}
fn default_scope() -> String {
    "process".into()
}
fn default_boundary() -> String {
    "user".into()
}
fn default_retention() -> String {
    "24h".into()
}
fn default_severity() -> String {
    "critical".into()
}

/// `[discovery]` as written: the resolved form, checked by `resolve` before use.
pub(super) type RawDiscovery = super::Discovery;
