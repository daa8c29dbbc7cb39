//! Normalization: OTLP spans, OTLP log records and WebSocket event lines become [`Observation`]s,
//! the one shape the correlation engine understands.
//!
//! Everything here is a pure function of its input and the [`Extractor`] built from config:
//! no I/O, no clocks (the receipt time is passed in), no global state.

pub mod events;
pub mod otlp;
pub mod otlp_fast;
mod tally;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::config::{Config, Watch};

pub use tally::{
    ClampReason, MAX_CLOCK_SKEW_NS, RejectReason, Tally, UnusableValue, clamp_span_times,
};

/// Which kind of telemetry an observation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Span,
    Log,
    Event,
}

impl Signal {
    /// The value used in evidence `source` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Span => "span",
            Signal::Log => "log",
            Signal::Event => "event",
        }
    }

    /// The signal named by [`Self::as_str`]; anything else reads as a span (the oldest stores
    /// wrote only spans).
    pub fn from_name(name: &str) -> Self {
        match name {
            "log" => Signal::Log,
            "event" => Signal::Event,
            _ => Signal::Span,
        }
    }
}

/// A 16-byte W3C trace id (never all zeroes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zeroes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A valid trace id from raw bytes: exactly 16 bytes, not all zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = bytes.try_into().ok()?;
        (arr != [0; 16]).then_some(TraceId(arr))
    }

    /// A valid trace id from 32 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut arr = [0u8; 16];
        hex::decode_to_slice(text, &mut arr).ok()?;
        Self::from_bytes(&arr)
    }
}

impl SpanId {
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 8] = bytes.try_into().ok()?;
        (arr != [0; 8]).then_some(SpanId(arr))
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut arr = [0u8; 8];
        hex::decode_to_slice(text, &mut arr).ok()?;
        Self::from_bytes(&arr)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The identity of the process that emitted an observation, and what its resource says of the
/// user and tenant (the last resort of attribution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Identity attributes (`service.name`, `service.namespace`, `service.instance.id`, or the
    /// fallback `host.name` + `process.pid`): the `scope` object of process-scoped findings.
    pub identity: BTreeMap<String, String>,
    /// A stable string of `identity`, the process part of process-scoped instance keys.
    pub scope_key: String,
    pub user: Option<Box<str>>,
    pub tenant: Option<Box<str>>,
}

impl Resource {
    /// The attribute keys that identify a process, in scope-key order.
    pub const IDENTITY_KEYS: [&'static str; 3] =
        ["service.namespace", "service.name", "service.instance.id"];
    /// Used when a resource has no `service.instance.id`.
    pub const FALLBACK_KEYS: [&'static str; 2] = ["host.name", "process.pid"];

    /// Build from attribute pairs already reduced to strings.
    pub fn from_identity(
        identity: BTreeMap<String, String>,
        user: Option<Box<str>>,
        tenant: Option<Box<str>>,
    ) -> Self {
        let mut scope_key = String::new();
        for (k, v) in &identity {
            if !scope_key.is_empty() {
                scope_key.push('|');
            }
            scope_key.push_str(k);
            scope_key.push('=');
            scope_key.push_str(v);
        }
        Resource {
            identity,
            scope_key,
            user,
            tenant,
        }
    }

    /// `service.name`, for the `service` metric label.
    pub fn service(&self) -> &str {
        self.identity
            .get("service.name")
            .map(String::as_str)
            .unwrap_or("unknown_service")
    }
}

/// A watched attribute found on an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedId {
    /// Index into the config's watches.
    pub watch: u16,
    pub id: Box<str>,
    /// Where the service says the instance was made (its companion [`origin_attribute`]),
    /// at most [`MAX_ORIGIN_BYTES`]; shown in evidence, never used to judge.
    pub origin: Option<Box<str>>,
}

/// Longest origin kept; longer ones are cut at a character boundary (they are display text).
pub const MAX_ORIGIN_BYTES: usize = 256;

/// The companion attribute naming where an instance was made: `.instance_id`, or else `.id`,
/// at the end replaced by `.origin` (`agent_factory.instance_id` → `agent_factory.origin`,
/// `websocket.emitter.id` → `websocket.emitter.origin`), any other name with `.origin`
/// appended. The Python kit (`clients/python`, `origin_attribute`) applies the same rule.
pub fn origin_attribute(attribute: &str) -> String {
    for suffix in [".instance_id", ".id"] {
        if let Some(stem) = attribute.strip_suffix(suffix).filter(|s| !s.is_empty()) {
            return format!("{stem}.origin");
        }
    }
    format!("{attribute}.origin")
}

/// `value` as an origin: cut to [`MAX_ORIGIN_BYTES`]; None if empty or holding control
/// characters (an origin is only ever displayed, so a bad one is dropped, not the record).
pub fn origin_value(value: &str) -> Option<Box<str>> {
    if value.is_empty() || has_control_chars(value) {
        return None;
    }
    let mut end = value.len().min(MAX_ORIGIN_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(value[..end].into())
}

/// The WebSocket delivery facts of an event (from an event line or an OTLP log record).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    pub event: Option<Box<str>>,
    pub connection_id: Option<Box<str>>,
    pub connection_user: Option<Box<str>>,
    pub connection_tenant: Option<Box<str>>,
    pub run_id: Option<Box<str>>,
}

/// One use of zero or more watched instances by (possibly) a user, at a point or span of time.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub signal: Signal,
    /// Event time, Unix nanoseconds. `end_ns == start_ns` for points in time.
    pub start_ns: u64,
    pub end_ns: u64,
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub resource: Arc<Resource>,
    /// The user named on the record itself.
    pub user: Option<Box<str>>,
    pub tenant: Option<Box<str>>,
    pub watched: Vec<WatchedId>,
    pub delivery: Option<Box<Delivery>>,
}

