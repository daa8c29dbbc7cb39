//! OTLP spans and log records → [`Observation`]s.
//!
//! Only the fields crosstalk needs are read: ids, times, the user and tenant attributes, and
//! the watched attributes. A span whose watched id is longer than `max_id_bytes` is rejected
//! (counted in the [`Tally`]); the rest of the payload is used.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;

use super::{
    AttributeScan, Delivery, Extractor, Observation, RejectReason, Resource, Signal, SpanId, Tally,
    TraceId, UnusableValue,
};

/// An attribute value as an id string: strings as they are, integers in decimal, bytes in hex.
/// Other types (bool, double, arrays, maps) never name an instance or a user.
pub fn value_as_id(value: &Option<AnyValue>) -> Option<Cow<'_, str>> {
    match value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(Cow::Borrowed(s.as_str())),
        Value::IntValue(i) => Some(Cow::Owned(i.to_string())),
        Value::BytesValue(b) => Some(Cow::Owned(hex::encode(b))),
        _ => None,
    }
}

/// The process identity and resource-level user/tenant of an OTLP resource; a user or tenant
/// attribute whose value names nothing is counted in `tally`, once per resource.
pub fn resource_of(
    resource: Option<&ProtoResource>,
    ex: &Extractor,
    tally: &mut Tally,
) -> Arc<Resource> {
    let attrs: &[KeyValue] = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
    let mut builder = ResourceBuilder::default();
    for kv in attrs.iter().take(ex.max_attributes) {
        builder.offer(ex, &kv.key, value_as_id(&kv.value).as_deref());
    }
    builder.finish(tally)
}

/// [`resource_of`] one attribute at a time, so that the zero-copy reader
/// ([`super::otlp_fast`]) shares its rules instead of restating them. The caller stops offering
/// after `max_attributes`.
#[derive(Default)]
pub(crate) struct ResourceBuilder {
    scan: AttributeScan,
    identity: BTreeMap<String, String>,
    fallback: BTreeMap<String, String>,
}

impl ResourceBuilder {
    pub fn offer(&mut self, ex: &Extractor, key: &str, value: Option<&str>) {
        if Resource::IDENTITY_KEYS.contains(&key) {
            if let Some(v) = value {
                self.identity
                    .insert(key.to_owned(), truncate(v, ex.max_id_bytes));
            }
        } else if Resource::FALLBACK_KEYS.contains(&key) {
            if let Some(v) = value {
                self.fallback
                    .insert(key.to_owned(), truncate(v, ex.max_id_bytes));
            }
        }
        self.scan.offer(ex, key, value);
    }

    /// The resource. A user or tenant attribute whose value names nothing (`""`, bool, double,
    /// array, map, unset) is counted in `tally` once per resource, as on a span: only when no
    /// other resource attribute named the user (tenant). Watched attributes of a resource are
    /// not read, so neither are they counted.
    pub fn finish(mut self, tally: &mut Tally) -> Arc<Resource> {
        (self.scan.unusable).retain(|(kind, _)| {
            !matches!(
                kind,
                UnusableValue::InstanceEmpty | UnusableValue::InstanceNotString
            )
        });
        self.scan.count_unusable(tally);
        if !self.identity.contains_key("service.instance.id") {
            self.identity.extend(self.fallback);
        }
        Arc::new(Resource::from_identity(
            self.identity,
            self.scan.user(),
            self.scan.tenant(),
        ))
    }
}

fn truncate(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

/// Observations of every usable span in an export; spans that matter neither for a watch nor
/// for learning a trace's user are dropped here.
/// Data points in a metrics export: crosstalk reads no metrics, but accepts them from apps whose
/// SDK exports every signal to one endpoint, and counts what it discards.
pub fn metric_points(request: &ExportMetricsServiceRequest) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let points = |data: &Option<Data>| match data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(e)) => e.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    };
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| points(&m.data) as u64)
        .sum()
}

pub fn observe_traces(
    request: &ExportTraceServiceRequest,
    ex: &Extractor,
    received_ns: u64,
    tally: &mut Tally,
) -> Vec<Observation> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = resource_of(rs.resource.as_ref(), ex, tally);
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let mut scan = AttributeScan::default();
                for kv in span.attributes.iter().take(ex.max_attributes) {
                    scan.offer(ex, &kv.key, value_as_id(&kv.value).as_deref());
                }
                let facts = SpanFacts {
                    trace_id: &span.trace_id,
                    span_id: &span.span_id,
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                };
                out.extend(span_observation(
                    scan,
                    &facts,
                    &resource,
                    ex,
                    received_ns,
                    tally,
                ));
            }
        }
    }
    out
}

/// The fields of a span, besides its attributes, that normalization reads.
pub(crate) struct SpanFacts<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

