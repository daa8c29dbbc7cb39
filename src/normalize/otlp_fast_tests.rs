//! The zero-copy trace reader against prost + `observe_traces`: hand-made edge cases, then a
//! differential property test over generated requests, merged fields, unknown fields and byte
//! mutations. Either both accept with equal results, or both reject.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::*;
use crate::config::Config;
use crate::normalize::otlp::observe_traces;

type Outcome = Option<(Vec<Observation>, Tally)>;

/// Small limits, so that over-long ids and the attribute cap are hit often.
fn extractor() -> Extractor {
    let mut config = Config::default_config();
    config.limits.max_id_bytes = 12;
    config.limits.max_attributes_per_span = 6;
    config.identity.tenant_attributes = vec!["tenant.id".into(), "org.id".into()];
    Extractor::new(&config)
}

fn reference(bytes: &[u8], ex: &Extractor) -> Outcome {
    let request = ExportTraceServiceRequest::decode(bytes).ok()?;
    let mut tally = Tally::default();
    let obs = observe_traces(&request, ex, 77, &mut tally);
    Some((obs, tally))
}

fn fast(bytes: &[u8], ex: &Extractor) -> Outcome {
    let mut tally = Tally::default();
    let obs = observe_traces_protobuf(bytes, ex, 77, &mut tally).ok()?;
    Some((obs, tally))
}

fn agree(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
    let ex = extractor();
    let (want, got) = (reference(bytes, &ex), fast(bytes, &ex));
    prop_assert_eq!(&got, &want, "bytes: {}", hex::encode(bytes));
    Ok(())
}

fn field(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn one_span(resource: Vec<KeyValue>, span: Span) -> ExportTraceServiceRequest {
    crate::normalize::otlp::tests::request(resource, vec![span])
}

fn user_span() -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        attributes: vec![
            kv("user.id", s("alice")),
            kv("agent_factory.instance_id", Value::IntValue(-42)),
            kv("session.id", Value::BytesValue(vec![0xab, 0x01])),
        ],
        ..Default::default()
    }
}

#[test]
fn typical_request_reads_the_same_as_prost() {
    let req = one_span(
        vec![kv("service.name", s("api")), kv("host.name", s("h"))],
        user_span(),
    );
    let bytes = req.encode_to_vec();
    let ex = extractor();
    let got = fast(&bytes, &ex).expect("valid");
    assert_eq!(got.0.len(), 1);
    assert_eq!(&*got.0[0].watched[0].id, "-42");
    assert_eq!(Some(got), reference(&bytes, &ex));
}

#[test]
fn origin_comes_with_its_id_in_either_order_like_prost() {
    let mut span = user_span();
    span.attributes
        .insert(0, kv("agent_factory.origin", s("app:get_factory:7")));
    span.attributes
        .push(kv("session.origin", s("bad\u{0}origin")));
    let bytes = one_span(vec![], span).encode_to_vec();
    let ex = extractor();
    let got = fast(&bytes, &ex).expect("valid");
    let watched = &got.0[0].watched;
    let factory = watched.iter().find(|w| &*w.id == "-42").unwrap();
    assert_eq!(factory.origin.as_deref(), Some("app:get_factory:7"));
    let session = watched.iter().find(|w| &*w.id == "ab01").unwrap();
    assert_eq!(
        session.origin, None,
        "an origin with control characters is dropped"
    );
    assert_eq!(got.1.rejected_total(), 0, "not the span");
    assert_eq!(Some(got), reference(&bytes, &ex));
}

#[test]
fn error_leaves_the_tally_untouched() {
    let mut bytes = one_span(vec![], user_span()).encode_to_vec();
    bytes.truncate(bytes.len() - 1);
    let mut tally = Tally::default();
    assert!(observe_traces_protobuf(&bytes, &extractor(), 1, &mut tally).is_err());
    assert_eq!(tally, Tally::default());
}

