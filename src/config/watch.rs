//! The `[[watch]]` sections: which attribute names an object instance, and what counts as that
//! instance serving two principals. Each enum is spelled in TOML through its one name table.

use std::collections::HashSet;
use std::time::Duration;

use super::raw::RawWatch;
use super::resolve::{Named, parse_duration, parse_named};
use super::{ConfigError, invalid};

/// One watched kind of object instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub name: String,
    pub attribute: String,
    pub policy: Policy,
    pub scope: Scope,
    pub boundary: Boundary,
    pub retention: Duration,
    pub severity: Severity,
    /// Must see traffic (`expected = true`): the CrosstalkExpectedWatchNeverObserved alert pages
    /// when it never does; other watches never observed are only reported.
    pub expected: bool,
    /// Instance ids that may serve many principals (a deliberately shared read-only cache): no
    /// finding for them; the watch's other instances are judged as ever.
    pub allow_instances: Vec<String>,
}

/// `allow_instances` entries per watch at most: a short list of known exceptions, not a registry.
const MAX_ALLOW_INSTANCES: usize = 1000;

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

impl Named for Policy {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("exclusive", Policy::Exclusive),
        ("concurrent", Policy::Concurrent),
        ("allow", Policy::Allow),
    ];
}

/// What identifies an instance besides its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The id plus the emitting process's resource identity.
    Process,
    /// The id value alone, across every process.
    Global,
}

impl Named for Scope {
    const NAMES: &'static [(&'static str, Self)] =
        &[("process", Scope::Process), ("global", Scope::Global)];
}

/// The isolation boundary a watch guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    User,
    Tenant,
}

impl Named for Boundary {
    const NAMES: &'static [(&'static str, Self)] =
        &[("user", Boundary::User), ("tenant", Boundary::Tenant)];
}

/// The severity a watch's findings carry (a cross-tenant finding is always critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Named for Severity {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("critical", Severity::Critical),
        ("warning", Severity::Warning),
        ("info", Severity::Info),
    ];
}

impl Watch {
    /// One line for `config check`: what is watched and how it is judged.
    pub fn summary(&self) -> String {
        let allowed = if self.allow_instances.is_empty() {
            String::new()
        } else {
            format!(", allow_instances {}", self.allow_instances.join(", "))
        };
        format!(
            "{} = {} (policy {}, scope {}, boundary {}, retention {}, severity {}{allowed})",
            self.name,
            self.attribute,
            self.policy.name(),
            self.scope.name(),
            self.boundary.name(),
            humantime::format_duration(self.retention),
            self.severity.name()
        )
    }

    /// Whether instance `id` is one this watch lets serve many principals.
    pub fn allows_instance(&self, id: &str) -> bool {
        self.allow_instances.iter().any(|a| a == id)
    }
}

impl Policy {
    /// The TOML spelling, also used in findings.
    pub fn as_str(self) -> &'static str {
        self.name()
    }
}

impl Boundary {
    /// The TOML spelling, also used in findings.
    pub fn as_str(self) -> &'static str {
        self.name()
    }
}

impl Severity {
    /// The TOML spelling, also used in findings and alerts.
    pub fn as_str(self) -> &'static str {
        self.name()
    }
}

/// Validate every `[[watch]]`; `watch[i].field` names the offending key.
pub(super) fn resolve_watches(
    raw: Vec<RawWatch>,
    has_tenant_attributes: bool,
) -> Result<Vec<Watch>, ConfigError> {
    let mut names = HashSet::new();
    let mut watches = Vec::with_capacity(raw.len());
    for (i, w) in raw.into_iter().enumerate() {
        let key = format!("watch[{i}].name");
        if !valid_watch_name(&w.name) {
            return Err(invalid(
                key,
                format!(
                    "`{}` must start with a letter and hold only letters, digits, `_` or `-` (64 at most)",
                    w.name
                ),
            ));
        }
        if !names.insert(w.name.clone()) {
            return Err(invalid(key, format!("`{}` names two watches", w.name)));
        }
        watches.push(resolve_watch(i, w, has_tenant_attributes)?);
    }
    // Watches are numbered by a u16 in the engine's keys.
    if watches.len() > u16::MAX as usize {
        return Err(invalid("watch", "too many watches"));
    }
    Ok(watches)
}

/// One watch whose name is already checked.
fn resolve_watch(i: usize, w: RawWatch, has_tenant_attributes: bool) -> Result<Watch, ConfigError> {
    let key = |field: &str| format!("watch[{i}].{field}");
    if w.attribute.is_empty() {
        return Err(invalid(key("attribute"), "must not be empty"));
    }
    let policy = parse_named(&key("policy"), &w.policy)?;
    let scope = parse_named(&key("scope"), &w.scope)?;
    let boundary = parse_named(&key("boundary"), &w.boundary)?;
    if boundary == Boundary::Tenant && !has_tenant_attributes {
        return Err(invalid(
            key("boundary"),
            "a tenant boundary needs identity.tenant_attributes",
        ));
    }
    let retention = parse_duration(&key("retention"), &w.retention)?;
    if retention.is_zero() {
        return Err(invalid(key("retention"), "must be greater than 0"));
    }
    if w.allow_instances.len() > MAX_ALLOW_INSTANCES {
        return Err(invalid(
            key("allow_instances"),
            format!("{MAX_ALLOW_INSTANCES} instances at most"),
        ));
    }
    if w.allow_instances.iter().any(String::is_empty) {
        return Err(invalid(
            key("allow_instances"),
            "an instance id must not be empty",
        ));
    }
    Ok(Watch {
        allow_instances: w.allow_instances,
        name: w.name,
        attribute: w.attribute,
        policy,
        scope,
        boundary,
        retention,
        severity: parse_named(&key("severity"), &w.severity)?,
        expected: w.expected,
    })
}

/// Watch names become metric label values and finding ids: keep them to a safe alphabet.
fn valid_watch_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}
