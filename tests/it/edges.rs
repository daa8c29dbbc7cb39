//! Reliability at the edges (issue 15): what a fresh sidecar exports, what careless clients'
//! attribute values and invented service names do to it, and how its listeners hold up against
//! slow, greedy and late clients.

use std::collections::BTreeSet;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;

use crate::operator::promtool;
use crate::util::*;

/// Every family a sidecar without `[cluster]`, `[alertmanager]` or event files exports, each
/// with at least one sample before any traffic (findings and evidence are labelled by service,
/// learnt from traffic, so they cannot be).
const FAMILIES_AT_START: &[&str] = &[
    "crosstalk_tracked_instances",
    "crosstalk_received_total",
    "crosstalk_rejected_total",
    "crosstalk_admin_bad_requests_total",
    "crosstalk_discarded_total",
    "crosstalk_clamped_total",
    "crosstalk_unattributed_total",
    "crosstalk_watched_observations_total",
    "crosstalk_detection_delay_seconds_count",
    "crosstalk_evicted_total",
    "crosstalk_queue_pushed_total",
    "crosstalk_queue_popped_total",
    "crosstalk_queue_full_total",
    "crosstalk_queue_capacity",
    "crosstalk_store_errors_total",
    "crosstalk_store_healthy",
    "crosstalk_alerts_sent_total",
    "crosstalk_alert_failures_total",
    "crosstalk_watch_expected",
    "crosstalk_build_info",
    "crosstalk_discovery_evicted_total",
    "crosstalk_label_overflow_total",
];

#[test]
fn fresh_sidecar_exports_every_family_at_zero_before_any_traffic() {
    let s = Server::start(FACTORY_WATCH);
    let text = s.metrics();
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for family in FAMILIES_AT_START {
        assert!(
            samples
                .iter()
                .any(|l| l.starts_with(&format!("{family}{{"))
                    || l.starts_with(&format!("{family} "))),
            "{family} has no sample on a fresh sidecar:\n{text}"
        );
    }
    for sample in [
        r#"crosstalk_rejected_total{source="otlp_http",reason="queue_full"}"#,
        r#"crosstalk_rejected_total{source="otlp_grpc",reason="user_not_string"}"#,
        r#"crosstalk_rejected_total{source="events_http",reason="missing_user"}"#,
        r#"crosstalk_evicted_total{watch="agent_factory",reason="capacity"}"#,
        r#"crosstalk_evicted_total{watch="agent_factory",reason="retention"}"#,
        r#"crosstalk_label_overflow_total{label="service"}"#,
    ] {
        assert!(
            samples.iter().any(|l| l == &format!("{sample} 0")),
            "{sample} not at 0:\n{text}"
        );
    }
    let (ok, out) = promtool(&["check", "metrics"], &text);
    assert!(ok && out.trim().is_empty(), "promtool:\n{out}");
}

