//! End to end with real clients: the seeds' backend modelled in Python with the real
//! OpenTelemetry SDK and OTLP exporters, and a real WebSocket backend and clients.
//! The seeds' fail-then-pass plan made real: the singleton fails, the per-request fix passes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

fn run_backend(mode: &str, protocol: &str, endpoint: &str, extra: &[&str]) -> String {
    let out = Command::new(python())
        .arg(e2e_script("seeds_backend.py"))
        .args(["--mode", mode, "--users", "5", "--requests-per-user", "3"])
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--export-timeout",
            "5",
        ])
        .args(extra)
        .output()
        .expect("running the Python backend model");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "backend failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("export_failures=0"), "{stdout}");
    stdout
}

fn singleton_then_per_request(protocol: &str) {
    let s = Server::start(FACTORY_WATCH);
    let endpoint = match protocol {
        "grpc" => format!("http://{}", s.grpc),
        _ => format!("http://{}", s.http),
    };
    let out = run_backend("singleton", protocol, &endpoint, &[]);
    assert!(out.contains("factories=1"), "{out}");
    let findings = s.findings();
    assert_eq!(
        findings.len(),
        1,
        "the singleton is exactly one finding: {findings:#?}"
    );
    let f = &findings[0];
    assert_eq!(f["type"], "shared_instance");
    assert_eq!(f["watch"], "agent_factory");
    assert_eq!(f["user_count"], 5);
    let mut users: Vec<String> = f["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["user-1", "user-2", "user-3", "user-4", "user-5"]);
    let received =
        format!("crosstalk_received_total{{signal=\"traces\",transport=\"{protocol}\"}}");
    assert_eq!(s.metric(&received), 30.0, "5 users x 3 requests x 2 spans");
    assert_eq!(
        s.metric(r#"crosstalk_unattributed_total{watch="agent_factory"}"#),
        0.0
    );

    let fixed = Server::start(FACTORY_WATCH);
    let endpoint = match protocol {
        "grpc" => format!("http://{}", fixed.grpc),
        _ => format!("http://{}", fixed.http),
    };
    let out = run_backend("per-request", protocol, &endpoint, &[]);
    assert!(out.contains("factories=15"), "{out}");
    assert_eq!(fixed.metric(&received), 30.0);
    assert!(
        fixed.findings().is_empty(),
        "per-request factories leak nothing"
    );
    assert_eq!(
        fixed.metric(r#"crosstalk_tracked_instances{watch="agent_factory"}"#),
        15.0
    );
}

#[test]
fn seeds_singleton_is_one_finding_and_per_request_is_none_over_otlp_http() {
    singleton_then_per_request("http");
}

#[test]
fn seeds_singleton_is_one_finding_and_per_request_is_none_over_otlp_grpc() {
    singleton_then_per_request("grpc");
}

#[test]
fn shared_cache_entry_within_one_tenant_is_fine_across_tenants_is_a_finding() {
    let watch = "[[watch]]\nname = \"report_cache\"\nattribute = \"cache.entry.id\"\npolicy = \"exclusive\"\nscope = \"global\"\nboundary = \"tenant\"\n";
    let cache = [
        "--instance-attr",
        "cache.entry.id",
        "--shared-instance-id",
        "entry-1",
    ];
    let one_tenant = [
        "--tenant-of",
        "user-1=acme",
        "--tenant-of",
        "user-2=acme",
        "--tenant-of",
        "user-3=acme",
        "--tenant-of",
        "user-4=acme",
        "--tenant-of",
        "user-5=acme",
    ];
    let s = Server::start(watch);
    run_backend(
        "per-request",
        "http",
        &format!("http://{}", s.http),
        &[&cache[..], &one_tenant[..]].concat(),
    );
    assert!(s.findings().is_empty(), "{:#?}", s.findings());

    let two_tenants = [
        "--tenant-of",
        "user-1=acme",
        "--tenant-of",
        "user-2=acme",
        "--tenant-of",
        "user-3=globex",
        "--tenant-of",
        "user-4=globex",
        "--tenant-of",
        "user-5=globex",
    ];
    let s = Server::start(watch);
    run_backend(
        "per-request",
        "http",
        &format!("http://{}", s.http),
        &[&cache[..], &two_tenants[..]].concat(),
    );
    let f = s.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    let mut tenants: Vec<&str> = f[0]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tenants.sort();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(f[0]["cross_tenant"], true);
    assert_eq!(f[0]["boundary"], "tenant");
}

/// Start the WebSocket backend, connect alice and bob, let crosstalk tail its event log.
fn websocket_session(misroute: bool) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ws-events.jsonl");
    std::fs::write(&log, "").unwrap();
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[events]\nfiles = [\"{}\"]\npoll_interval = \"20ms\"\n",
            log.display()
        ),
    );
    let mut backend = Command::new(python());
    backend
        .arg(e2e_script("ws_backend.py"))
        .arg("--port")
        .arg("0")
        .arg("--log")
        .arg(&log);
    if misroute {
        backend.args(["--misroute-from", "alice", "--misroute-to", "bob"]);
    }
    let mut backend = backend.stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(backend.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .strip_prefix("LISTENING ")
        .expect("LISTENING <port>")
        .to_owned();
    let clients = Command::new(python())
        .arg(e2e_script("ws_clients.py"))
        .args([
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--users",
            "alice,bob",
            "--runs",
            "1",
            "--timeout",
            "8",
        ])
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(backend.id().to_string())
        .status();
    let _ = backend.wait();
    assert!(
        clients.status.success(),
        "{}",
        String::from_utf8_lossy(&clients.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&clients.stdout).unwrap();
    let lines = std::fs::read_to_string(&log).unwrap().lines().count() as f64;
    assert!(lines >= 5.0, "the backend logged its events");
    s.wait_for(Duration::from_secs(10), |s| {
        (s.metric(r#"crosstalk_received_total{signal="events",transport="file"}"#) >= lines)
            .then_some(())
    })
    .expect("every logged event was tailed");
    if misroute {
        assert!(
            summary["bob"]["foreign"].as_u64().unwrap() > 0,
            "bob really received alice's events: {summary}"
        );
    } else {
        assert_eq!(summary["bob"]["foreign"], 0);
    }
    s.findings()
}

#[test]
fn real_websocket_misroute_is_exactly_one_misdelivered_event() {
    let findings = websocket_session(true);
    let misdelivered: Vec<_> = findings
        .iter()
        .filter(|f| f["type"] == "misdelivered_event")
        .collect();
    assert_eq!(misdelivered.len(), 1, "{findings:#?}");
    assert_eq!(
        misdelivered[0]["users"],
        serde_json::json!(["alice", "bob"])
    );
    let e = &misdelivered[0]["evidence"][0];
    assert!(
        e["connection_id"].is_string() && e["event"].is_string() && e["run_id"].is_string(),
        "{e}"
    );
}

#[test]
fn real_websocket_without_misroute_has_no_finding() {
    let findings = websocket_session(false);
    assert!(findings.is_empty(), "{findings:#?}");
}
