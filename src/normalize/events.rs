//! WebSocket event lines (one JSON object each) → [`Observation`]s.
//!
//! Canonical fields are found through the configured [`EventFields`](crate::config::EventFields)
//! mapping: a key as written (keys may contain dots, like `service.name`), else a dotted path
//! into nested objects. A line that cannot be used is a [`Rejection`] with a reason, never a panic.
//! A line used without one of its values (a watched id, tenant or connection user that is `""`,
//! a bool, an array or an object) says so in the [`Tally`], as OTLP attributes do; JSON `null`
//! reads as absent.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    Delivery, Extractor, Observation, RejectReason, Resource, Signal, SpanId, Tally, TraceId,
    UnusableValue, WatchedId, origin_attribute, origin_value,
};

/// Why one event could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

fn reject(reason: RejectReason, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

/// Find a field: the key as written, else a dotted path into nested objects.
pub fn lookup<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = obj.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn as_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether a present field names nothing: `Some(true)` for `""`, `Some(false)` for a bool,
/// array or object; `None` for a usable value, `null` or no field.
fn names_nothing(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::String(s) => s.is_empty().then_some(true),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => Some(false),
        Value::Null | Value::Number(_) => None,
    }
}

/// Count in `tally` the values of a used event that name nothing: its watched ids, its tenant
/// and its connection's user and tenant (its own user is required: without one the line is
/// rejected as `missing_user`).
fn count_unusable(obj: &Map<String, Value>, ex: &Extractor, tally: &mut Tally) {
    use UnusableValue::*;
    let f = &ex.event_fields;
    let fields = [
        (f.tenant.as_str(), TenantEmpty, TenantNotString),
        (f.connection_user.as_str(), UserEmpty, UserNotString),
        (f.connection_tenant.as_str(), TenantEmpty, TenantNotString),
    ];
    let watched = (ex.watch_keys()).map(|(key, _)| (key, InstanceEmpty, InstanceNotString));
    for (path, if_empty, if_not_string) in fields.into_iter().chain(watched) {
        if let Some(empty) = names_nothing(lookup(obj, path)) {
            tally.unusable(if empty { if_empty } else { if_not_string }, path);
        }
    }
}