#[test]
fn resource_user_and_tenant_naming_nothing_are_counted_once_per_resource_like_prost() {
    use crate::normalize::UnusableValue::{self, *};
    let ex = extractor();
    let cases: Vec<(Vec<KeyValue>, &[UnusableValue])> = vec![
        (vec![kv("user.id", s(""))], &[UserEmpty]),
        (
            vec![kv("user.id", Value::BoolValue(true))],
            &[UserNotString],
        ),
        (
            vec![kv("user.id", Value::DoubleValue(1.5))],
            &[UserNotString],
        ),
        (vec![kv("tenant.id", s(""))], &[TenantEmpty]),
        (
            vec![kv("org.id", Value::BoolValue(false))],
            &[TenantNotString],
        ),
        // Another resource attribute names the user: nothing lost, nothing counted.
        (vec![kv("user.id", s("")), kv("enduser.id", s("bob"))], &[]),
        // Watched attributes of a resource are not read.
        (vec![kv("agent_factory.instance_id", s(""))], &[]),
    ];
    for (resource, want) in cases {
        let mut spans = vec![user_span(), user_span()];
        spans[1].span_id = vec![3; 8];
        let req = crate::normalize::otlp::tests::request(resource.clone(), spans);
        let bytes = req.encode_to_vec();
        let (obs, tally) = fast(&bytes, &ex).expect("valid");
        assert_eq!(obs.len(), 2, "{resource:?}: the spans are kept");
        let got: Vec<(UnusableValue, u64)> = (tally.unusable.iter())
            .map(|(kind, (n, _))| (*kind, *n))
            .collect();
        let want: Vec<(UnusableValue, u64)> = want.iter().map(|k| (*k, 1)).collect();
        assert_eq!(got, want, "{resource:?}");
        agree(&bytes).unwrap();
    }
}

