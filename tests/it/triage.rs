//! The on-call flow through the real HTTP API: list → acknowledge → resolve, persisted across a
//! restart; a new user reopens a resolved finding, a known one does not; an acknowledged finding
//! is not re-alerted by a real Alertmanager; `allow_instances` exempts one shared instance.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::alerting::{am_alerts, free_port, start_alertmanager, wait_until};
use crate::util::*;

const TOKEN: &str = "0ncall";

fn token_config(dir: &Path, extra: &str) -> String {
    std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    format!(
        "[auth]\nadmin_token_file = \"{}\"\n{extra}",
        dir.join("admin-token").display()
    )
}

fn authed(s: &Server, path: &str) -> Reply {
    get_with(
        &s.admin_url(path),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
}

fn act(s: &Server, id: &str, verb: &str, body: &Value) -> Reply {
    post(
        &s.admin_url(&format!("/api/v1/findings/{id}/{verb}")),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn finding(s: &Server, id: &str) -> Value {
    let r = authed(s, &format!("/api/v1/findings/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn bad_requests(s: &Server, reason: &str) -> f64 {
    let text = authed(s, "/metrics").text();
    metric_value(
        &text,
        &format!("crosstalk_admin_bad_requests_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn ack_and_resolve_survive_a_restart_and_only_a_new_user_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path(), FACTORY_WATCH);
    let mut s = Server::start_in(dir.path(), &config);
    assert_eq!(s.post_traces(&factory_use("alice", "f", 1)).status, 200);
    assert_eq!(s.post_traces(&factory_use("bob", "f", 2)).status, 200);
    let listed = authed(&s, "/api/v1/findings?state=open").json();
    let id = listed["findings"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["findings"][0]["state"], "open");

    let ack = json!({"by": "alice.oncall", "note": "looking at the factory cache"});
    let unauthenticated = post(
        &s.admin_url(&format!("/api/v1/findings/{id}/ack")),
        &[],
        ack.to_string().as_bytes(),
    );
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(act(&s, &id, "ack", &json!({"note": "who?"})).status, 400);
    assert_eq!(bad_requests(&s, "bad_body"), 1.0);
    assert_eq!(act(&s, "0000000000000000", "ack", &ack).status, 404);
    let r = act(&s, &id, "ack", &ack);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "acknowledged");
    assert_eq!(finding(&s, &id)["state_change"]["by"], "alice.oncall");
    assert_eq!(
        s.metric("crosstalk_rejected_total"),
        0.0,
        "not telemetry loss"
    );

    s.terminate();
    let s = Server::start_in(dir.path(), &config);
    let f = finding(&s, &id);
    assert_eq!(f["state"], "acknowledged", "persisted across a restart");
    assert_eq!(f["state_change"]["note"], "looking at the factory cache");
    let acked = authed(&s, "/api/v1/findings?state=acknowledged").json();
    assert_eq!(acked["findings"].as_array().unwrap().len(), 1);

    let r = act(
        &s,
        &id,
        "resolve",
        &json!({"by": "alice.oncall", "note": "fixed in 1.4.2"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        act(&s, &id, "ack", &ack).status,
        409,
        "a resolved finding is not acknowledged"
    );
    // A known user on the resolved finding: acknowledged by the store before the reply.
    assert_eq!(s.post_traces(&factory_use("bob", "f", 3)).status, 200);
    assert_eq!(finding(&s, &id)["state"], "resolved");
    assert_eq!(s.post_traces(&factory_use("carol", "f", 4)).status, 200);
    let f = finding(&s, &id);
    assert_eq!(f["state"], "open", "a new user reopens it: {f:#}");
    assert_eq!(f["state_change"]["by"], "crosstalk");
    assert_eq!(f["user_count"], 3);
}

#[test]
fn an_acknowledged_finding_is_not_realerted() {
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let _am = start_alertmanager(dir.path(), am_port);
    let config = token_config(
        dir.path(),
        &format!(
            "[alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\nresend_interval = \"1s\"\n{FACTORY_WATCH}"
        ),
    );
    let s = Server::start_in(dir.path(), &config);
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    let active = || {
        am_alerts(am_port)
            .iter()
            .any(|a| a["status"]["state"] == "active")
    };
    assert!(wait_until(Duration::from_secs(15), active), "never alerted");
    let id = authed(&s, "/api/v1/findings").json()["findings"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = act(&s, &id, "ack", &json!({"by": "bob.oncall"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        wait_until(Duration::from_secs(10), || !active()),
        "the alert was not ended on acknowledgement: {:#?}",
        am_alerts(am_port)
    );
    let sent =
        |s: &Server| metric_value(&authed(s, "/metrics").text(), "crosstalk_alerts_sent_total");
    let after_end = sent(&s);
    // Four resend intervals, and the finding grows meanwhile: still nothing re-posted.
    s.post_traces(&factory_use("carol", "f", 3));
    std::thread::sleep(Duration::from_secs(4));
    assert!(!active(), "re-alerted: {:#?}", am_alerts(am_port));
    assert_eq!(sent(&s), after_end, "nothing sent after the end");
}

#[test]
fn allowed_instances_make_no_finding_and_config_check_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let watch = format!("{FACTORY_WATCH}allow_instances = [\"shared-ro-cache\"]\n");
    let s = Server::start_in(dir.path(), &watch);
    for (i, user) in ["alice", "bob", "carol"].iter().enumerate() {
        s.post_traces(&factory_use(user, "shared-ro-cache", 10 + i as u128));
    }
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    let findings = s.findings();
    let instances: Vec<&str> = findings
        .iter()
        .map(|f| f["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["f"]);
    let watches = get(&s.admin_url("/api/v1/watches")).json();
    let row = &watches["watches"][0];
    assert_eq!(row["allowed_observations"], 3, "{row:#}");
    assert_eq!(row["max_users_per_instance"], 2, "{row:#}");

    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(dir.path().join("crosstalk.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("allow_instances shared-ro-cache"), "{text}");
}
