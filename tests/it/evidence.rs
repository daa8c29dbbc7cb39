//! Isolation evidence end to end with the real OpenTelemetry Python SDK: the verdict and the
//! numbers behind it on `GET /api/v1/watches` and `/metrics`, across a restart, and the gate's
//! `--expect` (exit 3) on a tagless export.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const SERVICE: &str = "agent-backend";

/// Run the Python model of the seeds' backend against `s` over OTLP/HTTP.
fn backend(s: &Server, mode: &str, users: u32, requests: u32, extra: &[&str]) {
    let out = Command::new(python())
        .arg(e2e_script("seeds_backend.py"))
        .args([
            "--mode",
            mode,
            "--protocol",
            "http",
            "--export-timeout",
            "5",
        ])
        .args(["--users", &users.to_string()])
        .args(["--requests-per-user", &requests.to_string()])
        .args(["--endpoint", &format!("http://{}", s.http)])
        .args(extra)
        .output()
        .expect("running the Python backend model");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("export_failures=0"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn watches(s: &Server) -> Vec<Value> {
    let r = get(&s.admin_url("/api/v1/watches"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["watches"].as_array().unwrap().clone()
}

/// The agent_factory row of `service` once it has `observations`, waiting for spans that wait
/// for their trace's user.
fn factory_row(s: &Server, service: Option<&str>, observations: u64) -> Value {
    let found = s.wait_for(Duration::from_secs(10), |s| {
        watches(s).into_iter().find(|w| {
            w["watch"] == "agent_factory"
                && w["service"].as_str() == service
                && w["observations"].as_u64() == Some(observations)
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no agent_factory row with {observations} observations: {:#?}",
            watches(s)
        )
    })
}

#[test]
fn per_request_service_is_isolated_with_the_right_counts() {
    let s = Server::start(FACTORY_WATCH);
    backend(&s, "per-request", 4, 3, &[]);
    let w = factory_row(&s, Some(SERVICE), 12);
    assert_eq!(w["verdict"], "isolated", "{w:#}");
    assert_eq!(w["instances"], 12);
    assert_eq!(w["users"], 4);
    assert_eq!(w["max_users_per_instance"], 1);
    assert_eq!(w["unattributed_share"], 0.0);
    assert_eq!(w["instances_per_user"], 3.0);
    assert!(w["first_seen"].is_string() && w["last_seen"].is_string());
    assert_eq!(w["lifetime"]["observations"], 12);
    // The gauges carry counts, never ids.
    let sample = format!(
        "crosstalk_watch_max_users_per_instance{{watch=\"agent_factory\",service=\"{SERVICE}\"}}"
    );
    assert_eq!(
        s.wait_for(Duration::from_secs(5), |s| Some(s.metric(&sample))
            .filter(|v| *v > 0.0)),
        Some(1.0)
    );
    let last = format!(
        "crosstalk_watch_last_observation_timestamp_seconds{{watch=\"agent_factory\",service=\"{SERVICE}\"}}"
    );
    let now_s = (now_ns() / 1_000_000_000) as f64;
    assert!((now_s - s.metric(&last)).abs() < 30.0, "{}", s.metrics());
    assert!(!s.metrics().contains("user-1"));
}

#[test]
fn singleton_is_leaking() {
    let s = Server::start(FACTORY_WATCH);
    backend(&s, "singleton", 5, 2, &[]);
    let w = factory_row(&s, Some(SERVICE), 10);
    assert_eq!(w["verdict"], "leaking", "{w:#}");
    assert_eq!(
        (w["instances"].as_u64(), w["users"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(w["max_users_per_instance"], 5);
    assert!(w["last_finding"].is_string());
}

#[test]
fn tagging_removed_is_blind() {
    let s = Server::start(FACTORY_WATCH);
    backend(&s, "per-request", 3, 2, &["--untagged"]);
    let rows = watches(&s);
    let w = rows.iter().find(|w| w["watch"] == "agent_factory").unwrap();
    assert_eq!(w["verdict"], "blind", "{rows:#?}");
    assert_eq!(w["service"], Value::Null);
    assert_eq!(w["observations"], 0);
    assert_eq!(w["reason"], "never observed");
}

#[test]
fn spans_without_users_are_unattributed() {
    // Spans without a user wait `[attribution] wait` for their trace's user: keep it short.
    let s = Server::start(&format!("[attribution]\nwait = \"200ms\"\n{FACTORY_WATCH}"));
    backend(&s, "per-request", 3, 2, &["--anonymous"]);
    let w = factory_row(&s, Some(SERVICE), 6);
    assert_eq!(w["verdict"], "unattributed", "{w:#}");
    assert_eq!(w["unattributed_share"], 1.0);
    assert_eq!(
        (w["instances"].as_u64(), w["users"].as_u64()),
        (Some(6), Some(0))
    );
}

#[test]
fn first_and_last_observation_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), FACTORY_WATCH);
    backend(&s, "per-request", 2, 1, &[]);
    let before = factory_row(&s, Some(SERVICE), 2);
    // Graceful stop hands the last times to the store.
    s.terminate();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    let rows = watches(&s);
    let after = rows
        .iter()
        .find(|w| w["watch"] == "agent_factory" && w["service"] == SERVICE)
        .unwrap_or_else(|| panic!("the restarted crosstalk forgot the watch was seen: {rows:#?}"));
    assert_eq!(after["first_seen"], before["first_seen"]);
    assert_eq!(after["last_seen"], before["last_seen"]);
    assert_eq!(
        after["verdict"], "isolated",
        "seen inside the window: {after:#}"
    );
    assert_eq!(after["observations"], 0, "counts restart at zero");
    let last = format!(
        "crosstalk_watch_last_observation_timestamp_seconds{{watch=\"agent_factory\",service=\"{SERVICE}\"}}"
    );
    assert!(s.metric(&last) > 0.0, "exported at once after the restart");
}

#[test]
fn watches_api_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[auth]\nadmin_token_file = \"{}\"\n{FACTORY_WATCH}",
            token.display()
        ),
    );
    assert_eq!(get(&s.admin_url("/api/v1/watches")).status, 401);
    let r = get_with(
        &s.admin_url("/api/v1/watches"),
        &[("authorization", "Bearer s3cret-admin-token")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["watches"][0]["verdict"], "blind");
}

fn run_gate(backend_args: &[&str], expect: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--grace", "1s"]);
    for e in expect {
        cmd.args(["--expect", e]);
    }
    cmd.arg("--")
        .arg(python())
        .arg(e2e_script("seeds_backend.py"))
        .args(["--users", "3", "--requests-per-user", "2"])
        .args(backend_args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .output()
        .unwrap()
}

#[test]
fn expect_fails_a_tagless_export_and_passes_a_clean_tagged_one() {
    let out = run_gate(&["--mode", "per-request", "--untagged"], &["agent_factory"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("expected watch `agent_factory` saw no observation"),
        "{stdout}"
    );

    let out = run_gate(&["--mode", "per-request"], &["agent_factory"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "agent_factory service=agent-backend isolated observations=6 instances=6 users=3"
        ),
        "{stdout}"
    );
}

#[test]
fn expect_a_leak_wins_over_an_unobserved_watch_and_typos_are_usage_errors() {
    let out = run_gate(&["--mode", "singleton"], &["agent_factory", "db_session"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(BIN)
        .args(["check", "--expect", "agent_factroy", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent_factroy"));
}

#[test]
fn check_json_lists_the_watches() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/collector-clean.jsonl");
    let out = Command::new(BIN)
        .args(["check", "--format", "json", "--expect", "session"])
        .arg(&fixture)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let factory = j["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["watch"] == "agent_factory")
        .unwrap();
    assert_eq!(factory["verdict"], "isolated");
    assert_eq!(j["unobserved_expected"][0], "session");
}
