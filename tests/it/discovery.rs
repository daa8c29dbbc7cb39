//! Discovery end to end: a backend instrumented with the real OpenTelemetry Python SDK
//! (tests/e2e/discovery_corpus.py, 60 keys, none watched) exports OTLP JSON files, and
//! `crosstalk discover` must point at exactly the three leaking keys and at nothing benign.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::*;
use serde_json::Value as Json;

const LEAKS: [&str; 3] = [
    "app.db.session",
    "gen_ai.conversation.id",
    "legacy.registry.addr",
];

fn corpus(dir: &Path, mode: &str, users: u32, requests: u32) -> String {
    let out = dir.join(format!("{mode}-{users}.jsonl"));
    generate(mode, users, requests, &["--out", out.to_str().unwrap()]);
    out.to_str().unwrap().to_owned()
}

/// Run the corpus generator with `to` (`--out FILE` or `--endpoint URL`).
fn generate(mode: &str, users: u32, requests: u32, to: &[&str]) {
    let run = Command::new(python())
        .arg(e2e_script("discovery_corpus.py"))
        .args(["--mode", mode, "--users", &users.to_string()])
        .args(["--requests", &requests.to_string()])
        .args(to)
        .output()
        .expect("running the Python corpus generator");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn discover(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("discover")
        .args(args)
        .output()
        .unwrap()
}

fn candidates(out: &Output) -> Vec<Json> {
    let j: Json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    j["candidates"].as_array().unwrap().clone()
}

fn with_verdict<'a>(c: &'a [Json], verdict: &str) -> BTreeSet<&'a str> {
    c.iter()
        .filter(|c| c["verdict"] == verdict)
        .map(|c| c["attribute"].as_str().unwrap())
        .collect()
}

#[test]
fn discover_points_at_exactly_the_unwatched_leaks_in_sdk_exported_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = corpus(dir.path(), "leaky", 200, 12_000);
    let out = discover(&["--format", "json", &file]);
    assert_eq!(out.status.code(), Some(0), "advisory by default");
    let c = candidates(&out);
    assert!(c.len() >= 50, "{} keys", c.len());
    assert_eq!(with_verdict(&c, "leak_suspect"), BTreeSet::from(LEAKS));
    // Suspects first, each with evidence and a watch to paste.
    assert!(c[..3].iter().all(|c| c["verdict"] == "leak_suspect"));
    for s in &c[..3] {
        assert!(
            s["examples"][0]["users"].as_array().unwrap().len() >= 2,
            "{s}"
        );
        let watch = s["suggested_watch"].as_str().unwrap();
        assert!(watch.contains(&format!(
            "attribute = \"{}\"",
            s["attribute"].as_str().unwrap()
        )));
    }
    let registry = c
        .iter()
        .find(|c| c["attribute"] == "legacy.registry.addr")
        .unwrap();
    assert!(
        registry["max_users_per_value"].as_u64().unwrap() >= 190,
        "{registry}"
    );
    // The per-request keys really had 10 000+ values, and stayed healthy.
    let request_id = c.iter().find(|c| c["attribute"] == "request.id").unwrap();
    assert_eq!(request_id["verdict"], "per_request");
    assert!(request_id["distinct_values"].as_u64().unwrap() >= 10_000);
    assert_eq!(
        c.iter()
            .find(|c| c["attribute"] == "gen_ai.agent.id")
            .unwrap()["verdict"],
        "shared_by_design"
    );

    let text = discover(&["--fail-on-suspect", &file]);
    assert_eq!(text.status.code(), Some(4));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("3 leak suspect(s)") && text.contains("[[watch]]"),
        "{text}"
    );
}

#[test]
fn discover_on_a_correct_service_finds_no_suspect() {
    let dir = tempfile::tempdir().unwrap();
    let file = corpus(dir.path(), "clean", 200, 3_000);
    let out = discover(&["--format", "json", "--fail-on-suspect", &file]);
    assert_eq!(out.status.code(), Some(0));
    let c = candidates(&out);
    assert!(with_verdict(&c, "leak_suspect").is_empty());
    assert!(with_verdict(&c, "insufficient_data").is_empty());
}

#[test]
fn discover_with_a_handful_of_users_says_insufficient_data() {
    let dir = tempfile::tempdir().unwrap();
    let file = corpus(dir.path(), "leaky", 3, 300);
    let out = discover(&["--format", "json", "--fail-on-suspect", &file]);
    assert_eq!(out.status.code(), Some(0));
    let c = candidates(&out);
    assert!(!c.is_empty());
    assert!(c.iter().all(|c| c["verdict"] == "insufficient_data"));
}

#[test]
fn discover_refuses_bad_input_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{not json\n").unwrap();
    let out = discover(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl"));
}

#[test]
fn a_running_crosstalk_points_at_the_same_leaks_through_the_sdk_exporter() {
    let s = Server::start(FACTORY_WATCH);
    let endpoint = format!("http://{}", s.http);
    generate("leaky", 200, 3000, &["--endpoint", &endpoint]);
    // The discovery thread counts behind the request path: wait until it has seen everything.
    let report = s
        .wait_for(Duration::from_secs(30), |s| {
            let r = get(&s.admin_url("/api/v1/discovery")).json();
            let c = r["candidates"].as_array()?;
            let done = c.iter().find(|c| c["attribute"] == "request.id")?["requests"] == 3000;
            done.then_some(r)
        })
        .expect("discovery saw the whole corpus");
    assert_eq!(report["skipped_exports"], 0);
    let c = report["candidates"].as_array().unwrap();
    assert_eq!(with_verdict(c, "leak_suspect"), BTreeSet::from(LEAKS));
    assert_eq!(
        s.metric("crosstalk_discovery_suspects{service=\"chat-backend\"}"),
        3.0
    );
    // Discovery suggests; it never raises a finding.
    assert!(s.findings().is_empty());
}
