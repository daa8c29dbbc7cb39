//! OTLP ingestion over HTTP (protobuf, JSON with hex ids, gzip) and gRPC, bad bodies, and the
//! findings API shape.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

use crate::util::*;

#[test]
fn protobuf_export_of_two_users_on_one_factory_is_one_finding_with_full_fields() {
    let s = Server::start(FACTORY_WATCH);
    let r = s.post_traces(&factory_use("alice", "f-1", 1));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    let resp = ExportTraceServiceResponse::decode(&r.body[..]).unwrap();
    assert!(resp.partial_success.is_none());
    assert!(s.findings().is_empty(), "one user is no leak");

    let r = s.post_traces(&factory_use("bob", "f-1", 2));
    assert_eq!(r.status, 200);
    let findings = s.findings();
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    for field in [
        "id",
        "type",
        "watch",
        "instance",
        "scope",
        "users",
        "user_count",
        "first_seen",
        "detected_at",
        "last_seen",
        "evidence",
    ] {
        assert!(f.get(field).is_some(), "finding lacks `{field}`: {f}");
    }
    assert_eq!(f["type"], "shared_instance");
    assert_eq!(f["watch"], "agent_factory");
    assert_eq!(f["instance"], "f-1");
    assert_eq!(f["scope"]["service.name"], "agent-backend");
    assert_eq!(f["scope"]["service.instance.id"], "pod-1");
    assert_eq!(f["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(f["user_count"], 2);
    let evidence = f["evidence"].as_array().unwrap();
    let traces: Vec<&str> = evidence
        .iter()
        .filter_map(|e| e["trace_id"].as_str())
        .collect();
    assert!(
        traces.contains(&format!("{:032x}", 2u128).as_str()),
        "{evidence:?}"
    );
    for e in evidence {
        for field in ["user", "time", "trace_id", "span_id", "source"] {
            assert!(e.get(field).is_some(), "evidence lacks `{field}`: {e}");
        }
    }

    // By id, and a third user joins the same finding.
    let id = f["id"].as_str().unwrap();
    let one = get(&s.admin_url(&format!("/api/v1/findings/{id}"))).json();
    assert_eq!(one["id"], id);
    s.post_traces(&factory_use("carol", "f-1", 3));
    let f = &s.findings()[0];
    assert_eq!(f["users"], serde_json::json!(["alice", "bob", "carol"]));
    assert_eq!(f["user_count"], 3);
    assert_eq!(get(&s.admin_url("/api/v1/findings/nope")).status, 404);

    let m = s.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_findings_total{type="shared_instance",watch="agent_factory",service="agent-backend"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_affected_users_total{watch="agent_factory",service="agent-backend"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_received_total{signal="traces",transport="http"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(&m, r#"crosstalk_tracked_instances{watch="agent_factory"}"#),
        1.0
    );
    for user in ["alice", "bob", "carol", "f-1"] {
        assert!(
            !m.contains(user),
            "metrics must not carry user or instance ids: {user}"
        );
    }
}

#[test]
fn openmetrics_scrape_carries_the_trace_exemplar() {
    let s = Server::start(FACTORY_WATCH);
    s.post_traces(&factory_use("alice", "f", 10));
    s.post_traces(&factory_use("bob", "f", 11));
    let r = get_with(
        &s.admin_url("/metrics"),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(
                "crosstalk_findings_total{type=\"shared_instance\",watch=\"agent_factory\"",
            )
        })
        .unwrap();
    assert!(
        line.contains(&format!("# {{trace_id=\"{:032x}\"}}", 11u128)),
        "{line}"
    );
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn json_export_with_hex_ids_and_gzip() {
    let s = Server::start(FACTORY_WATCH);
    let trace = "5b8efff798038103d269b633813fc60c";
    let body = |user: &str, span: &str| {
        serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": trace, "spanId": span, "name": "op", "kind": 2,
                "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000",
                "attributes": [
                    {"key": "user.id", "value": {"stringValue": user}},
                    {"key": "agent_factory.instance_id", "value": {"intValue": "42"}}
                ]
            }]}]
        }]})
        .to_string()
    };
    let r = s.post(
        "/v1/traces",
        "application/json",
        body("alice", "eee19b7ec3c1b174").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let zipped = gzip(body("bob", "eee19b7ec3c1b175").as_bytes());
    let r = post(
        &s.http_url("/v1/traces"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &zipped,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let f = &s.findings()[0];
    assert_eq!(f["instance"], "42", "int ids read as decimal");
    assert_eq!(f["evidence"][0]["trace_id"], trace);
    assert_eq!(f["first_seen"], "2023-11-14T22:13:20Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_finds_the_leak() {
    let s = Server::start(FACTORY_WATCH);
    let mut client = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(factory_use("alice", "g", 1)).await.unwrap();
    let resp = client
        .export(factory_use("bob", "g", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.partial_success.is_none());
    let findings = tokio::task::spawn_blocking(move || {
        let f = s.findings();
        let m = s.metric(r#"crosstalk_received_total{signal="traces",transport="grpc"}"#);
        (f, m)
    })
    .await
    .unwrap();
    assert_eq!(findings.0.len(), 1);
    assert_eq!(findings.0[0]["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(findings.1, 2.0);
}

#[test]
fn bad_bodies_are_4xx_with_a_status_and_the_server_keeps_serving() {
    let s = Server::start(FACTORY_WATCH);
    let r = s.post(
        "/v1/traces",
        "application/x-protobuf",
        b"\xff\xff\xff\xff garbage",
    );
    assert_eq!(r.status, 400);
    let status = tonic_types::Status::decode(&r.body[..]).expect("a google.rpc.Status body");
    assert_eq!(status.code, 3);
    assert!(status.message.contains("protobuf"), "{}", status.message);

    let r = s.post("/v1/traces", "application/json", b"{\"resourceSpans\": 7}");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 3);

    let r = s.post("/v1/traces", "text/plain", b"hello");
    assert_eq!(r.status, 415);
    let r = post(
        &s.http_url("/v1/traces"),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip at all",
    );
    assert_eq!(r.status, 400);
    assert_eq!(get(&s.http_url("/v1/traces")).status, 405);
    assert_eq!(
        s.post("/v1/profiles", "application/x-protobuf", b"").status,
        404
    );

    let m = s.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_rejected_total{source="otlp_http",reason="decode_error"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_rejected_total{source="otlp_http",reason="unsupported_media_type"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_rejected_total{source="otlp_http",reason="bad_gzip"}"#
        ),
        1.0
    );

    // Still serving correct traffic.
    assert_eq!(s.post_traces(&factory_use("alice", "x", 1)).status, 200);
    assert_eq!(s.post_traces(&factory_use("bob", "x", 2)).status, 200);
    assert_eq!(s.findings().len(), 1);
}

#[test]
fn unusable_spans_are_reported_as_partial_success() {
    let s = Server::start(FACTORY_WATCH);
    let long = "x".repeat(5000);
    let req = traces(
        "svc",
        "p",
        vec![
            span(
                1,
                1,
                &[("user.id", "alice"), ("agent_factory.instance_id", &long)],
            ),
            span(
                2,
                2,
                &[("user.id", "alice"), ("agent_factory.instance_id", "ok")],
            ),
        ],
    );
    let r = s.post_traces(&req);
    assert_eq!(r.status, 200);
    let resp = ExportTraceServiceResponse::decode(&r.body[..]).unwrap();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(!partial.error_message.is_empty());
    assert_eq!(
        s.metric(r#"crosstalk_rejected_total{source="otlp_http",reason="id_too_long"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"crosstalk_received_total{signal="traces",transport="http"}"#),
        1.0
    );
}

#[test]
fn user_on_the_root_span_only_is_attributed_through_the_trace_across_exports() {
    let s = Server::start(FACTORY_WATCH);
    // Child spans (the factory use, no user) arrive first; root spans with the user later.
    let child = |trace: u128| {
        traces(
            "svc",
            "p",
            vec![span(
                trace,
                10 + trace as u64,
                &[("agent_factory.instance_id", "shared")],
            )],
        )
    };
    let root = |trace: u128, user: &str| {
        traces(
            "svc",
            "p",
            vec![span(trace, 20 + trace as u64, &[("user.id", user)])],
        )
    };
    s.post_traces(&child(1));
    s.post_traces(&child(2));
    s.post_traces(&root(1, "alice"));
    s.post_traces(&root(2, "bob"));
    let found = s.wait_for(Duration::from_secs(5), |s| {
        let f = s.findings();
        (!f.is_empty()).then_some(f)
    });
    let f = found.expect("a finding");
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
}

#[test]
fn span_without_any_user_is_unattributed_after_the_wait() {
    let s = Server::start(&format!("[attribution]\nwait = \"200ms\"\n{FACTORY_WATCH}"));
    s.post_traces(&traces(
        "svc",
        "p",
        vec![span(1, 1, &[("agent_factory.instance_id", "f")])],
    ));
    let n = s.wait_for(Duration::from_secs(5), |s| {
        let v = s.metric(r#"crosstalk_unattributed_total{watch="agent_factory"}"#);
        (v > 0.0).then_some(v)
    });
    assert_eq!(n, Some(1.0));
    assert!(s.findings().is_empty());
}

#[test]
fn findings_filters() {
    let s = Server::start(FACTORY_WATCH);
    s.post_traces(&factory_use("alice", "a", 1));
    s.post_traces(&factory_use("bob", "a", 2));
    assert_eq!(s.findings_query("?type=shared_instance").len(), 1);
    assert_eq!(s.findings_query("?type=misdelivered_event").len(), 0);
    assert_eq!(s.findings_query("?watch=agent_factory").len(), 1);
    assert_eq!(s.findings_query("?watch=session").len(), 0);
    assert_eq!(s.findings_query("?since=2000-01-01T00:00:00Z").len(), 1);
    assert_eq!(s.findings_query("?since=2999-01-01T00:00:00Z").len(), 0);
    assert_eq!(get(&s.admin_url("/api/v1/findings?type=bogus")).status, 400);
}

#[test]
fn live_and_ready() {
    let s = Server::start("");
    assert_eq!(get(&s.admin_url("/live")).status, 200);
    assert_eq!(get(&s.admin_url("/ready")).status, 200);
    assert_eq!(get(&s.admin_url("/nope")).status, 404);
}
