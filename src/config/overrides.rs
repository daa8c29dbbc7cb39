//! Overrides of single keys from the environment (`CROSSTALK_<SECTION>_<KEY>`) and from `serve`
//! flags, applied to the TOML document before it is read, so precedence is simply the order of
//! application: flag > env > file > default, and every value is validated like one in a file.

use toml::{Table, Value};

use super::{ConfigError, invalid};

/// How an environment value is turned into TOML.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated.
    List,
}

use Kind::{Bool, Int, List, Str};

/// Every key settable from the environment as `CROSSTALK_<SECTION>_<KEY>` (upper case).
/// `[[watch]]` and `[events.fields]` are files-only: they are tables, not single values.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("listen", "otlp_grpc", Str),
    ("listen", "otlp_http", Str),
    ("listen", "admin", Str),
    ("storage", "dir", Str),
    ("storage", "findings_retention", Str),
    ("identity", "user_attributes", List),
    ("identity", "tenant_attributes", List),
    ("attribution", "wait", Str),
    ("attribution", "max_pending", Int),
    ("limits", "max_tracked_instances", Int),
    ("limits", "queue_capacity", Int),
    ("limits", "max_body_bytes", Int),
    ("limits", "max_decompressed_bytes", Int),
    ("limits", "max_id_bytes", Int),
    ("limits", "max_attributes_per_span", Int),
    ("limits", "max_label_values", Int),
    ("limits", "header_timeout", Str),
    ("limits", "idle_timeout", Str),
    ("limits", "body_timeout", Str),
    ("limits", "max_connections", Int),
    ("events", "files", List),
    ("events", "start_at", Str),
    ("events", "max_line_bytes", Int),
    ("events", "poll_interval", Str),
    ("shutdown", "grace", Str),
    ("privacy", "user_ids", Str),
    ("privacy", "hmac_key", Str),
    ("privacy", "hmac_key_file", Str),
    ("auth", "otlp_token_file", Str),
    ("auth", "admin_token_file", Str),
    ("auth", "admin_insecure", Bool),
    ("alertmanager", "url", Str),
    ("alertmanager", "resend_interval", Str),
    ("alertmanager", "resolve_after", Str),
    ("alertmanager", "runbook_url", Str),
    ("alertmanager", "external_url", Str),
    ("alertmanager", "timeout", Str),
    ("cluster", "redis_url", List),
    ("cluster", "max_pending", Int),
    ("cluster", "timeout", Str),
    ("tls", "cert_file", Str),
    ("tls", "key_file", Str),
];

/// `CROSSTALK_*` variables that are not config keys: left alone, never warned about.
const NOT_CONFIG: &[&str] = &[
    "CROSSTALK_CONFIG",
    "CROSSTALK_LOG_FORMAT",
    // Set by `crosstalk run` for the command it runs.
    "CROSSTALK_EVENTS_URL",
    "CROSSTALK_GRPC_ENDPOINT",
];

/// The environment variable for a key.
fn env_name(section: &str, key: &str) -> String {
    format!("CROSSTALK_{}_{}", section, key).to_uppercase()
}

/// Every environment variable crosstalk reads as config, for `--help` and the README.
pub fn env_names() -> Vec<String> {
    ENV_KEYS.iter().map(|(s, k, _)| env_name(s, k)).collect()
}

/// Single keys set from outside the file, in the order they apply (later wins).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    entries: Vec<(&'static str, &'static str, Value)>,
    /// `CROSSTALK_*` variables that are neither config nor known; warned about, not fatal.
    pub unknown_env: Vec<String>,
}

impl Overrides {
    /// The `CROSSTALK_<SECTION>_<KEY>` variables of `vars` (the process environment in `main`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut out = Overrides::default();
        for (name, value) in vars {
            if !name.starts_with("CROSSTALK_") || NOT_CONFIG.contains(&name.as_str()) {
                continue;
            }
            let Some(&(section, key, kind)) =
                ENV_KEYS.iter().find(|(s, k, _)| env_name(s, k) == name)
            else {
                out.unknown_env.push(name);
                continue;
            };
            let v = typed(kind, &value)
                .ok_or_else(|| invalid(&name, format!("`{value}` is not a {}", kind_name(kind))))?;
            out.entries.push((section, key, v));
        }
        out.unknown_env.sort();
        Ok(out)
    }

    /// A `serve` flag: `[listen] <key>` or `[storage] dir`; applied after the environment.
    pub fn set(&mut self, section: &'static str, key: &'static str, value: String) {
        self.entries.push((section, key, Value::String(value)));
    }

    pub(super) fn apply(&self, doc: &mut Table) -> Result<(), ConfigError> {
        for (section, key, value) in &self.entries {
            let table = doc
                .entry(section.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            let Value::Table(table) = table else {
                return Err(invalid(*section, "must be a table"));
            };
            table.insert(key.to_string(), value.clone());
        }
        Ok(())
    }
}

fn typed(kind: Kind, value: &str) -> Option<Value> {
    Some(match kind {
        Str => Value::String(value.to_owned()),
        Int => Value::Integer(value.trim().parse().ok()?),
        Bool => Value::Boolean(value.trim().parse().ok()?),
        List => Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Str => "string",
        Int => "whole number",
        Bool => "boolean (true or false)",
        List => "comma-separated list",
    }
}