impl Observation {
    /// Whether the engine has anything to do with this observation beyond learning its trace's user.
    pub fn is_relevant(&self) -> bool {
        !self.watched.is_empty() || self.delivery.is_some()
    }
}

/// Attribute keys come from the network and are looked up for every attribute of every span;
/// foldhash is several times cheaper than SipHash there, and the tables are small and fixed
/// (from config), so there is no flooding to defend against.
type KeyMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The attribute lookups normalization needs, compiled once from config.
#[derive(Debug, Clone)]
pub struct Extractor {
    /// Attribute key → preference rank (lower wins).
    user_keys: KeyMap<usize>,
    tenant_keys: KeyMap<usize>,
    /// Attribute key → the watches reading it.
    watch_keys: KeyMap<Vec<u16>>,
    /// Companion origin attribute → the watches whose ids it describes.
    origin_keys: KeyMap<Vec<u16>>,
    /// Every key in the four maps above: most attributes are none of them, and one lookup
    /// tells so (the zero-copy reader then never even formats the value).
    read_keys: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    pub max_id_bytes: usize,
    pub max_attributes: usize,
    pub event_fields: crate::config::EventFields,
    pub max_line_bytes: usize,
}

impl Extractor {
    pub fn new(config: &Config) -> Self {
        let slots: Vec<Option<&Watch>> = config.watches.iter().map(Some).collect();
        Self::with_watches(config, &slots)
    }

