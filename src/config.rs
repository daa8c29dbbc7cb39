//! Configuration in two stages: the TOML a user writes (`Raw*`, strict: unknown keys are errors)
//! is validated once into the resolved [`Config`] the rest of the program uses.
//!
//! Every raw key has an explicit default, so an empty file is a valid config equal to the
//! embedded default minus its watches.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The embedded default configuration, printed by `crosstalk config default`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Why a configuration could not be used. Messages name the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw: what the user wrote.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    attribution: RawAttribution,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    privacy: RawPrivacy,
    #[serde(default)]
    alertmanager: Option<RawAlertmanager>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    cluster: Option<RawCluster>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default, rename = "watch")]
    watches: Vec<RawWatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    otlp_grpc: String,
    otlp_http: String,
    admin: String,
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
struct RawStorage {
    dir: PathBuf,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./crosstalk-data"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIdentity {
    user_attributes: Vec<String>,
    tenant_attributes: Vec<String>,
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
struct RawAttribution {
    wait: String,
    max_pending: usize,
}

impl Default for RawAttribution {
    fn default() -> Self {
        Self {
            wait: "2s".into(),
            max_pending: 100_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_tracked_instances: usize,
    queue_capacity: usize,
    max_body_bytes: usize,
    max_decompressed_bytes: usize,
    max_id_bytes: usize,
    max_attributes_per_span: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_tracked_instances: 1_000_000,
            queue_capacity: 1024,
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_id_bytes: 256,
            max_attributes_per_span: 128,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEvents {
    files: Vec<PathBuf>,
    start_at: String,
    max_line_bytes: usize,
    poll_interval: String,
    fields: RawEventFields,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            start_at: "beginning".into(),
            max_line_bytes: 1 << 20,
            poll_interval: "200ms".into(),
            fields: RawEventFields::default(),
        }
    }
}

/// Where each canonical event field is found in a line: a key, or a dotted path into nested
/// objects. A key that literally contains dots (`service.name`) is tried before the path.
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

type RawEventFields = EventFields;

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
struct RawShutdown {
    grace: String,
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
struct RawPrivacy {
    user_ids: String,
    hmac_key: Option<String>,
    hmac_key_file: Option<PathBuf>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    url: String,
    #[serde(default = "default_resend")]
    resend_interval: String,
    #[serde(default = "default_resolve_after")]
    resolve_after: String,
    #[serde(default = "default_runbook")]
    runbook_url: String,
    #[serde(default)]
    external_url: Option<String>,
    #[serde(default = "default_alert_timeout")]
    timeout: String,
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
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    redis_url: OneOrMany,
    #[serde(default = "default_cluster_pending")]
    max_pending: usize,
    #[serde(default = "default_cluster_timeout")]
    timeout: String,
}

fn default_cluster_pending() -> usize {
    100_000
}
fn default_cluster_timeout() -> String {
    "1s".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    otlp_token_file: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    admin_insecure: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    name: String,
    attribute: String,
    #[serde(default = "default_policy")]
    policy: String,
    #[serde(default = "default_scope")]
    scope: String,
    #[serde(default = "default_boundary")]
    boundary: String,
    #[serde(default = "default_retention")]
    retention: String,
    #[serde(default = "default_severity")]
    severity: String,
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

// ---------------------------------------------------------------------------------------------
// Resolved: what the program runs on.

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub storage_dir: PathBuf,
    pub identity: Identity,
    pub attribution: Attribution,
    pub limits: Limits,
    pub events: Events,
    pub shutdown_grace: Duration,
    pub privacy: Privacy,
    pub alertmanager: Option<Alertmanager>,
    pub auth: Auth,
    pub cluster: Option<Cluster>,
    /// Certificate and key (PEM) for every listener.
    pub tls: Option<TlsFiles>,
    pub watches: Vec<Watch>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Global watches coordinated across sidecars through Redis.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// One URL: a single Redis. Several: the nodes of a Redis Cluster.
    pub redis_urls: Vec<String>,
    /// Global observations queued while Redis is unreachable, at most.
    pub max_pending: usize,
    /// Per-command and connect timeout.
    pub timeout: Duration,
}

/// Where raw user ids may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserIds {
    /// Raw ids in the store and the (authenticated) findings API; pseudonyms in logs and alerts.
    Raw,
    /// Pseudonyms everywhere, store and API included.
    Hmac,
}

#[derive(Debug, Clone)]
pub struct Privacy {
    pub user_ids: UserIds,
    pub hmac_key: Option<String>,
    pub hmac_key_file: Option<PathBuf>,
}

/// Direct push of findings to Alertmanager's API v2.
#[derive(Debug, Clone)]
pub struct Alertmanager {
    /// Base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
    pub resend_interval: Duration,
    pub resolve_after: Duration,
    pub runbook_url: String,
    /// Base URL under which the findings API is reachable for people; default: the admin address.
    pub external_url: Option<String>,
    pub timeout: Duration,
}

/// Bearer tokens for the listeners.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub otlp_token_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    /// Allow a non-loopback admin listener without a token.
    pub admin_insecure: bool,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Identity {
    /// Attribute keys naming the user, in order of preference.
    pub user_attributes: Vec<String>,
    /// Attribute keys naming the tenant (organisation), in order of preference.
    pub tenant_attributes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Attribution {
    pub wait: Duration,
    pub max_pending: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_tracked_instances: usize,
    pub queue_capacity: usize,
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_id_bytes: usize,
    pub max_attributes_per_span: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

#[derive(Debug, Clone)]
pub struct Events {
    pub files: Vec<PathBuf>,
    pub start_at: StartAt,
    pub max_line_bytes: usize,
    pub poll_interval: Duration,
    pub fields: EventFields,
}

/// How many distinct principals an instance may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One principal over the instance's retention.
    Exclusive,
    /// Principals may take turns, but never overlap in (event) time.
    Concurrent,
    /// Tracked and counted, never a finding.
    Allow,
}

/// What identifies an instance besides its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The id plus the emitting process's resource identity.
    Process,
    /// The id value alone, across every process.
    Global,
}

/// The isolation boundary a watch guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    User,
    Tenant,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Exclusive => "exclusive",
            Policy::Concurrent => "concurrent",
            Policy::Allow => "allow",
        }
    }
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Process => "process",
            Scope::Global => "global",
        }
    }
}

