//! Raw → resolved: one function per section turns what the user wrote into the typed form the
//! program runs on, or into an error that names the offending key.

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{
    OneOrMany, RawAlertmanager, RawAttribution, RawAuth, RawCluster, RawConfig, RawDiscovery,
    RawEvents, RawEvidence, RawIdentity, RawListen, RawPrivacy, RawStorage, RawWatch,
};
use super::watch::resolve_watches;
use super::{
    Alertmanager, Attribution, Auth, Cluster, Config, ConfigError, Events, Identity, Limits,
    Listen, Privacy, StartAt, TlsFiles, UserIds, invalid,
};

/// A config enum spelled by name in TOML. Its one table serves both directions: parsing the
/// TOML string and printing the value back (in findings, alerts, `config` output).
pub(super) trait Named: Copy + PartialEq + 'static {
    /// Every variant with its spelling, in the order an error message lists them.
    const NAMES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("", |(n, _)| n)
    }
}

impl Named for UserIds {
    const NAMES: &'static [(&'static str, Self)] =
        &[("raw", UserIds::Raw), ("hmac", UserIds::Hmac)];
}

impl Named for StartAt {
    const NAMES: &'static [(&'static str, Self)] =
        &[("beginning", StartAt::Beginning), ("end", StartAt::End)];
}

pub(super) fn parse_named<T: Named>(key: &str, value: &str) -> Result<T, ConfigError> {
    match T::NAMES.iter().find(|(n, _)| *n == value) {
        Some((_, v)) => Ok(*v),
        None => {
            let names: Vec<&str> = T::NAMES.iter().map(|(n, _)| *n).collect();
            Err(invalid(
                key,
                format!("`{value}` is not one of: {}", names.join(", ")),
            ))
        }
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

pub(super) fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
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

impl RawConfig {
    /// Sections are resolved in the order their errors were always reported in.
    pub(super) fn resolve(self) -> Result<Config, ConfigError> {
        let listen = listen(&self.listen)?;
        let identity = identity(self.identity)?;
        let limits = limits(self.limits)?;
        let events = events(self.events)?;
        let default_watches = self.watches.is_none();
        let raw_watches = self.watches.unwrap_or_else(default_raw_watches);
        let watches = resolve_watches(raw_watches, !identity.tenant_attributes.is_empty())?;
        let privacy = privacy(self.privacy)?;
        let alertmanager = self.alertmanager.map(alertmanager).transpose()?;
        let auth = auth(self.auth, &listen)?;
        let cluster = self.cluster.map(cluster).transpose()?;
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
            findings_retention: findings_retention(&self.storage)?,
            storage_dir: self.storage.dir,
            identity,
            attribution: attribution(&self.attribution)?,
            limits,
            events,
            shutdown_grace: parse_duration("shutdown.grace", &self.shutdown.grace)?,
            evidence_window: evidence_window(&self.evidence)?,
            discovery: discovery(self.discovery)?,
            watches,
            default_watches,
        })
    }
}

/// `[storage] findings_retention`: a finding quiet this long is deleted.
fn findings_retention(raw: &RawStorage) -> Result<Duration, ConfigError> {
    let key = "storage.findings_retention";
    let retention = parse_duration(key, &raw.findings_retention)?;
    if retention.is_zero() {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(retention)
}

/// `[evidence] window`: at least a minute, so that its buckets are at least seconds wide.
fn evidence_window(raw: &RawEvidence) -> Result<Duration, ConfigError> {
    let window = parse_duration("evidence.window", &raw.window)?;
    if window < Duration::from_secs(60) {
        return Err(invalid("evidence.window", "must be at least 1m"));
    }
    Ok(window)
}

/// The watches of the embedded default, for a file that lists none of its own.
fn default_raw_watches() -> Vec<RawWatch> {
    toml::from_str::<RawConfig>(super::DEFAULT_CONFIG)
        .ok()
        .and_then(|raw| raw.watches)
        .unwrap_or_default()
}

fn listen(raw: &RawListen) -> Result<Listen, ConfigError> {
    let listen = Listen {
        otlp_grpc: parse_addr("listen.otlp_grpc", &raw.otlp_grpc)?,
        otlp_http: parse_addr("listen.otlp_http", &raw.otlp_http)?,
        admin: parse_addr("listen.admin", &raw.admin)?,
    };
    let named = [
        ("listen.otlp_grpc", listen.otlp_grpc),
        ("listen.otlp_http", listen.otlp_http),
        ("listen.admin", listen.admin),
    ];
    for (i, (key, a)) in named.iter().enumerate() {
        for (other, b) in &named[i + 1..] {
            // Port 0 picks a free port each time; an unspecified address (0.0.0.0) takes the
            // port on every interface, so it collides with any address on that port.
            let same_host = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
            if a.port() != 0 && a.port() == b.port() && same_host {
                return Err(invalid(
                    *other,
                    format!("{b} collides with {key} ({a}): each listener needs its own port"),
                ));
            }
        }
    }
    Ok(listen)
}

fn identity(raw: RawIdentity) -> Result<Identity, ConfigError> {
    if raw.user_attributes.is_empty() {
        return Err(invalid(
            "identity.user_attributes",
            "must name at least one attribute",
        ));
    }
    if let Some(empty) = raw
        .user_attributes
        .iter()
        .chain(&raw.tenant_attributes)
        .find(|a| a.is_empty())
    {
        return Err(invalid(
            "identity",
            format!("attribute names must not be empty (got {empty:?})"),
        ));
    }
    Ok(Identity {
        user_attributes: raw.user_attributes,
        tenant_attributes: raw.tenant_attributes,
    })
}

fn limits(raw: Limits) -> Result<Limits, ConfigError> {
    for (key, value) in [
        ("limits.max_tracked_instances", raw.max_tracked_instances),
        ("limits.queue_capacity", raw.queue_capacity),
        ("limits.max_body_bytes", raw.max_body_bytes),
        ("limits.max_decompressed_bytes", raw.max_decompressed_bytes),
        ("limits.max_id_bytes", raw.max_id_bytes),
        (
            "limits.max_attributes_per_span",
            raw.max_attributes_per_span,
        ),
        ("limits.max_label_values", raw.max_label_values),
        ("limits.max_connections", raw.max_connections),
    ] {
        positive(key, value)?;
    }
    for (key, value) in [
        ("limits.header_timeout", raw.header_timeout),
        ("limits.idle_timeout", raw.idle_timeout),
        ("limits.body_timeout", raw.body_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(key, "must be greater than 0"));
        }
    }
    Ok(raw)
}

