//! Normalization: OTLP spans, OTLP log records and WebSocket event lines become [`Observation`]s,
//! the one shape the correlation engine understands.
//!
//! Everything here is a pure function of its input and the [`Extractor`] built from config:
//! no I/O, no clocks (the receipt time is passed in), no global state.

pub mod events;
pub mod otlp;
pub mod otlp_fast;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::config::Config;

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

/// Why an item was rejected; the `reason` label of `crosstalk_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    IdTooLong,
    InvalidJson,
    NotAnObject,
    MissingUser,
    BadTime,
    LineTooLong,
    InvalidUtf8,
    BadField,
    ControlChars,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::IdTooLong => "id_too_long",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingUser => "missing_user",
            RejectReason::BadTime => "bad_time",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::BadField => "bad_field",
            RejectReason::ControlChars => "control_chars_in_id",
        }
    }
}

/// Why a span's time was not taken as given; the `reason` label of `crosstalk_clamped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClampReason {
    /// The end precedes the start: the span is taken as a point at its start.
    EndBeforeStart,
    /// The end lies past the receipt time (+ skew): a span is exported only after it ended.
    EndInFuture,
    /// The start lies past the receipt time (+ skew): the receipt time is used instead.
    StartInFuture,
}

impl ClampReason {
    pub const ALL: [ClampReason; 3] = [
        ClampReason::EndBeforeStart,
        ClampReason::EndInFuture,
        ClampReason::StartInFuture,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClampReason::EndBeforeStart => "end_before_start",
            ClampReason::EndInFuture => "end_in_future",
            ClampReason::StartInFuture => "start_in_future",
        }
    }
}

/// How far ahead of the receipt time a span's clock may run (host clock skew) before its times
/// are called impossible: an exported span has ended, so it cannot end after it arrived.
pub const MAX_CLOCK_SKEW_NS: u64 = 15 * 60 * 1_000_000_000;

/// A span's event time within sane bounds: a missing start is the receipt time (a missing end
/// the start), a start in the
/// future is the receipt time, and a bad end (before the start, or in the future) is the start —
/// an overlap is then judged on the one instant the span is known to have been alive, instead of
/// on centuries it never lived. Returns `(start, end)` and counts each correction in `tally`.
pub fn clamp_span_times(start: u64, end: u64, received_ns: u64, tally: &mut Tally) -> (u64, u64) {
    let horizon = received_ns.saturating_add(MAX_CLOCK_SKEW_NS);
    let start = match start {
        0 => received_ns,
        s if s > horizon => {
            tally.clamp(ClampReason::StartInFuture);
            received_ns
        }
        s => s,
    };
    let end = if end == 0 {
        start // not set: a point, as for a missing start
    } else if end > horizon {
        tally.clamp(ClampReason::EndInFuture);
        start
    } else if end < start {
        tally.clamp(ClampReason::EndBeforeStart);
        start
    } else {
        end
    };
    (start, end)
}

/// The items a payload held, and those that could not be used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Items (spans, log records, event lines) in the payload.
    pub items: u64,
    /// Items rejected, by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// The first message of each rejection reason: bounded by the fixed set of reasons.
    pub errors: BTreeMap<RejectReason, String>,
    /// Span times corrected (the span is still used), by reason.
    pub clamped: BTreeMap<ClampReason, u64>,
}

impl Tally {
    pub fn reject(&mut self, reason: RejectReason, message: impl FnOnce() -> String) {
        *self.rejected.entry(reason).or_default() += 1;
        self.errors.entry(reason).or_insert_with(message);
    }

    /// Every reason with its count and first message, for `partial_success.error_message`
    /// (an exporter logs it; one reason hiding another sends the operator the wrong way).
    pub fn error_message(&self) -> Option<String> {
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(reason, message)| {
                let n = self.rejected.get(reason).copied().unwrap_or(0);
                format!("{n} {}: {message}", reason.as_str())
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn clamp(&mut self, reason: ClampReason) {
        *self.clamped.entry(reason).or_default() += 1;
    }

    /// Add another payload part's counts to this one.
    pub fn absorb(&mut self, other: Tally) {
        self.items += other.items;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        for (reason, n) in other.clamped {
            *self.clamped.entry(reason).or_default() += n;
        }
        for (reason, message) in other.errors {
            self.errors.entry(reason).or_insert(message);
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn accepted(&self) -> u64 {
        self.items - self.rejected_total()
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
        let rank = |keys: &[String]| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i))
                .collect::<KeyMap<_>>()
        };
        let mut watch_keys: KeyMap<Vec<u16>> = KeyMap::default();
        let mut origin_keys: KeyMap<Vec<u16>> = KeyMap::default();
        for (i, w) in config.watches.iter().enumerate() {
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
}

impl AttributeScan {
    /// Offer one attribute; `value` is already reduced to a string (None for unusable types).
    pub fn offer(&mut self, ex: &Extractor, key: &str, value: Option<&str>) {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_times_are_clamped_to_sane_bounds_and_counted() {
        const S: u64 = 1_000_000_000;
        let now = 1_700_000_000 * S;
        let century = 100 * 365 * 24 * 3600 * S;
        use ClampReason::*;
        #[rustfmt::skip]
        type Row = (u64, u64, (u64, u64), &'static [ClampReason]);
        let table: &[Row] = &[
            // start          end                 → (start, end)                     counted
            (now - 5 * S, now - S, (now - 5 * S, now - S), &[]),
            (0, 0, (now, now), &[]),
            (now - 5 * S, 0, (now - 5 * S, now - 5 * S), &[]),
            (now - S, now - 5 * S, (now - S, now - S), &[EndBeforeStart]),
            (now - S, now + century, (now - S, now - S), &[EndInFuture]),
            (
                now + century,
                now + century + S,
                (now, now),
                &[StartInFuture, EndInFuture],
            ),
            (
                now + century,
                now - S,
                (now, now),
                &[StartInFuture, EndBeforeStart],
            ),
            // Within the allowed clock skew: taken as given.
            (
                now + 60 * S,
                now + 61 * S,
                (now + 60 * S, now + 61 * S),
                &[],
            ),
        ];
        for &(start, end, want, counted) in table {
            let mut tally = Tally::default();
            assert_eq!(
                clamp_span_times(start, end, now, &mut tally),
                want,
                "{start} {end}"
            );
            let mut got: Vec<_> = tally.clamped.keys().copied().collect();
            let mut counted = counted.to_vec();
            got.sort();
            counted.sort();
            assert_eq!(got, counted, "{start} {end}");
        }
    }
}