/// Count one span and turn its scanned attributes into an observation, unless it is rejected or
/// of no use. Shared with the zero-copy reader so both paths apply the same rules.
pub(crate) fn span_observation(
    mut scan: AttributeScan,
    span: &SpanFacts<'_>,
    resource: &Arc<Resource>,
    ex: &Extractor,
    received_ns: u64,
    tally: &mut Tally,
) -> Option<Observation> {
    tally.items += 1;
    if let Some(key) = &scan.control_chars {
        tally.reject(RejectReason::ControlChars, || {
            format!("span attribute `{key}` holds control characters")
        });
        return None;
    }
    if let Some(key) = &scan.too_long {
        tally.reject(RejectReason::IdTooLong, || {
            format!(
                "span attribute `{key}` longer than {} bytes",
                ex.max_id_bytes
            )
        });
        return None;
    }
    scan.count_unusable(tally);
    let (start_ns, end_ns) = super::clamp_span_times(
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        received_ns,
        tally,
    );
    let obs = Observation {
        signal: Signal::Span,
        start_ns,
        end_ns,
        trace_id: TraceId::from_bytes(span.trace_id),
        span_id: SpanId::from_bytes(span.span_id),
        resource: resource.clone(),
        user: scan.user(),
        tenant: scan.tenant(),
        watched: scan.watched(),
        delivery: None,
    };
    worth_keeping(&obs).then_some(obs)
}

/// Observations of every usable log record. A record that carries the WebSocket event fields
/// (`connection_user_id`, ...) as attributes is a delivery event, like an event-log line.
pub fn observe_logs(
    request: &ExportLogsServiceRequest,
    ex: &Extractor,
    received_ns: u64,
    tally: &mut Tally,
) -> Vec<Observation> {
    let fields = &ex.event_fields;
    let mut out = Vec::new();
    for rl in &request.resource_logs {
        let resource = resource_of(rl.resource.as_ref(), ex, tally);
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                tally.items += 1;
                let mut scan = AttributeScan::default();
                let mut delivery = Delivery::default();
                let mut event_user: Option<Box<str>> = None;
                let mut event_tenant: Option<Box<str>> = None;
                for kv in record.attributes.iter().take(ex.max_attributes) {
                    let value = value_as_id(&kv.value);
                    scan.offer(ex, &kv.key, value.as_deref());
                    let Some(value) = value.filter(|v| v.len() <= ex.max_id_bytes) else {
                        continue;
                    };
                    let key = kv.key.as_str();
                    let slot = if key == fields.event {
                        &mut delivery.event
                    } else if key == fields.connection {
                        &mut delivery.connection_id
                    } else if key == fields.connection_user {
                        &mut delivery.connection_user
                    } else if key == fields.connection_tenant {
                        &mut delivery.connection_tenant
                    } else if key == fields.run_id {
                        &mut delivery.run_id
                    } else if key == fields.user {
                        &mut event_user
                    } else if key == fields.tenant {
                        &mut event_tenant
                    } else {
                        continue;
                    };
                    *slot = Some(value.into());
                }
                if let Some(key) = &scan.control_chars {
                    tally.reject(RejectReason::ControlChars, || {
                        format!("log attribute `{key}` holds control characters")
                    });
                    continue;
                }
                if let Some(key) = &scan.too_long {
                    tally.reject(RejectReason::IdTooLong, || {
                        format!(
                            "log attribute `{key}` longer than {} bytes",
                            ex.max_id_bytes
                        )
                    });
                    continue;
                }
                scan.count_unusable(tally);
                if delivery.event.is_none() && !record.event_name.is_empty() {
                    delivery.event = Some(record.event_name.as_str().into());
                }
                let time = [record.time_unix_nano, record.observed_time_unix_nano]
                    .into_iter()
                    .find(|t| *t != 0)
                    .unwrap_or(received_ns);
                let is_delivery = delivery.connection_user.is_some();
                let obs = Observation {
                    signal: Signal::Log,
                    start_ns: time,
                    end_ns: time,
                    trace_id: TraceId::from_bytes(&record.trace_id),
                    span_id: SpanId::from_bytes(&record.span_id),
                    resource: resource.clone(),
                    user: scan.user().or(event_user),
                    tenant: scan.tenant().or(event_tenant),
                    watched: scan.watched(),
                    delivery: is_delivery.then(|| Box::new(delivery)),
                };
                if worth_keeping(&obs) {
                    out.push(obs);
                }
            }
        }
    }
    out
}