fn events(raw: RawEvents) -> Result<Events, ConfigError> {
    Ok(Events {
        start_at: parse_named("events.start_at", &raw.start_at)?,
        files: raw.files,
        max_line_bytes: positive("events.max_line_bytes", raw.max_line_bytes)?,
        poll_interval: parse_duration("events.poll_interval", &raw.poll_interval)?,
        fields: raw.fields,
    })
}

fn privacy(raw: RawPrivacy) -> Result<Privacy, ConfigError> {
    Ok(Privacy {
        user_ids: parse_named("privacy.user_ids", &raw.user_ids)?,
        hmac_key: raw.hmac_key.filter(|k| !k.is_empty()),
        hmac_key_file: raw.hmac_key_file,
    })
}

fn alertmanager(raw: RawAlertmanager) -> Result<Alertmanager, ConfigError> {
    let uri: http::Uri = raw.url.parse().map_err(|e| {
        invalid(
            "alertmanager.url",
            format!("`{}` is not a URL ({e})", raw.url),
        )
    })?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(invalid(
            "alertmanager.url",
            format!("`{}` must be an http:// URL with a host", raw.url),
        ));
    }
    Ok(Alertmanager {
        url: raw.url.trim_end_matches('/').to_owned(),
        resend_interval: parse_duration("alertmanager.resend_interval", &raw.resend_interval)?,
        resolve_after: parse_duration("alertmanager.resolve_after", &raw.resolve_after)?,
        runbook_url: raw.runbook_url,
        external_url: raw.external_url.map(|u| u.trim_end_matches('/').to_owned()),
        timeout: parse_duration("alertmanager.timeout", &raw.timeout)?,
    })
}

/// The findings API holds user ids, so a non-loopback admin listener needs a token or an
/// explicit acceptance of the risk.
fn auth(raw: RawAuth, listen: &Listen) -> Result<Auth, ConfigError> {
    if !listen.admin.ip().is_loopback() && raw.admin_token_file.is_none() && !raw.admin_insecure {
        return Err(invalid(
            "listen.admin",
            format!(
                "{} is not a loopback address and the findings API holds user ids: set auth.admin_token_file, or auth.admin_insecure = true to accept the risk",
                listen.admin
            ),
        ));
    }
    Ok(Auth {
        otlp_token_file: raw.otlp_token_file,
        admin_token_file: raw.admin_token_file,
        admin_insecure: raw.admin_insecure,
    })
}

fn cluster(raw: RawCluster) -> Result<Cluster, ConfigError> {
    let urls = match raw.redis_url {
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
    Ok(Cluster {
        redis_urls: urls,
        max_pending: positive("cluster.max_pending", raw.max_pending)?,
        timeout: parse_duration("cluster.timeout", &raw.timeout)?,
    })
}

fn attribution(raw: &RawAttribution) -> Result<Attribution, ConfigError> {
    Ok(Attribution {
        wait: parse_duration("attribution.wait", &raw.wait)?,
        max_pending: positive("attribution.max_pending", raw.max_pending)?,
    })
}

fn discovery(raw: RawDiscovery) -> Result<super::Discovery, ConfigError> {
    if !(raw.sample > 0.0 && raw.sample <= 1.0) {
        return Err(invalid("discovery.sample", "must be in (0, 1]"));
    }
    if raw.exclude.iter().any(|e| e.is_empty()) {
        return Err(invalid("discovery.exclude", "holds an empty key"));
    }
    if raw.min_users < 2 {
        return Err(invalid("discovery.min_users", "must be at least 2"));
    }
    Ok(super::Discovery {
        max_keys: positive("discovery.max_keys", raw.max_keys)?,
        ..raw
    })
}