    /// Identity and limits from `config`, watches by slot: a watch's index is its slot (see
    /// [`crate::reload`]), `None` a removed watch no observation may name any more.
    pub fn with_watches(config: &Config, slots: &[Option<&Watch>]) -> Self {
        let rank = |keys: &[String]| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i))
                .collect::<KeyMap<_>>()
        };
        let mut watch_keys: KeyMap<Vec<u16>> = KeyMap::default();
        let mut origin_keys: KeyMap<Vec<u16>> = KeyMap::default();
        let live = slots
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Some((i, (*w)?)));
        for (i, w) in live {
            watch_keys
                .entry(w.attribute.clone())
                .or_default()
                .push(i as u16);
            origin_keys
                .entry(origin_attribute(&w.attribute))
                .or_default()
                .push(i as u16);
        }
        let user_keys = rank(&config.identity.user_attributes);
        let tenant_keys = rank(&config.identity.tenant_attributes);
        let read_keys = (user_keys.keys().chain(tenant_keys.keys()))
            .chain(watch_keys.keys())
            .chain(origin_keys.keys())
            .map(|k| k.as_bytes().into())
            .collect();
        Extractor {
            user_keys,
            tenant_keys,
            watch_keys,
            origin_keys,
            read_keys,
            max_id_bytes: config.limits.max_id_bytes,
            max_attributes: config.limits.max_attributes_per_span,
            event_fields: config.events.fields.clone(),
            max_line_bytes: config.events.max_line_bytes,
        }
    }

    /// Whether an attribute under `key` can matter to normalization (user, tenant or watch key).
    /// Takes bytes so that a key can be ruled out before it is converted to text.
    pub fn reads(&self, key: &[u8]) -> bool {
        self.read_keys.contains(key)
    }

    /// Watched attribute keys, for event lines (which are looked up by key, not scanned).
    pub fn watch_keys(&self) -> impl Iterator<Item = (&str, &[u16])> {
        self.watch_keys
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// Ids are opaque but printable: control characters (NUL, escapes) in a user or instance id are
/// hostile or broken input, and would travel into logs, XML reports and alert payloads.
pub fn has_control_chars(id: &str) -> bool {
    id.chars().any(char::is_control)
}

/// Collects user, tenant and watched ids while scanning one record's attributes.
#[derive(Default)]
pub(crate) struct AttributeScan {
    user: Option<(usize, Box<str>)>,
    tenant: Option<(usize, Box<str>)>,
    watched: Vec<WatchedId>,
    /// Origins seen, by watch; joined to the ids by [`AttributeScan::watched`] (the two
    /// attributes may come in either order).
    origins: Vec<(u16, Box<str>)>,
    /// The key of the first user, tenant or watched attribute longer than `max_id_bytes`.
    pub too_long: Option<Box<str>>,
    /// The key of the first user, tenant or watched id holding control characters (NUL...).
    pub control_chars: Option<Box<str>>,
    /// User, tenant and watched attributes whose value could not be used (empty, or of a type
    /// that names nothing), with their keys; counted by [`AttributeScan::count_unusable`].
    unusable: Vec<(UnusableValue, Box<str>)>,
}

impl AttributeScan {
    /// Offer one attribute; `value` is already reduced to a string (None for unusable types).
    pub fn offer(&mut self, ex: &Extractor, key: &str, value: Option<&str>) {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            self.note_unusable(ex, key, value.is_some());
            return;
        };
        if let Some(watches) = ex.origin_keys.get(key) {
            if let Some(origin) = origin_value(value) {
                self.origins
                    .extend(watches.iter().map(|&w| (w, origin.clone())));
            }
            return;
        }
        if ex.reads(key.as_bytes()) && has_control_chars(value) {
            self.control_chars.get_or_insert_with(|| key.into());
            return;
        }
        if let Some(&rank) = ex.user_keys.get(key) {
            if value.len() > ex.max_id_bytes {
                self.too_long.get_or_insert_with(|| key.into());
            } else if self.user.as_ref().is_none_or(|(r, _)| rank < *r) {
                self.user = Some((rank, value.into()));
            }
        }
        if let Some(&rank) = ex.tenant_keys.get(key) {
            if value.len() > ex.max_id_bytes {
                self.too_long.get_or_insert_with(|| key.into());
            } else if self.tenant.as_ref().is_none_or(|(r, _)| rank < *r) {
                self.tenant = Some((rank, value.into()));
            }
        }
        if let Some(watches) = ex.watch_keys.get(key) {
            if value.len() > ex.max_id_bytes {
                self.too_long.get_or_insert_with(|| key.into());
                return;
            }
            for &watch in watches {
                self.watched.push(WatchedId {
                    watch,
                    id: value.into(),
                    origin: None,
                });
            }
        }
    }

    /// Remember a user, tenant or watched attribute whose value is unusable: `empty` for "",
    /// else a type that names nothing (bool, double, array, map, unset).
    fn note_unusable(&mut self, ex: &Extractor, key: &str, empty: bool) {
        use UnusableValue::*;
        let kinds = [
            (ex.user_keys.contains_key(key), UserEmpty, UserNotString),
            (
                ex.tenant_keys.contains_key(key),
                TenantEmpty,
                TenantNotString,
            ),
            (
                ex.watch_keys.contains_key(key),
                InstanceEmpty,
                InstanceNotString,
            ),
        ];
        for (matches, if_empty, if_not_string) in kinds {
            if matches {
                let kind = if empty { if_empty } else { if_not_string };
                self.unusable.push((kind, key.into()));
            }
        }
    }

    /// Count the unusable values of this record in `tally`: a user or tenant one only when no
    /// other attribute named the user (tenant), every watched one. Call before [`Self::user`].
    pub fn count_unusable(&self, tally: &mut Tally) {
        for (kind, key) in &self.unusable {
            let named = match kind {
                UnusableValue::UserEmpty | UnusableValue::UserNotString => self.user.is_some(),
                UnusableValue::TenantEmpty | UnusableValue::TenantNotString => {
                    self.tenant.is_some()
                }
                _ => false,
            };
            if !named {
                tally.unusable(*kind, key);
            }
        }
    }

    /// The watched ids found, each with its origin if one came along.
    pub fn watched(&mut self) -> Vec<WatchedId> {
        let mut watched = std::mem::take(&mut self.watched);
        if !self.origins.is_empty() {
            for w in &mut watched {
                w.origin = (self.origins.iter())
                    .find(|(watch, _)| *watch == w.watch)
                    .map(|(_, o)| o.clone());
            }
        }
        watched
    }

    pub fn user(&mut self) -> Option<Box<str>> {
        self.user.take().map(|(_, u)| u)
    }

    pub fn tenant(&mut self) -> Option<Box<str>> {
        self.tenant.take().map(|(_, t)| t)
    }
}