/// Relevant to a watch, or able to teach the engine its trace's user.
fn worth_keeping(obs: &Observation) -> bool {
    obs.is_relevant() || (obs.trace_id.is_some() && (obs.user.is_some() || obs.tenant.is_some()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    pub(crate) fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn extractor() -> Extractor {
        Extractor::new(&Config::default_config())
    }

    /// One resource with its spans (the zero-copy reader's tests build theirs here too).
    pub(crate) fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn span_with_user_and_instance_becomes_one_observation() {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![
                kv("enduser.id", "second-choice"),
                kv("user.id", "alice"),
                kv("agent_factory.instance_id", "f1"),
            ],
            ..Default::default()
        };
        let req = request(
            vec![
                kv("service.name", "api"),
                kv("service.instance.id", "pod-1"),
            ],
            vec![span],
        );
        let mut tally = Tally::default();
        let obs = observe_traces(&req, &extractor(), 99, &mut tally);
        assert_eq!(obs.len(), 1);
        assert_eq!(
            obs[0].user.as_deref(),
            Some("alice"),
            "first user attribute wins"
        );
        assert_eq!(obs[0].watched.len(), 1);
        assert_eq!(&*obs[0].watched[0].id, "f1");
        assert_eq!((obs[0].start_ns, obs[0].end_ns), (10, 20));
        assert_eq!(
            obs[0].resource.scope_key,
            "service.instance.id=pod-1|service.name=api"
        );
        assert_eq!(tally.items, 1);
    }

    #[test]
    fn origin_is_carried_with_its_watched_id_and_bounded() {
        let long = "m:f:1".repeat(100);
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![
                kv("user.id", "alice"),
                kv("websocket.emitter.origin", &long),
                kv("websocket.emitter.id", "e1"),
                kv("agent_factory.instance_id", "f1"),
            ],
            ..Default::default()
        };
        let req = request(vec![], vec![span]);
        let obs = observe_traces(&req, &extractor(), 99, &mut Tally::default());
        let origin = |id: &str| {
            let w = obs[0].watched.iter().find(|w| &*w.id == id).unwrap();
            w.origin.as_deref().map(str::len)
        };
        assert_eq!(origin("e1"), Some(crate::normalize::MAX_ORIGIN_BYTES));
        assert_eq!(origin("f1"), None, "no agent_factory.origin was sent");
    }

    #[test]
    fn origin_attribute_naming_rule() {
        use crate::normalize::origin_attribute;
        assert_eq!(
            origin_attribute("agent_factory.instance_id"),
            "agent_factory.origin"
        );
        assert_eq!(
            origin_attribute("websocket.emitter.id"),
            "websocket.emitter.origin"
        );
        assert_eq!(origin_attribute("session.id"), "session.origin");
        assert_eq!(origin_attribute("emitter_id"), "emitter_id.origin");
        assert_eq!(origin_attribute(".id"), ".id.origin");
    }

    #[test]
    fn resource_without_instance_id_falls_back_to_host_and_pid() {
        let ex = extractor();
        let res = ProtoResource {
            attributes: vec![
                kv("service.name", "api"),
                kv("host.name", "h1"),
                KeyValue {
                    key: "process.pid".into(),
                    value: Some(AnyValue {
                        value: Some(Value::IntValue(42)),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = resource_of(Some(&res), &ex, &mut Tally::default());
        assert_eq!(r.scope_key, "host.name=h1|process.pid=42|service.name=api");
    }

    #[test]
    fn over_long_id_rejects_the_span_only() {
        let long = "x".repeat(1000);
        let spans = vec![
            Span {
                trace_id: vec![1; 16],
                attributes: vec![kv("agent_factory.instance_id", &long)],
                ..Default::default()
            },
            Span {
                trace_id: vec![1; 16],
                attributes: vec![kv("agent_factory.instance_id", "ok"), kv("user.id", "u")],
                ..Default::default()
            },
        ];
        let mut tally = Tally::default();
        let obs = observe_traces(&request(vec![], spans), &extractor(), 5, &mut tally);
        assert_eq!(obs.len(), 1);
        assert_eq!(tally.rejected.get(&RejectReason::IdTooLong), Some(&1));
        assert_eq!(tally.accepted(), 1);
        assert_eq!(
            obs[0].start_ns, 5,
            "missing start time falls back to receipt"
        );
    }

    #[test]
    fn irrelevant_spans_are_dropped_but_user_spans_kept_for_their_trace() {
        let spans = vec![
            Span {
                trace_id: vec![1; 16],
                ..Default::default()
            },
            Span {
                trace_id: vec![1; 16],
                attributes: vec![kv("user.id", "alice")],
                ..Default::default()
            },
        ];
        let mut tally = Tally::default();
        let obs = observe_traces(&request(vec![], spans), &extractor(), 5, &mut tally);
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].user.as_deref(), Some("alice"));
        assert_eq!(tally.items, 2);
    }
}
