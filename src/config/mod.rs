//! Configuration in two stages: the TOML a user writes ([`raw`], strict: unknown keys are errors)
//! is validated once ([`resolve`], one function per section; [`watch`] for `[[watch]]`) into the
//! resolved [`Config`] the rest of the program uses.
//!
//! Every raw key has an explicit default, so an empty file is a valid config equal to the
//! embedded default, watches included: a file's `[[watch]]` list replaces the default one only
//! when present (`watch = []` for none). [`overrides`] applies environment variables and `serve`
//! flags over the file before it is read.

mod overrides;
mod raw;
mod resolve;
mod watch;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use overrides::{Overrides, env_names};
pub use raw::{DEFAULT_MAX_LABEL_VALUES, EventFields};
pub use watch::{Boundary, Policy, Scope, Severity, Watch};

/// Size, count and time limits (`[limits]`), read straight from the file and each checked
/// positive.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_tracked_instances: usize,
    pub queue_capacity: usize,
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_id_bytes: usize,
    pub max_attributes_per_span: usize,
    /// Distinct values per metric label fed by client data (`service`); the rest are
    /// exported as `__other__`.
    pub max_label_values: usize,
    /// A request head (HTTP/1) must arrive within this long of its first byte; on HTTP/2, a
    /// connection's first request (gRPC: counted from the accept).
    #[serde(deserialize_with = "raw::duration")]
    pub header_timeout: Duration,
    /// A connection with no request in flight and nothing read for this long is closed.
    #[serde(deserialize_with = "raw::duration")]
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this long (408 otherwise; gRPC:
    /// `DEADLINE_EXCEEDED`).
    #[serde(deserialize_with = "raw::duration")]
    pub body_timeout: Duration,
    /// Open connections per listener, before the clamp below the file-descriptor limit.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tracked_instances: 1_000_000,
            queue_capacity: 1024,
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_id_bytes: 256,
            max_attributes_per_span: 128,
            max_label_values: DEFAULT_MAX_LABEL_VALUES,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub storage_dir: PathBuf,
    /// `[storage] findings_retention`: findings quiet this long leave memory and the store.
    pub findings_retention: Duration,
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
    /// `[evidence] window`: the span verdicts and window counts are judged over.
    pub evidence_window: Duration,
    /// `[discovery]`: statistics over unwatched attributes.
    pub discovery: Discovery,
    pub watches: Vec<Watch>,
    /// The file listed no `[[watch]]` (nor `watch = []`), so `watches` are the default ones.
    pub default_watches: bool,
}

impl Config {
    /// The embedded default.
    pub fn default_config() -> Self {
        Self::from_toml(DEFAULT_CONFIG).expect("embedded default config is valid")
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(Some(path), &Overrides::default())
    }

    /// The file at `path` (else the embedded default) with `overrides` applied over it.
    pub fn load_with(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => DEFAULT_CONFIG.to_owned(),
        };
        Self::from_toml_with(&text, overrides)
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with(text, &Overrides::default())
    }

    fn from_toml_with(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        overrides.apply(&mut doc)?;
        let raw: raw::RawConfig = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        raw.resolve()
    }
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

/// Where a file new to crosstalk is read from.
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

/// The resolved `[discovery]` section (also what is read: its keys need no resolving, only
/// checking).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    pub enabled: bool,
    pub max_keys: usize,
    pub min_users: u64,
    /// Share of batches inspected (0..=1).
    pub sample: f64,
    /// Keys skipped: exact names, or prefixes when they end in `.` or `*`.
    pub exclude: Vec<String>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            enabled: true,
            max_keys: 1000,
            min_users: 5,
            sample: 1.0,
            exclude: Vec::new(),
        }
    }
}