/// Parse one line. `line` excludes the newline. The values a used line could not use are
/// counted in `tally` (nothing is, for a rejected line).
pub fn observe_event_line(
    line: &[u8],
    ex: &Extractor,
    received_ns: u64,
    tally: &mut Tally,
) -> Result<Observation, Rejection> {
    if line.len() > ex.max_line_bytes {
        return Err(reject(
            RejectReason::LineTooLong,
            format!("line longer than {} bytes", ex.max_line_bytes),
        ));
    }
    let text = std::str::from_utf8(line)
        .map_err(|e| reject(RejectReason::InvalidUtf8, format!("invalid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| reject(RejectReason::InvalidJson, format!("invalid JSON: {e}")))?;
    observe_event_value(&value, ex, received_ns, tally)
}

/// Use one already-parsed event; see [`observe_event_line`].
pub fn observe_event_value(
    value: &Value,
    ex: &Extractor,
    received_ns: u64,
    tally: &mut Tally,
) -> Result<Observation, Rejection> {
    let obj = value
        .as_object()
        .ok_or_else(|| reject(RejectReason::NotAnObject, "event is not a JSON object"))?;
    let f = &ex.event_fields;
    let id = |path: &str| -> Result<Option<Box<str>>, Rejection> {
        match lookup(obj, path).and_then(as_id) {
            Some(v) if super::has_control_chars(&v) => Err(reject(
                RejectReason::ControlChars,
                format!("field `{path}` holds control characters"),
            )),
            Some(v) if v.len() > ex.max_id_bytes => Err(reject(
                RejectReason::IdTooLong,
                format!("field `{path}` longer than {} bytes", ex.max_id_bytes),
            )),
            other => Ok(other.map(String::into_boxed_str)),
        }
    };

    let user = id(&f.user)?.ok_or_else(|| {
        reject(
            RejectReason::MissingUser,
            format!("missing user field `{}`", f.user),
        )
    })?;
    let time_ns = match lookup(obj, &f.time) {
        None | Some(Value::Null) => received_ns,
        Some(v) => parse_time(v).ok_or_else(|| {
            reject(
                RejectReason::BadTime,
                format!(
                    "field `{}` is neither an RFC 3339 time nor non-negative epoch seconds",
                    f.time
                ),
            )
        })?,
    };
    let mut identity = BTreeMap::new();
    if let Some(service) = id(&f.service)? {
        identity.insert("service.name".to_owned(), service.into_string());
    }
    if let Some(instance) = id(&f.service_instance)? {
        identity.insert("service.instance.id".to_owned(), instance.into_string());
    }
    let mut watched = Vec::new();
    for (key, watches) in ex.watch_keys() {
        if let Some(instance) = id(key)? {
            let origin = lookup(obj, &origin_attribute(key))
                .and_then(Value::as_str)
                .and_then(origin_value);
            watched.extend(watches.iter().map(|&watch| WatchedId {
                watch,
                id: instance.clone(),
                origin: origin.clone(),
            }));
        }
    }
    let delivery = Delivery {
        event: id(&f.event)?,
        connection_id: id(&f.connection)?,
        connection_user: id(&f.connection_user)?,
        connection_tenant: id(&f.connection_tenant)?,
        run_id: id(&f.run_id)?,
    };
    let trace_id = lookup(obj, &f.trace_id)
        .and_then(Value::as_str)
        .and_then(TraceId::from_hex);
    let span_id = lookup(obj, &f.span_id)
        .and_then(Value::as_str)
        .and_then(SpanId::from_hex);
    let tenant = id(&f.tenant)?;
    count_unusable(obj, ex, tally);
    Ok(Observation {
        signal: Signal::Event,
        start_ns: time_ns,
        end_ns: time_ns,
        trace_id,
        span_id,
        resource: Arc::new(Resource::from_identity(identity, None, None)),
        user: Some(user),
        tenant,
        watched,
        delivery: delivery
            .connection_user
            .is_some()
            .then(|| Box::new(delivery)),
    })
}

/// RFC 3339 text, or seconds since the epoch as a number (fractions allowed).
fn parse_time(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
            u64::try_from(t.unix_timestamp_nanos()).ok()
        }
        Value::Number(n) => epoch_seconds_to_ns(&n.to_string()),
        _ => None,
    }
}

/// Decimal seconds to nanoseconds without going through f64, which would lose the
/// sub-microsecond digits of current timestamps.
fn epoch_seconds_to_ns(text: &str) -> Option<u64> {
    if text.contains(['e', 'E', '-']) {
        let secs: f64 = text.parse().ok()?;
        return (secs.is_finite() && (0.0..1.0e10).contains(&secs)).then_some((secs * 1e9) as u64);
    }
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let whole: u64 = whole.parse().ok()?;
    let mut frac_ns = 0u64;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        frac_ns +=
            u64::from(digit.checked_sub(b'0').filter(|d| *d <= 9)?) * 10u64.pow(8 - i as u32);
    }
    whole.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn extractor(extra: &str) -> Extractor {
        let text = format!("[[watch]]\nname=\"emitter\"\nattribute=\"emitter_id\"\n{extra}");
        Extractor::new(&Config::from_toml(&text).unwrap())
    }

    #[test]
    fn canonical_line_with_foreign_connection_is_a_delivery() {
        let line = br#"{"time":"2026-01-02T03:04:05.5Z","event":"agent_thinking","user_id":"alice","connection_id":"c9","connection_user_id":"bob","emitter_id":"e1","emitter_id.origin":"app.ws:make_emitter:12","service.name":"api","run_id":"r1"}"#;
        let obs = observe_event_line(line, &extractor(""), 0, &mut Tally::default()).unwrap();
        assert_eq!(obs.user.as_deref(), Some("alice"));
        let d = obs.delivery.as_ref().unwrap();
        assert_eq!(d.connection_user.as_deref(), Some("bob"));
        assert_eq!(d.event.as_deref(), Some("agent_thinking"));
        assert_eq!(d.run_id.as_deref(), Some("r1"));
        assert_eq!(
            obs.watched,
            vec![WatchedId {
                watch: 0,
                id: "e1".into(),
                origin: Some("app.ws:make_emitter:12".into()),
            }]
        );
        assert_eq!(obs.start_ns, 1_767_323_045_500_000_000);
        assert_eq!(obs.resource.service(), "api");
    }

    #[test]
    fn epoch_seconds_and_remapped_nested_fields() {
        let ex = extractor("[events.fields]\nuser=\"payload.user_id\"\n");
        let line = br#"{"time": 1700000000.25, "payload": {"user_id": 7}}"#;
        let obs = observe_event_line(line, &ex, 0, &mut Tally::default()).unwrap();
        assert_eq!(obs.user.as_deref(), Some("7"));
        assert_eq!(obs.start_ns, 1_700_000_000_250_000_000);
        assert!(obs.delivery.is_none());
    }

    #[test]
    fn bad_lines_are_rejected_with_reasons() {
        let ex = extractor("");
        let cases: &[(&[u8], RejectReason)] = &[
            (b"{not json", RejectReason::InvalidJson),
            (b"[1,2]", RejectReason::NotAnObject),
            (b"{\"event\":\"x\"}", RejectReason::MissingUser),
            (b"{\"user_id\":\"a\",\"time\":-5}", RejectReason::BadTime),
            (
                b"{\"user_id\":\"a\",\"time\":\"yesterday\"}",
                RejectReason::BadTime,
            ),
            (b"{\"user_id\":\"\xff\"}", RejectReason::InvalidUtf8),
        ];
        for (line, reason) in cases {
            let err = observe_event_line(line, &ex, 0, &mut Tally::default()).unwrap_err();
            assert_eq!(err.reason, *reason, "{}", String::from_utf8_lossy(line));
        }
        let long = format!("{{\"user_id\":\"{}\"}}", "a".repeat(300));
        let err = observe_event_line(long.as_bytes(), &ex, 0, &mut Tally::default()).unwrap_err();
        assert_eq!(err.reason, RejectReason::IdTooLong);
    }

    #[test]
    fn values_naming_nothing_are_counted_and_the_line_still_used() {
        use UnusableValue::*;
        let ex = extractor("");
        let cases: &[(&str, &[UnusableValue])] = &[
            (r#"{"user_id":"a","emitter_id":""}"#, &[InstanceEmpty]),
            (r#"{"user_id":"a","emitter_id":true}"#, &[InstanceNotString]),
            (
                r#"{"user_id":"a","emitter_id":{"id":"e"}}"#,
                &[InstanceNotString],
            ),
            (r#"{"user_id":"a","tenant_id":""}"#, &[TenantEmpty]),
            (r#"{"user_id":"a","tenant_id":[1]}"#, &[TenantNotString]),
            (r#"{"user_id":"a","connection_user_id":""}"#, &[UserEmpty]),
            (
                r#"{"user_id":"a","connection_user_id":false}"#,
                &[UserNotString],
            ),
            (
                r#"{"user_id":"a","connection_tenant_id":""}"#,
                &[TenantEmpty],
            ),
            // Absent, null and numbers are not unusable values.
            (r#"{"user_id":"a","emitter_id":null,"tenant_id":7}"#, &[]),
            (r#"{"user_id":"a","emitter_id":"e1"}"#, &[]),
        ];
        for (line, want) in cases {
            let mut tally = Tally::default();
            let obs = observe_event_line(line.as_bytes(), &ex, 0, &mut tally).unwrap();
            assert_eq!(obs.user.as_deref(), Some("a"), "{line}");
            let got: Vec<UnusableValue> = tally.unusable.keys().copied().collect();
            assert_eq!(got, *want, "{line}");
        }
        // A rejected line counts its rejection only.
        let mut tally = Tally::default();
        let line = br#"{"user_id":"","emitter_id":""}"#;
        assert!(observe_event_line(line, &ex, 0, &mut tally).is_err());
        assert!(tally.unusable.is_empty());
    }

    proptest::proptest! {
        /// Any bytes at all: an observation or a rejection with a reason, never a panic.
        #[test]
        fn any_line_is_used_or_rejected(line in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let ex = extractor("");
            let _ = observe_event_line(&line, &ex, 0, &mut Tally::default());
        }

        /// Lines that look like events, with hostile values in every canonical field.
        #[test]
        fn hostile_field_values_never_panic(
            user in ".{0,300}", conn in ".{0,40}", time in proptest::num::f64::ANY, text_time in ".{0,40}"
        ) {
            let ex = extractor("");
            let a = serde_json::json!({"user_id": user, "connection_user_id": conn, "time": time, "emitter_id": conn});
            let b = serde_json::json!({"user_id": user, "time": text_time, "payload": {"user_id": [user]}});
            for v in [a, b] {
                if let Ok(obs) = observe_event_value(&v, &ex, 0, &mut Tally::default()) {
                    proptest::prop_assert!(obs.user.as_deref().is_some_and(|u| u.len() <= ex.max_id_bytes && !crate::normalize::has_control_chars(u)));
                }
            }
        }
    }
}
