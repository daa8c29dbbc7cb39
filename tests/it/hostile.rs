//! Hostile input, limits, authentication and privacy: a corpus of malformed and hostile
//! requests, each answered with the right status and counted, the server still serving after;
//! bearer tokens; `hmac` privacy mode end to end.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use crate::util::*;

const LIMITS: &str =
    "[limits]\nmax_body_bytes = 1048576\nmax_decompressed_bytes = 4194304\nmax_id_bytes = 128\n";

/// One hostile request and what must come of it.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// `source/reason` of the counter that must go up by at least one.
    counter: &'static str,
}

fn json_span(attrs: &str, extra: &str) -> Vec<u8> {
    format!(
        "{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{{\"traceId\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"eee19b7ec3c1b174\",\"name\":\"x\"{extra},\"attributes\":[{attrs}]}}]}}]}}]}}"
    )
    .into_bytes()
}

fn attr(key: &str, value: &str) -> String {
    format!("{{\"key\":\"{key}\",\"value\":{{\"stringValue\":\"{value}\"}}}}")
}

fn deep_json(depth: usize) -> Vec<u8> {
    let mut v = String::from("{\"resourceSpans\":");
    v.push_str(&"[".repeat(depth));
    v.push_str(&"]".repeat(depth));
    v.push('}');
    v.into_bytes()
}

