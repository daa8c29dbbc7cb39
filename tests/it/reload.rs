//! Reload without a restart, on the real binary: SIGHUP with a changed file adds a watch that
//! then finds a leak while the old finding is still listed; an invalid file (SIGHUP or
//! `POST /api/v1/reload`) is refused with its reason and the old watches keep detecting;
//! settings that need a restart are named and not applied, `storage.findings_retention` is
//! applied; the reload endpoint needs the token.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

const DB_WATCH: &str = "[[watch]]\nname = \"db_session\"\nattribute = \"db.session.instance_id\"\n";

fn db_use(
    user: &str,
    session: &str,
    trace: u128,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    instance_use("db.session.instance_id", user, session, trace)
}

fn hup(s: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn reloads(s: &Server, result: &str) -> f64 {
    s.metric(&format!(
        "crosstalk_config_reloads_total{{result=\"{result}\"}}"
    ))
}

fn wait_reloads(s: &Server, result: &str, n: f64) {
    let done = s.wait_for(Duration::from_secs(15), |s| {
        (reloads(s, result) >= n).then_some(())
    });
    assert!(
        done.is_some(),
        "no {result} reload counted:\n{}",
        s.stderr()
    );
}

#[test]
fn sighup_with_a_changed_file_adds_a_watch_that_finds_while_the_old_finding_stays() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    assert_eq!(s.findings().len(), 1);
    // Not watched yet: no finding.
    s.post_traces(&db_use("alice", "s0", 3));
    s.post_traces(&db_use("bob", "s0", 4));
    assert_eq!(s.findings().len(), 1);

    // The new file adds a watch and moves the admin port, which needs a restart.
    let text = config_text(dir.path(), &format!("{FACTORY_WATCH}{DB_WATCH}"))
        .replace("admin = \"127.0.0.1:0\"", "admin = \"127.0.0.1:1\"");
    std::fs::write(dir.path().join("crosstalk.toml"), text).unwrap();
    hup(&s);
    wait_reloads(&s, "ok", 1.0);
    assert!(s.stderr().contains("need a restart"), "{}", s.stderr());

    assert_eq!(s.post_traces(&db_use("alice", "s1", 5)).status, 200);
    assert_eq!(s.post_traces(&db_use("bob", "s1", 6)).status, 200);
    let findings = s.findings();
    let mut watches: Vec<&str> = findings
        .iter()
        .map(|f| f["watch"].as_str().unwrap())
        .collect();
    watches.sort();
    assert_eq!(
        watches,
        ["agent_factory", "db_session"],
        "still on the old admin port"
    );
    // The factory watch kept its bindings: a third user grows the old finding.
    s.post_traces(&factory_use("carol", "f", 7));
    let f = s.findings_query("?watch=agent_factory");
    assert_eq!(f[0]["user_count"], 3);
}

#[test]
fn an_invalid_file_is_refused_with_its_reason_and_the_old_watches_still_detect() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    let path = dir.path().join("crosstalk.toml");
    std::fs::write(
        &path,
        config_text(
            dir.path(),
            "[[watch]]\nname = \"x\"\nattribute = \"x.id\"\npolicy = \"sometimes\"\n",
        ),
    )
    .unwrap();

    let r = post(&s.admin_url("/api/v1/reload"), &[], b"");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("watch[0]"), "names the key: {}", r.text());
    hup(&s);
    wait_reloads(&s, "error", 2.0);
    let log = s.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("config reload refused")),
        "{log}"
    );
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    assert_eq!(s.findings().len(), 1, "the old watches still detect");
    assert_eq!(reloads(&s, "ok"), 0.0);
}

#[test]
fn a_reload_applies_a_shorter_findings_retention_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    assert_eq!(s.findings().len(), 1);

    let text = config_text(dir.path(), FACTORY_WATCH)
        .replace("[storage]\n", "[storage]\nfindings_retention = \"1s\"\n");
    std::fs::write(dir.path().join("crosstalk.toml"), text).unwrap();
    let r = post(&s.admin_url("/api/v1/reload"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(
        report["applied"],
        serde_json::json!(["storage.findings_retention"]),
        "{report:#}"
    );
    assert_eq!(report["needs_restart"], serde_json::json!([]), "{report:#}");
    // Quiet for longer than the new retention: gone at the next sweep (every 10 s).
    let gone = s.wait_for(Duration::from_secs(20), |s| {
        s.findings().is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "the finding outlived the reloaded retention"
    );
}

#[test]
fn the_reload_endpoint_needs_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "s3cret\n").unwrap();
    let extra = format!(
        "[auth]\nadmin_token_file = \"{}\"\n{FACTORY_WATCH}",
        dir.path().join("admin-token").display()
    );
    let s = Server::start_in(dir.path(), &extra);
    let url = s.admin_url("/api/v1/reload");
    assert_eq!(post(&url, &[], b"").status, 401);
    let r = post(&url, &[("authorization", "Bearer s3cret")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(
        report["watches"]["unchanged"][0], "agent_factory",
        "{report:#}"
    );
    assert_eq!(
        report["needs_restart"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
}