fn any(value: Value) -> KeyValue {
    KeyValue {
        key: String::new(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn keyed(key: &str, mut kv: KeyValue) -> KeyValue {
    kv.key = key.into();
    kv
}

/// Posts `request` to both decoders, protobuf (zero-copy reader) and OTLP JSON (prost types);
/// each must keep every span (only values are unusable: no partial success). Returns `/metrics`.
fn post_to_both_decoders(s: &Server, request: &ExportTraceServiceRequest) -> String {
    let r = s.post_traces(request);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("rejected"), "{}", r.text());
    let json = serde_json::to_vec(request).unwrap();
    let r = s.post("/v1/traces", "application/json", &json);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("rejected"), "{}", r.text());
    s.metrics()
}

#[test]
fn unusable_user_and_instance_values_are_counted_not_silently_dropped() {
    let s = Server::start(FACTORY_WATCH);
    let factory = || kv("agent_factory.instance_id", "f1");
    let array = Value::ArrayValue(ArrayValue {
        values: vec![AnyValue {
            value: Some(Value::StringValue("alice".into())),
        }],
    });
    let spans_attrs: Vec<Vec<KeyValue>> = vec![
        vec![kv("user.id", ""), factory()],
        vec![keyed("user.id", any(Value::BoolValue(true))), factory()],
        vec![keyed("user.id", any(Value::DoubleValue(1.5))), factory()],
        vec![keyed("user.id", any(array)), factory()],
        vec![kv("user.id", "alice"), kv("agent_factory.instance_id", "")],
        // Another user attribute names the user: nothing is lost, nothing counted.
        vec![kv("user.id", ""), kv("enduser.id", "bob"), factory()],
    ];
    let mut spans = Vec::new();
    for (i, attrs) in spans_attrs.into_iter().enumerate() {
        let mut sp = span(100 + i as u128, 1 + i as u64, &[]);
        sp.attributes = attrs;
        spans.push(sp);
    }
    let request = traces("svc", "pod-1", spans);
    let text = post_to_both_decoders(&s, &request);
    let rejected = |reason: &str| {
        metric_value(
            &text,
            &format!(r#"crosstalk_rejected_total{{source="otlp_http",reason="{reason}"}}"#),
        )
    };
    assert_eq!(rejected("user_empty"), 2.0, "{text}");
    assert_eq!(rejected("user_not_string"), 6.0, "{text}");
    assert_eq!(rejected("instance_empty"), 2.0, "{text}");
    assert_eq!(rejected("instance_not_string"), 0.0, "{text}");
}

#[test]
fn resource_user_and_tenant_values_naming_nothing_are_counted_and_the_spans_kept() {
    let s = Server::start(FACTORY_WATCH);
    let resources: Vec<Vec<KeyValue>> = vec![
        vec![kv("service.name", "svc"), kv("user.id", "")],
        vec![
            kv("service.name", "svc"),
            keyed("user.id", any(Value::BoolValue(true))),
        ],
        vec![kv("service.name", "svc"), kv("tenant.id", "")],
        vec![
            kv("service.name", "svc"),
            keyed("tenant.id", any(Value::DoubleValue(2.5))),
        ],
    ];
    let resource_spans: Vec<ResourceSpans> = (resources.into_iter().enumerate())
        .map(|(i, attributes)| {
            let mut one = factory_use("alice", "f", 10 + i as u128);
            let mut rs = one.resource_spans.remove(0);
            rs.resource.as_mut().unwrap().attributes = attributes;
            rs
        })
        .collect();
    let request = ExportTraceServiceRequest { resource_spans };
    let text = post_to_both_decoders(&s, &request);
    let rejected = |reason: &str| {
        metric_value(
            &text,
            &format!(r#"crosstalk_rejected_total{{source="otlp_http",reason="{reason}"}}"#),
        )
    };
    for reason in [
        "user_empty",
        "user_not_string",
        "tenant_empty",
        "tenant_not_string",
    ] {
        assert_eq!(
            rejected(reason),
            2.0,
            "{reason}: once per resource per request\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            r#"crosstalk_received_total{signal="traces",transport="http"}"#
        ),
        8.0,
        "every span kept"
    );
}

#[test]
fn event_values_naming_nothing_are_counted_and_the_line_still_used() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ws-events.jsonl");
    std::fs::write(&log, "").unwrap();
    let watch = "[[watch]]\nname = \"emitter\"\nattribute = \"emitter_id\"\n";
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[events]\nfiles = [\"{}\"]\npoll_interval = \"20ms\"\n{watch}",
            log.display()
        ),
    );
    let body = concat!(
        r#"{"user_id":"alice","emitter_id":"","tenant_id":true}"#,
        "\n",
        r#"{"user_id":"bob","emitter_id":"e1","connection_id":"c","connection_user_id":""}"#,
        "\n",
    );
    let r = s.post("/v1/events", "application/x-ndjson", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["accepted"].as_u64(), r.json()["rejected"].as_u64()),
        (Some(2), Some(0))
    );
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, b"{\"user_id\":\"carol\",\"emitter_id\":\"\"}\n").unwrap();
    // Counted before the line is committed, so by the time it is received.
    let from_file = r#"crosstalk_received_total{signal="events",transport="file"}"#;
    let counted = s.wait_for(std::time::Duration::from_secs(10), |s| {
        (s.metric(from_file) >= 1.0).then_some(())
    });
    assert!(counted.is_some(), "{}", s.metrics());
    let text = s.metrics();
    let rejected = |source: &str, reason: &str| {
        metric_value(
            &text,
            &format!(r#"crosstalk_rejected_total{{source="{source}",reason="{reason}"}}"#),
        )
    };
    assert_eq!(rejected("events_http", "instance_empty"), 1.0, "{text}");
    assert_eq!(rejected("events_http", "tenant_not_string"), 1.0, "{text}");
    assert_eq!(rejected("events_http", "user_empty"), 1.0, "{text}");
    assert_eq!(rejected("events_file", "instance_empty"), 1.0, "{text}");
    for (transport, n) in [("http", 2.0), ("file", 1.0)] {
        let received =
            format!(r#"crosstalk_received_total{{signal="events",transport="{transport}"}}"#);
        assert_eq!(
            metric_value(&text, &received),
            n,
            "{transport}: the lines were used"
        );
    }
    assert_eq!(
        metric_value(&text, r#"crosstalk_tracked_instances{watch="emitter"}"#),
        1.0,
        "e1 is watched; no instance named \"\""
    );
}

/// Distinct `service` label values on a page.
fn services_on(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("service=\"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(v, _)| v.to_owned()))
        .collect()
}

#[test]
fn invented_service_names_are_capped_at_max_label_values_over_otlp_and_events() {
    let s = Server::start(FACTORY_WATCH);
    // 1,100 services over OTLP/HTTP, 100 more over /v1/events: 1,200 against the default 1,000.
    let resource_spans: Vec<ResourceSpans> = (0..1100u32)
        .map(|i| {
            let sp = span(
                1 + u128::from(i),
                1 + u64::from(i),
                &[("user.id", "alice"), ("agent_factory.instance_id", "f")],
            );
            let mut one = traces(&format!("svc-{i}"), "pod", vec![sp]);
            one.resource_spans.remove(0)
        })
        .collect();
    let request = ExportTraceServiceRequest { resource_spans };
    let r = s.post(
        "/v1/traces",
        "application/x-protobuf",
        &request.encode_to_vec(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: String = (1100..1200)
        .map(|i| {
            format!(
                "{{\"user_id\":\"alice\",\"service.name\":\"svc-{i}\",\"agent_factory.instance_id\":\"e{i}\"}}\n"
            )
        })
        .collect();
    let r = s.post("/v1/events", "application/x-ndjson", lines.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());

    let text = s.metrics();
    let services = services_on(&text);
    assert!(services.contains("__other__"), "no __other__ series");
    assert_eq!(services.len(), 1001, "1,000 services + __other__");
    assert_eq!(
        metric_value(&text, r#"crosstalk_label_overflow_total{label="service"}"#),
        200.0
    );
    // Folded services stay folded on the next scrape, and are not counted again.
    let again = s.metrics();
    assert_eq!(services_on(&again).len(), 1001);
    assert_eq!(
        metric_value(&again, r#"crosstalk_label_overflow_total{label="service"}"#),
        200.0
    );
}

/// Read one HTTP/1.1 response (head and a `content-length` body) off `stream`.
fn read_response(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length = (head.lines())
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = stream.read_exact(&mut body);
    head + &String::from_utf8_lossy(&body)
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn half_a_request_head_is_cut_after_header_timeout_a_slow_body_and_an_idle_connection_too() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let s = Server::start(&format!(
        "[limits]\nheader_timeout = \"500ms\"\nidle_timeout = \"2s\"\nbody_timeout = \"500ms\"\n{FACTORY_WATCH}"
    ));
    let mut slow = std::net::TcpStream::connect(s.http).unwrap();
    slow.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: crosstalk\r\nContent-Ty")
        .unwrap();
    let sent = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "a half-sent head kept its connection"
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        s.metric(r#"crosstalk_rejected_total{source="otlp_http",reason="header_timeout"}"#),
        1.0
    );
    // A connection that sent nothing is idle, not late: idle_timeout applies.
    let mut quiet = std::net::TcpStream::connect(s.http).unwrap();
    assert!(!closed_within(&mut quiet, Duration::from_secs(1)));
    assert!(closed_within(&mut quiet, Duration::from_secs(3)));
    // A body that stops arriving is answered 408 once body_timeout has passed.
    let mut trickle = std::net::TcpStream::connect(s.http).unwrap();
    trickle
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: crosstalk\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let answer = read_response(&mut trickle);
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
}

#[test]
fn admin_still_answers_with_every_otlp_connection_taken() {
    let s = Server::start(&format!("[limits]\nmax_connections = 8\n{FACTORY_WATCH}"));
    // Eight held connections on each OTLP listener: both are full.
    let held: Vec<std::net::TcpStream> = (0..8)
        .flat_map(|_| [s.http, s.grpc])
        .map(|addr| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut ninth = std::net::TcpStream::connect(s.http).unwrap();
    assert!(
        closed_within(&mut ninth, std::time::Duration::from_secs(2)),
        "a connection past the cap is closed at once"
    );
    let mut ninth_grpc = std::net::TcpStream::connect(s.grpc).unwrap();
    assert!(closed_within(
        &mut ninth_grpc,
        std::time::Duration::from_secs(2)
    ));
    assert_eq!(get(&s.admin_url("/ready")).status, 200);
    let m = get(&s.admin_url("/metrics"));
    assert_eq!(m.status, 200);
    let refused = |source: &str| {
        metric_value(
            &m.text(),
            &format!(
                r#"crosstalk_rejected_total{{source="{source}",reason="too_many_connections"}}"#
            ),
        )
    };
    assert_eq!(refused("otlp_http"), 1.0, "{}", m.text());
    assert_eq!(refused("otlp_grpc"), 1.0, "{}", m.text());
    // Room again once the held connections go.
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(s.post_traces(&factory_use("alice", "f", 1)).status, 200);
}

#[test]
fn a_request_after_sigterm_on_a_kept_alive_connection_is_answered_503() {
    use std::io::Write;
    let mut s = Server::start(FACTORY_WATCH);
    let body = factory_use("alice", "f", 1).encode_to_vec();
    let request = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: crosstalk\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = std::net::TcpStream::connect(s.http).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let send = |conn: &mut std::net::TcpStream| {
        let sent = conn
            .write_all(request.as_bytes())
            .and_then(|()| conn.write_all(&body));
        match sent {
            Ok(()) => read_response(conn),
            Err(e) => format!("write failed: {e}"),
        }
    };
    let first = send(&mut conn);
    assert!(first.starts_with("http/1.1 200"), "{first}");
    std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let next = send(&mut conn);
    assert!(next.starts_with("http/1.1 503"), "{next}\n{}", s.stderr());
    assert!(next.contains("retry-after: 1"), "{next}");
    assert!(next.contains("connection: close"), "{next}");
    let (status, _) = s.terminate();
    assert_eq!(status.code(), Some(0), "{}", s.stderr());
}