#[test]
fn resource_after_the_spans_and_a_second_resource_are_merged_like_prost() {
    let rs = |attrs| {
        ResourceSpans {
            resource: Some(ProtoResource {
                attributes: attrs,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let spans = ScopeSpans {
        spans: vec![user_span()],
        ..Default::default()
    }
    .encode_to_vec();
    let mut inner = field(2, &spans);
    inner.extend(rs(vec![kv("service.name", s("api"))]));
    inner.extend(rs(vec![kv("service.instance.id", s("pod-9"))]));
    let bytes = field(1, &inner);
    let got = fast(&bytes, &extractor()).expect("valid");
    assert_eq!(
        got.0[0].resource.scope_key,
        "service.instance.id=pod-9|service.name=api"
    );
    agree(&bytes).unwrap();
}

#[test]
fn repeated_value_fields_in_one_attribute_last_variant_wins() {
    let a = kv("user.id", s("first")).encode_to_vec();
    let b = KeyValue {
        value: Some(AnyValue {
            value: Some(Value::IntValue(7)),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let c = KeyValue {
        value: Some(AnyValue { value: None }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut span = Span {
        trace_id: vec![3; 16],
        ..Default::default()
    }
    .encode_to_vec();
    span.extend(field(9, &[a, b, c].concat()));
    let scope = field(2, &span);
    let bytes = field(1, &field(2, &scope));
    let got = fast(&bytes, &extractor()).expect("valid");
    assert_eq!(got.0[0].user.as_deref(), Some("7"));
    agree(&bytes).unwrap();
}

#[test]
fn invalid_utf8_in_a_field_not_read_is_rejected_like_prost() {
    let mut span = user_span();
    span.name = "NAME".into();
    let mut bytes = one_span(vec![], span).encode_to_vec();
    let at = bytes.windows(4).position(|w| w == b"NAME").unwrap();
    bytes[at] = 0xff;
    assert!(reference(&bytes, &extractor()).is_none());
    assert!(fast(&bytes, &extractor()).is_none());
}

#[test]
fn unknown_fields_and_groups_are_skipped_and_stray_end_groups_rejected() {
    let mut span = user_span().encode_to_vec();
    // Group 40 holding a varint and a nested group 41, then fixed32/fixed64 fields.
    span.extend([0xc3, 0x02, 0x08, 0x01, 0xcb, 0x02, 0xcc, 0x02, 0xc4, 0x02]);
    span.extend([0xcd, 0x02, 1, 2, 3, 4, 0xd1, 0x02, 1, 2, 3, 4, 5, 6, 7, 8]);
    let ok = field(1, &field(2, &field(2, &span)));
    assert!(fast(&ok, &extractor()).is_some());
    agree(&ok).unwrap();
    let mut bad = user_span().encode_to_vec();
    bad.extend([0xc4, 0x02]);
    let bad = field(1, &field(2, &field(2, &bad)));
    assert!(fast(&bad, &extractor()).is_none());
    agree(&bad).unwrap();
}

/// An attribute value nested `depth` arrays deep.
fn nested(depth: usize) -> ExportTraceServiceRequest {
    let mut value = AnyValue {
        value: Some(s("leaf")),
    };
    for _ in 0..depth {
        value = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![value],
            })),
        };
    }
    let mut span = user_span();
    span.attributes.push(KeyValue {
        key: "deep".into(),
        value: Some(value),
        ..Default::default()
    });
    one_span(vec![], span)
}

#[test]
fn nesting_limit_matches_prost_at_the_boundary() {
    let outcomes: Vec<bool> = (40..=50)
        .map(|d| {
            let bytes = nested(d).encode_to_vec();
            agree(&bytes).unwrap();
            fast(&bytes, &extractor()).is_some()
        })
        .collect();
    assert!(outcomes.first() == Some(&true) && outcomes.last() == Some(&false));
}

// ---------------------------------------------------------------------------------------------
// The differential property test.

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "user.id",
            "enduser.id",
            "tenant.id",
            "org.id",
            "agent_factory.instance_id",
            "agent_factory.origin",
            "session.id",
            "session.origin",
            "service.name",
            "service.namespace",
            "service.instance.id",
            "host.name",
            "process.pid",
        ])
        .prop_map(String::from),
        1 => "[a-z.]{0,10}",
    ]
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        6 => "[a-z0-9é]{0,8}".prop_map(Value::StringValue),
        1 => "[a-z]{10,16}".prop_map(Value::StringValue),
        2 => any::<i64>().prop_map(Value::IntValue),
        2 => prop::collection::vec(any::<u8>(), 0..9).prop_map(Value::BytesValue),
        1 => any::<bool>().prop_map(Value::BoolValue),
        1 => any::<f64>().prop_map(Value::DoubleValue),
        1 => any::<i32>().prop_map(Value::StringValueStrindex),
    ];
    let leaf = prop::option::weighted(0.9, leaf).prop_map(|value| AnyValue { value });
    let nested = leaf.clone().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|values| AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values })),
            }),
            prop::collection::vec((key(), inner), 0..3).prop_map(|kvs| AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, v)| KeyValue {
                            key,
                            value: Some(v),
                            ..Default::default()
                        })
                        .collect(),
                })),
            }),
        ]
    });
    prop_oneof![6 => leaf, 1 => nested]
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    let kv = (
        key(),
        prop::option::weighted(0.9, any_value()),
        any::<i32>(),
    )
        .prop_map(|(key, value, strindex)| KeyValue {
            key,
            value,
            key_strindex: strindex % 3,
        });
    prop::collection::vec(kv, 0..9)
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), len),
        1 => Just(vec![0; len]),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        (
            id(16),
            id(8),
            prop_oneof![Just(0u64), any::<u64>()],
            any::<u64>(),
        ),
        attributes(),
        ("[a-z ]{0,8}", any::<i32>(), any::<u32>()),
        prop::collection::vec((any::<u64>(), "[a-z]{0,4}", attributes()), 0..2),
        prop::collection::vec((id(16), id(8), attributes()), 0..2),
        prop::option::of(("[a-z]{0,4}", 0..3i32)),
    )
        .prop_map(
            |((trace_id, span_id, start, end), attributes, (name, kind, flags), ev, li, st)| Span {
                trace_id,
                span_id,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                name,
                kind,
                flags,
                events: ev
                    .into_iter()
                    .map(|(time_unix_nano, name, attributes)| span::Event {
                        time_unix_nano,
                        name,
                        attributes,
                        ..Default::default()
                    })
                    .collect(),
                links: li
                    .into_iter()
                    .map(|(trace_id, span_id, attributes)| span::Link {
                        trace_id,
                        span_id,
                        attributes,
                        ..Default::default()
                    })
                    .collect(),
                status: st.map(|(message, code)| Status { message, code }),
                ..Default::default()
            },
        )
}