fn gzip_bomb(size: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

fn corpus() -> Vec<Case> {
    let pb = "application/x-protobuf";
    let js = "application/json";
    let nd = "application/x-ndjson";
    let valid = factory_use("alice", "f", 1).encode_to_vec();
    let mut cases = vec![
        Case {
            name: "garbage protobuf",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: b"\xde\xad\xbe\xef\xff\xff\xff".to_vec(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "truncated protobuf",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: valid[..valid.len() / 2].to_vec(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "protobuf with a huge length prefix",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2],
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "protobuf sent as logs garbage",
            path: "/v1/logs",
            content_type: pb,
            encoding: None,
            body: b"\x0a\x05abc".to_vec(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "text/plain traces",
            path: "/v1/traces",
            content_type: "text/plain",
            encoding: None,
            body: b"hello".to_vec(),
            status: 415,
            counter: "otlp_http/unsupported_media_type",
        },
        Case {
            name: "no content type",
            path: "/v1/traces",
            content_type: "",
            encoding: None,
            body: valid.clone(),
            status: 415,
            counter: "otlp_http/unsupported_media_type",
        },
        Case {
            name: "xml logs",
            path: "/v1/logs",
            content_type: "application/xml",
            encoding: None,
            body: b"<a/>".to_vec(),
            status: 415,
            counter: "otlp_http/unsupported_media_type",
        },
        Case {
            name: "image as events",
            path: "/v1/events",
            content_type: "image/png",
            encoding: None,
            body: b"\x89PNG".to_vec(),
            status: 415,
            counter: "events_http/unsupported_media_type",
        },
        Case {
            name: "brotli encoding",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("br"),
            body: valid.clone(),
            status: 415,
            counter: "otlp_http/unsupported_encoding",
        },
        Case {
            name: "gzip header on plain body",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("gzip"),
            body: valid.clone(),
            status: 400,
            counter: "otlp_http/bad_gzip",
        },
        Case {
            name: "gzip bomb (64 MiB of zeros)",
            path: "/v1/traces",
            content_type: pb,
            encoding: Some("gzip"),
            body: gzip_bomb(64 << 20),
            status: 413,
            counter: "otlp_http/decompressed_too_large",
        },
        Case {
            name: "gzip bomb on events",
            path: "/v1/events",
            content_type: nd,
            encoding: Some("gzip"),
            body: gzip_bomb(16 << 20),
            status: 413,
            counter: "events_http/decompressed_too_large",
        },
        Case {
            name: "body over the limit",
            path: "/v1/traces",
            content_type: pb,
            encoding: None,
            body: vec![0u8; 2 << 20],
            status: 413,
            counter: "otlp_http/body_too_large",
        },
        Case {
            name: "events body over the limit",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: vec![b'{'; 2 << 20],
            status: 413,
            counter: "events_http/body_too_large",
        },
        Case {
            name: "invalid UTF-8 in JSON",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"name\":\"\xff\xfe\"}]}]}]}"
                .to_vec(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "deeply nested JSON",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: deep_json(100_000),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "deeply nested kvlist",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: json_span(
                &format!(
                    "{{\"key\":\"k\",\"value\":{}{}}}",
                    "{\"kvlistValue\":{\"values\":[{\"key\":\"k\",\"value\":".repeat(200),
                    "}]}}".repeat(200)
                ),
                "",
            ),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "NaN timestamp",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: json_span(&attr("user.id", "a"), ",\"startTimeUnixNano\":NaN"),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "negative timestamp",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: json_span(&attr("user.id", "a"), ",\"startTimeUnixNano\":\"-5\""),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "bad hex trace id",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":\"zz\"}]}]}]}"
                .to_vec(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "JSON that is not an object",
            path: "/v1/traces",
            content_type: js,
            encoding: None,
            body: b"[1,2,3]".to_vec(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "empty JSON body",
            path: "/v1/logs",
            content_type: js,
            encoding: None,
            body: Vec::new(),
            status: 400,
            counter: "otlp_http/decode_error",
        },
        Case {
            name: "events: only invalid JSON",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"{nope\n".to_vec(),
            status: 400,
            counter: "events_http/invalid_json",
        },
        Case {
            name: "events: NUL byte in user id",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"{\"user_id\":\"al\\u0000ice\"}\n".to_vec(),
            status: 400,
            counter: "events_http/control_chars_in_id",
        },
        Case {
            name: "events: enormous id",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: format!("{{\"user_id\":\"{}\"}}\n", "u".repeat(100_000)).into_bytes(),
            status: 400,
            counter: "events_http/id_too_long",
        },
        Case {
            name: "events: NaN time as string",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"{\"user_id\":\"a\",\"time\":\"NaN\"}\n".to_vec(),
            status: 400,
            counter: "events_http/bad_time",
        },
        Case {
            name: "events: negative time",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"{\"user_id\":\"a\",\"time\":-1}\n".to_vec(),
            status: 400,
            counter: "events_http/bad_time",
        },
        Case {
            name: "events: missing user",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"{\"event\":\"agent_started\"}\n".to_vec(),
            status: 400,
            counter: "events_http/missing_user",
        },
        Case {
            name: "events: not an object",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"\"just a string\"\n".to_vec(),
            status: 400,
            counter: "events_http/not_an_object",
        },
        Case {
            name: "events: invalid UTF-8",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: b"{\"user_id\":\"\xc3\x28\"}\n".to_vec(),
            status: 400,
            counter: "events_http/invalid_utf8",
        },
        Case {
            name: "events: JSON array of garbage",
            path: "/v1/events",
            content_type: js,
            encoding: None,
            body: b"[1, \"x\", null]".to_vec(),
            status: 400,
            counter: "events_http/not_an_object",
        },
        Case {
            name: "events: deeply nested line",
            path: "/v1/events",
            content_type: nd,
            encoding: None,
            body: [
                b"{\"a\":".repeat(10_000),
                b"1".to_vec(),
                b"}".repeat(10_000),
                b"\n".to_vec(),
            ]
            .concat(),
            status: 400,
            counter: "events_http/invalid_json",
        },
        Case {
            name: "unknown path",
            path: "/v1/profiles",
            content_type: pb,
            encoding: None,
            body: Vec::new(),
            status: 404,
            counter: "otlp_http/not_found",
        },
    ];
    // Item-level problems in an otherwise valid export follow OTLP partial success: 200 with
    // `partial_success` naming the rejected spans, and the counter.
    let long = "x".repeat(100_000);
    cases.push(Case {
        name: "enormous instance id (partial success)",
        path: "/v1/traces",
        content_type: js,
        encoding: None,
        body: json_span(
            &format!(
                "{},{}",
                attr("user.id", "a"),
                attr("agent_factory.instance_id", &long)
            ),
            "",
        ),
        status: 200,
        counter: "otlp_http/id_too_long",
    });
    cases.push(Case {
        name: "NUL byte in user id (partial success)",
        path: "/v1/traces",
        content_type: js,
        encoding: None,
        body: json_span(
            &format!(
                "{},{}",
                attr("user.id", "al\\u0000ice"),
                attr("agent_factory.instance_id", "f")
            ),
            "",
        ),
        status: 200,
        counter: "otlp_http/control_chars_in_id",
    });
    cases
}

#[test]
fn hostile_corpus_gets_the_right_status_a_counter_and_leaves_the_server_serving() {
    let s = Server::start(&format!("{LIMITS}{FACTORY_WATCH}"));
    let cases = corpus();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in &cases {
        let (source, reason) = case.counter.split_once('/').unwrap();
        let sample = format!("crosstalk_rejected_total{{source=\"{source}\",reason=\"{reason}\"}}");
        let before = s.metric(&sample);
        let mut headers = vec![];
        if !case.content_type.is_empty() {
            headers.push(("content-type", case.content_type));
        }
        if let Some(e) = case.encoding {
            headers.push(("content-encoding", e));
        }
        if case.status == 413 {
            // Refused before the body is read: the client may not even finish sending it.
            let status = raw_post_status(s.http, case.path, &headers, &case.body);
            assert_eq!(status, 413, "{}", case.name);
            assert!(
                s.metric(&sample) > before,
                "{}: {sample} did not move",
                case.name
            );
            continue;
        }
        let r = post(&s.http_url(case.path), &headers, &case.body);
        assert_eq!(r.status, case.status, "{}: {}", case.name, r.text());
        assert!(
            s.metric(&sample) > before,
            "{}: {sample} did not move",
            case.name
        );
        if case.status == 200 {
            let partial = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap();
            assert_eq!(
                partial["partialSuccess"]["rejectedSpans"], 1,
                "{}",
                case.name
            );
        } else if case.path != "/v1/events" && !r.body.is_empty() {
            // A google.rpc.Status (JSON here, as the request was not protobuf-decodable JSON).
            let ct = r.header("content-type").unwrap_or("");
            if ct.starts_with("application/json") {
                assert!(
                    r.json().get("message").is_some() || r.json().get("error").is_some(),
                    "{}",
                    case.name
                );
            } else {
                tonic_types::Status::decode(&r.body[..])
                    .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            }
        }
    }
    // Still serving correct traffic, and still finding leaks.
    assert_eq!(s.post_traces(&factory_use("alice", "ok", 1)).status, 200);
    let r = s.post_traces(&factory_use("bob", "ok", 2));
    assert!(
        ExportTraceServiceResponse::decode(&r.body[..])
            .unwrap()
            .partial_success
            .is_none()
    );
    assert_eq!(s.findings().len(), 1);
    assert!(s.findings()[0]["users"].to_string().contains("bob"));
    assert_eq!(get(&s.admin_url("/ready")).status, 200);
}

#[test]
fn admin_on_all_interfaces_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[listen]\nadmin = \"0.0.0.0:0\"\notlp_grpc = \"127.0.0.1:0\"\notlp_http = \"127.0.0.1:0\"\n[storage]\ndir = \"{}\"\n", dir.path().display())).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen.admin") && err.contains("admin_token_file"),
        "{err}"
    );
}

#[test]
fn tokens_guard_the_admin_api_and_the_otlp_listeners() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "adm1n\n").unwrap();
    std::fs::write(dir.path().join("otlp-token"), "otlp-s3cret").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nadmin = \"0.0.0.0:0\"\notlp_grpc = \"127.0.0.1:0\"\notlp_http = \"127.0.0.1:0\"\n[storage]\ndir = \"{d}/data\"\n\
             [auth]\nadmin_token_file = \"{d}/admin-token\"\notlp_token_file = \"{d}/otlp-token\"\n{FACTORY_WATCH}",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let s = Server::start_with_config(dir.path(), &config, &[]);
    let admin = format!("http://127.0.0.1:{}", s.admin.port());
    assert_eq!(get(&format!("{admin}/api/v1/findings")).status, 401);
    assert_eq!(
        get_with(
            &format!("{admin}/api/v1/findings"),
            &[("authorization", "Bearer wrong")]
        )
        .status,
        401
    );
    assert_eq!(get(&format!("{admin}/metrics")).status, 401);
    assert_eq!(get(&format!("{admin}/api/v1/status")).status, 401);
    let status = get_with(
        &format!("{admin}/api/v1/status"),
        &[("authorization", "Bearer adm1n")],
    );
    assert_eq!(status.status, 200);
    assert_eq!(
        get_with(
            &format!("{admin}/api/v1/findings"),
            &[("authorization", "Bearer adm1n")]
        )
        .status,
        200
    );
    assert_eq!(
        get(&format!("{admin}/live")).status,
        200,
        "probes stay open"
    );
    assert_eq!(get(&format!("{admin}/ready")).status, 200);

    let body = factory_use("alice", "f", 1).encode_to_vec();
    let pb = ("content-type", "application/x-protobuf");
    assert_eq!(post(&s.http_url("/v1/traces"), &[pb], &body).status, 401);
    assert_eq!(
        post(
            &s.http_url("/v1/traces"),
            &[pb, ("authorization", "Bearer otlp-s3cret")],
            &body
        )
        .status,
        200
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = format!("http://{}", s.grpc);
    let (denied, allowed) = rt.block_on(async move {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        let mut client = TraceServiceClient::connect(grpc).await.unwrap();
        let denied = client.export(factory_use("bob", "f", 2)).await.unwrap_err().code();
        let mut req = tonic::Request::new(factory_use("bob", "f", 3));
        req.metadata_mut().insert("authorization", "Bearer otlp-s3cret".parse().unwrap());
        let allowed = client.export(req).await.is_ok();
        (denied, allowed)
    });
    assert_eq!(denied, tonic::Code::Unauthenticated);
    assert!(allowed);
    let m = get_with(
        &format!("{admin}/metrics"),
        &[("authorization", "Bearer adm1n")],
    )
    .text();
    assert!(
        metric_value(
            &m,
            r#"crosstalk_rejected_total{source="otlp_http",reason="unauthorized"}"#
        ) >= 1.0
    );
    assert!(
        metric_value(
            &m,
            r#"crosstalk_rejected_total{source="otlp_grpc",reason="unauthorized"}"#
        ) >= 1.0
    );
    assert!(
        metric_value(
            &m,
            r#"crosstalk_admin_bad_requests_total{reason="unauthorized"}"#
        ) >= 3.0
    );
}

#[test]
fn hmac_mode_keeps_raw_user_ids_out_of_metrics_logs_api_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in Alertmanager that records what it is sent: the payload is what we check.
    let capture = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let am_port = capture.local_addr().unwrap().port();
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = captured.clone();
    std::thread::spawn(move || {
        for stream in capture.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 65536];
            if let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let config = format!(
        "[privacy]\nuser_ids = \"hmac\"\n[alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\nresend_interval = \"1s\"\n{FACTORY_WATCH}"
    );
    let s = Server::start_in(dir.path(), &config);
    let users = ["alice-raw-7f3", "bob-raw-91c"];
    s.post_traces(&factory_use(users[0], "f", 1));
    s.post_traces(&factory_use(users[1], "f", 2));
    let events = format!(
        "{{\"user_id\":\"{}\",\"connection_id\":\"c\",\"connection_user_id\":\"{}\"}}\n",
        users[0], users[1]
    );
    s.post("/v1/events", "application/x-ndjson", events.as_bytes());
    assert!(
        s.wait_for(Duration::from_secs(10), |_| (!captured
            .lock()
            .unwrap()
            .is_empty())
        .then_some(()))
            .is_some(),
        "no alert sent"
    );
    std::thread::sleep(Duration::from_millis(1500));

    let findings = serde_json::to_string(&s.findings()).unwrap();
    let alerts = String::from_utf8_lossy(&captured.lock().unwrap()).into_owned();
    let hash = Command::new(BIN)
        .args(["user-hash", "--config"])
        .arg(dir.path().join("crosstalk.toml"))
        .arg(users[0])
        .output()
        .unwrap();
    let pseudonym = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
    assert!(
        findings.contains(&pseudonym),
        "the API names {pseudonym}: {findings}"
    );
    assert!(
        alerts.contains(&pseudonym),
        "the alert names {pseudonym}: {alerts}"
    );
    let db = std::fs::read(dir.path().join("data/crosstalk.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("data/crosstalk.db-wal")).unwrap_or_default();
    for (place, text) in [
        ("metrics", s.metrics()),
        ("logs", s.stderr()),
        ("findings API", findings),
        ("alert payloads", alerts),
        (
            "store",
            String::from_utf8_lossy(&[db, wal].concat()).into_owned(),
        ),
    ] {
        for user in users {
            assert!(
                !text.contains(user),
                "raw user id `{user}` found in {place}"
            );
        }
    }
}

#[test]
fn tls_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca-key.pem"));
    let ext = dir.path().join("leaf.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A CA and a leaf certificate signed by it, as a real deployment has.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    assert!(ca_key.exists());
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{FACTORY_WATCH}",
            cert.display(),
            key.display()
        ),
    );
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        curl(&[&format!("https://127.0.0.1:{}/ready", s.admin.port())]),
        "200"
    );
    let body = dir.path().join("body.pb");
    std::fs::write(&body, factory_use("alice", "f", 1).encode_to_vec()).unwrap();
    let url = format!("https://127.0.0.1:{}/v1/traces", s.http.port());
    assert_eq!(
        curl(&[
            "-H",
            "content-type: application/x-protobuf",
            "--data-binary",
            &format!("@{}", body.display()),
            &url
        ]),
        "200"
    );
    assert_eq!(
        curl(&[
            "--http2",
            "-H",
            "content-type: application/x-protobuf",
            "--data-binary",
            &format!("@{}", body.display()),
            &url
        ]),
        "200"
    );
    // Plain HTTP to a TLS listener gets nowhere.
    let plain = Command::new("curl")
        .args(["-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/ready", s.admin.port()))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");

    let pem = std::fs::read(&ca).unwrap();
    let grpc = s.grpc;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ok = rt.block_on(async move {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{grpc}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        TraceServiceClient::new(channel).export(factory_use("bob", "f", 2)).await.is_ok()
    });
    assert!(ok, "gRPC over TLS");
    let findings = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&ca)
        .arg(format!(
            "https://127.0.0.1:{}/api/v1/findings",
            s.admin.port()
        ))
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&findings.stdout).unwrap();
    assert_eq!(
        j["findings"][0]["users"],
        serde_json::json!(["alice", "bob"])
    );
}