impl Boundary {
    pub fn as_str(self) -> &'static str {
        match self {
            Boundary::User => "user",
            Boundary::Tenant => "tenant",
        }
    }
}

/// One watched kind of object instance.
#[derive(Debug, Clone)]
pub struct Watch {
    pub name: String,
    pub attribute: String,
    pub policy: Policy,
    pub scope: Scope,
    pub boundary: Boundary,
    pub retention: Duration,
    pub severity: String,
}

impl Config {
    /// The embedded default.
    pub fn default_config() -> Self {
        Self::from_toml(DEFAULT_CONFIG).expect("embedded default config is valid")
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.resolve()
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| {
        invalid(
            key,
            format!("`{value}` is not an address like 127.0.0.1:4317 ({e})"),
        )
    })
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        invalid(
            key,
            format!("`{value}` is not a duration like \"10s\" ({e})"),
        )
    })
}

fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(value)
    }
}

fn valid_watch_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

impl RawConfig {
    fn resolve(self) -> Result<Config, ConfigError> {
        let listen = Listen {
            otlp_grpc: parse_addr("listen.otlp_grpc", &self.listen.otlp_grpc)?,
            otlp_http: parse_addr("listen.otlp_http", &self.listen.otlp_http)?,
            admin: parse_addr("listen.admin", &self.listen.admin)?,
        };
        if self.identity.user_attributes.is_empty() {
            return Err(invalid(
                "identity.user_attributes",
                "must name at least one attribute",
            ));
        }
        if let Some(empty) = self
            .identity
            .user_attributes
            .iter()
            .chain(&self.identity.tenant_attributes)
            .find(|a| a.is_empty())
        {
            return Err(invalid(
                "identity",
                format!("attribute names must not be empty (got {empty:?})"),
            ));
        }
        let limits = Limits {
            max_tracked_instances: positive(
                "limits.max_tracked_instances",
                self.limits.max_tracked_instances,
            )?,
            queue_capacity: positive("limits.queue_capacity", self.limits.queue_capacity)?,
            max_body_bytes: positive("limits.max_body_bytes", self.limits.max_body_bytes)?,
            max_decompressed_bytes: positive(
                "limits.max_decompressed_bytes",
                self.limits.max_decompressed_bytes,
            )?,
            max_id_bytes: positive("limits.max_id_bytes", self.limits.max_id_bytes)?,
            max_attributes_per_span: positive(
                "limits.max_attributes_per_span",
                self.limits.max_attributes_per_span,
            )?,
        };
        let start_at = match self.events.start_at.as_str() {
            "beginning" => StartAt::Beginning,
            "end" => StartAt::End,
            other => {
                return Err(invalid(
                    "events.start_at",
                    format!("`{other}` is not one of: beginning, end"),
                ));
            }
        };
        let events = Events {
            files: self.events.files,
            start_at,
            max_line_bytes: positive("events.max_line_bytes", self.events.max_line_bytes)?,
            poll_interval: parse_duration("events.poll_interval", &self.events.poll_interval)?,
            fields: self.events.fields,
        };
        let mut names = HashSet::new();
        let mut watches = Vec::with_capacity(self.watches.len());
        for (i, w) in self.watches.into_iter().enumerate() {
            let key = |field: &str| format!("watch[{i}].{field}");
            if !valid_watch_name(&w.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "`{}` must start with a letter and hold only letters, digits, `_` or `-` (64 at most)",
                        w.name
                    ),
                ));
            }
            if !names.insert(w.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("`{}` names two watches", w.name),
                ));
            }
            if w.attribute.is_empty() {
                return Err(invalid(key("attribute"), "must not be empty"));
            }
            let policy = match w.policy.as_str() {
                "exclusive" => Policy::Exclusive,
                "concurrent" => Policy::Concurrent,
                "allow" => Policy::Allow,
                other => {
                    return Err(invalid(
                        key("policy"),
                        format!("`{other}` is not one of: exclusive, concurrent, allow"),
                    ));
                }
            };
            let scope = match w.scope.as_str() {
                "process" => Scope::Process,
                "global" => Scope::Global,
                other => {
                    return Err(invalid(
                        key("scope"),
                        format!("`{other}` is not one of: process, global"),
                    ));
                }
            };
            let boundary = match w.boundary.as_str() {
                "user" => Boundary::User,
                "tenant" => Boundary::Tenant,
                other => {
                    return Err(invalid(
                        key("boundary"),
                        format!("`{other}` is not one of: user, tenant"),
                    ));
                }
            };
            if boundary == Boundary::Tenant && self.identity.tenant_attributes.is_empty() {
                return Err(invalid(
                    key("boundary"),
                    "a tenant boundary needs identity.tenant_attributes",
                ));
            }
            let retention = parse_duration(&key("retention"), &w.retention)?;
            if retention.is_zero() {
                return Err(invalid(key("retention"), "must be greater than 0"));
            }
            if !matches!(w.severity.as_str(), "critical" | "warning" | "info") {
                return Err(invalid(
                    key("severity"),
                    format!("`{}` is not one of: critical, warning, info", w.severity),
                ));
            }
            watches.push(Watch {
                name: w.name,
                attribute: w.attribute,
                policy,
                scope,
                boundary,
                retention,
                severity: w.severity,
            });
        }
        if watches.len() > u16::MAX as usize {
            return Err(invalid("watch", "too many watches"));
        }
        let privacy = Privacy {
            user_ids: match self.privacy.user_ids.as_str() {
                "raw" => UserIds::Raw,
                "hmac" => UserIds::Hmac,
                other => {
                    return Err(invalid(
                        "privacy.user_ids",
                        format!("`{other}` is not one of: raw, hmac"),
                    ));
                }
            },
            hmac_key: self.privacy.hmac_key.filter(|k| !k.is_empty()),
            hmac_key_file: self.privacy.hmac_key_file,
        };
        let alertmanager = match self.alertmanager {
            None => None,
            Some(am) => {
                let uri: http::Uri = am.url.parse().map_err(|e| {
                    invalid(
                        "alertmanager.url",
                        format!("`{}` is not a URL ({e})", am.url),
                    )
                })?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(invalid(
                        "alertmanager.url",
                        format!("`{}` must be an http:// URL with a host", am.url),
                    ));
                }
                Some(Alertmanager {
                    url: am.url.trim_end_matches('/').to_owned(),
                    resend_interval: parse_duration(
                        "alertmanager.resend_interval",
                        &am.resend_interval,
                    )?,
                    resolve_after: parse_duration("alertmanager.resolve_after", &am.resolve_after)?,
                    runbook_url: am.runbook_url,
                    external_url: am.external_url.map(|u| u.trim_end_matches('/').to_owned()),
                    timeout: parse_duration("alertmanager.timeout", &am.timeout)?,
                })
            }
        };
        let auth = Auth {
            otlp_token_file: self.auth.otlp_token_file,
            admin_token_file: self.auth.admin_token_file,
            admin_insecure: self.auth.admin_insecure,
        };
        if !listen.admin.ip().is_loopback()
            && auth.admin_token_file.is_none()
            && !auth.admin_insecure
        {
            return Err(invalid(
                "listen.admin",
                format!(
                    "{} is not a loopback address and the findings API holds user ids: set auth.admin_token_file, or auth.admin_insecure = true to accept the risk",
                    listen.admin
                ),
            ));
        }
        let cluster = match self.cluster {
            None => None,
            Some(c) => {
                let urls = match c.redis_url {
                    OneOrMany::One(u) => vec![u],
                    OneOrMany::Many(us) => us,
                };
                if urls.is_empty() {
                    return Err(invalid("cluster.redis_url", "names no Redis"));
                }
                if let Some(bad) = urls
                    .iter()
                    .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
                {
                    return Err(invalid(
                        "cluster.redis_url",
                        format!("`{bad}` is not a redis:// URL"),
                    ));
                }
                Some(Cluster {
                    redis_urls: urls,
                    max_pending: positive("cluster.max_pending", c.max_pending)?,
                    timeout: parse_duration("cluster.timeout", &c.timeout)?,
                })
            }
        };
        Ok(Config {
            listen,
            cluster,
            tls: self.tls.map(|t| TlsFiles {
                cert_file: t.cert_file,
                key_file: t.key_file,
            }),
            privacy,
            alertmanager,
            auth,
            storage_dir: self.storage.dir,
            identity: Identity {
                user_attributes: self.identity.user_attributes,
                tenant_attributes: self.identity.tenant_attributes,
            },
            attribution: Attribution {
                wait: parse_duration("attribution.wait", &self.attribution.wait)?,
                max_pending: positive("attribution.max_pending", self.attribution.max_pending)?,
            },
            limits,
            events,
            shutdown_grace: parse_duration("shutdown.grace", &self.shutdown.grace)?,
            watches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_watches_session_globally() {
        let cfg = Config::default_config();
        let session = cfg.watches.iter().find(|w| w.attribute == "session.id");
        let session = session.expect("default watches session.id");
        assert_eq!(session.policy, Policy::Exclusive);
        assert_eq!(session.scope, Scope::Global);
        assert_eq!(cfg.listen.admin.port(), 9477);
    }

    #[test]
    fn empty_file_takes_defaults() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg.identity.user_attributes, ["user.id", "enduser.id"]);
        assert!(cfg.watches.is_empty());
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[listen]\nadmn = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("admn"), "{err}");
    }

    #[test]
    fn bad_policy_is_named_with_its_key() {
        let text = "[[watch]]\nname=\"f\"\nattribute=\"a\"\npolicy=\"sometimes\"\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            err.contains("watch[0].policy") && err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_watch_names_are_rejected() {
        let text =
            "[[watch]]\nname=\"f\"\nattribute=\"a\"\n[[watch]]\nname=\"f\"\nattribute=\"b\"\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("watch[1].name"), "{err}");
    }

    #[test]
    fn bad_address_and_duration_are_named() {
        let err = Config::from_toml("[listen]\nadmin=\"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("listen.admin"));
        let err = Config::from_toml("[attribution]\nwait=\"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("attribution.wait"));
    }

    #[test]
    fn event_fields_can_be_remapped_to_paths() {
        let cfg = Config::from_toml("[events.fields]\nuser = \"payload.user_id\"\n").unwrap();
        assert_eq!(cfg.events.fields.user, "payload.user_id");
        assert_eq!(cfg.events.fields.connection, "connection_id");
    }

    proptest::proptest! {
        /// Arbitrary text is a config or an error naming what is wrong, never a panic.
        #[test]
        fn any_text_parses_or_errs(text in "(\\PC|\\n|\\[|\\]|=|\"){0,400}") {
            if let Err(e) = Config::from_toml(&text) {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