/// Raw fields no message of the schema knows (tags 40+), including groups.
fn unknown_field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u64>().prop_map(|v| {
            let mut out = vec![0xc0, 0x02];
            encode_varint(v, &mut out);
            out
        }),
        Just(vec![0xcd, 0x02, 1, 2, 3, 4]),
        Just(vec![0xd1, 0x02, 1, 2, 3, 4, 5, 6, 7, 8]),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(|p| field(43, &p)),
        Just(vec![0xc3, 0x02, 0x08, 0x05, 0xc4, 0x02]),
    ]
}

/// A message as one or two encodings concatenated (prost merges them), with unknown fields
/// around them.
fn merged<T: Message>(parts: Vec<T>, unknown: Vec<Vec<u8>>, extra: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        out.extend(p.encode_to_vec());
        if let Some(u) = unknown.get(i) {
            out.extend(u);
        }
    }
    for e in extra {
        out.extend(e);
    }
    out
}

/// Span bytes: one or two spans merged, plus attributes whose `value` appears twice.
fn span_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(span(), 1..3),
        prop::collection::vec(unknown_field(), 0..2),
        prop::collection::vec((key(), any_value(), any_value()), 0..2),
    )
        .prop_map(|(spans, unknown, doubles)| {
            let extra = doubles
                .into_iter()
                .map(|(key, a, b)| {
                    let first = KeyValue {
                        key,
                        value: Some(a),
                        ..Default::default()
                    };
                    let second = KeyValue {
                        value: Some(b),
                        ..Default::default()
                    };
                    field(9, &[first.encode_to_vec(), second.encode_to_vec()].concat())
                })
                .collect();
            merged(spans, unknown, extra)
        })
}

fn scope_spans_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::option::of(("[a-z]{0,4}", attributes())),
        prop::collection::vec(span_bytes(), 1..4),
    )
        .prop_map(|(scope, spans)| {
            let head = ScopeSpans {
                scope: scope.map(|(name, attributes)| InstrumentationScope {
                    name,
                    attributes,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut out = head.encode_to_vec();
            for s in spans {
                out.extend(field(2, &s));
            }
            out
        })
}

/// `ResourceSpans` bytes: scope spans and zero to two resources, in any order.
fn resource_spans_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(attributes(), 0..3),
        prop::collection::vec(scope_spans_bytes(), 1..3),
        any::<bool>(),
    )
        .prop_map(|(resources, scopes, resource_last)| {
            let resources: Vec<u8> = resources
                .into_iter()
                .flat_map(|attributes| {
                    let r = ProtoResource {
                        attributes,
                        ..Default::default()
                    };
                    field(1, &r.encode_to_vec())
                })
                .collect();
            let scopes: Vec<u8> = scopes.iter().flat_map(|s| field(2, s)).collect();
            if resource_last {
                [scopes, resources].concat()
            } else {
                [resources, scopes].concat()
            }
        })
}

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(resource_spans_bytes(), 1..3)
        .prop_map(|rs| rs.iter().flat_map(|r| field(1, r)).collect())
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1..4usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize| i % bytes.len();
    match m {
        Mutation::Set(i, b) => {
            let i = at(*i);
            bytes[i] = *b;
        }
        Mutation::Truncate(i) => {
            let i = at(*i);
            bytes.truncate(i);
        }
        Mutation::Insert(i, b) => {
            let i = at(*i);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let i = at(*i);
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn fast_reader_agrees_with_prost_on_valid_requests(bytes in request_bytes()) {
        agree(&bytes)?;
    }

    #[test]
    fn fast_reader_agrees_with_prost_on_mutated_requests(
        mut bytes in request_bytes(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        agree(&bytes)?;
    }

    #[test]
    fn fast_reader_agrees_with_prost_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        agree(&bytes)?;
    }
}