/// Defect 9: a big body was inflated and walked on the async worker that read it, so on a
/// one-worker runtime every other connection waited for it. Four exports that inflate to 8 MiB
/// of (valid, empty) resource spans are in flight when `/ready` is asked: it must be answered
/// before any of them.
#[test]
fn a_big_gzip_export_in_flight_does_not_hold_up_other_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crosstalk.toml");
    std::fs::write(&config, config_text(dir.path(), "")).unwrap();
    let s = Server::start_with_config(dir.path(), &config, &[("TOKIO_WORKER_THREADS", "1")]);
    // Field 1 (resource_spans), length 0: the cheapest valid message to repeat, the longest walk.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let empty_resources = b"\x0a\x00".repeat(1 << 20);
    for _ in 0..4 {
        enc.write_all(&empty_resources).unwrap();
    }
    let body = std::sync::Arc::new(enc.finish().unwrap());
    let url = s.http_url("/v1/traces");
    let big: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let headers = [
                    ("content-type", "application/x-protobuf"),
                    ("content-encoding", "gzip"),
                ];
                let status = post(&url, &headers, &body).status;
                (status, std::time::Instant::now())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    let ready = get(&s.admin_url("/ready"));
    let ready_at = std::time::Instant::now();
    assert_eq!(ready.status, 200);
    for handle in big {
        let (status, done_at) = handle.join().unwrap();
        assert_eq!(status, 200, "an export of empty resource spans is taken");
        assert!(
            ready_at < done_at,
            "/ready waited for a big export to be decoded"
        );
    }
}
