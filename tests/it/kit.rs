//! The Python instrumentation kit end to end: the kit's example FastAPI app under uvicorn, real
//! `websockets` clients, the real OpenTelemetry SDK exporting spans and log records to a running
//! crosstalk on its default watches. The incident's singleton is found (factory, emitter, DB
//! session — each pointing at where the singleton was built — and misdelivered events); the
//! per-request fix is clean; `id(obj)` tagging falls into the address-reuse trap, the kit does not.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;

use crate::alerting::{am_alerts, free_port, start_alertmanager, wait_until};
use crate::util::*;

/// crosstalk as a user runs it without writing any watch: a config with only ports, storage
/// and `extra` keeps the embedded default's watches.
fn server_on_default_watches(extra: &str) -> Server {
    let s = Server::start(extra);
    let watches = s.metrics();
    for w in ["agent_factory", "db_session", "ws_emitter", "session"] {
        let sample = format!("crosstalk_tracked_instances{{watch=\"{w}\"}}");
        assert!(
            watches.contains(&sample),
            "default watch {w} is on: {watches}"
        );
    }
    s
}

/// tests/e2e/kit_backend.py: the example app on a free port, exporting to `server`.
struct App {
    child: Child,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl App {
    fn start(mode: &str, server: &Server, dir: &Path) -> App {
        let mut child = Command::new(python())
            .arg(e2e_script("kit_backend.py"))
            .args([
                "--mode",
                mode,
                "--endpoint",
                &format!("http://{}", server.http),
            ])
            .arg("--db")
            .arg(dir.join(format!("{mode}.db")))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the kit's example app");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("expected LISTENING <port>, got {first:?}"))
            .parse()
            .unwrap();
        App {
            child,
            stdout,
            port,
        }
    }

    /// SIGTERM; the app flushes its exports and prints its event log counters.
    fn stop(&mut self) -> Json {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(status.success(), "the app failed: {status}\n{rest}");
        serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{e}: {rest:?}"))
    }

    fn post(&self, path: &str) {
        let r = post(&format!("http://127.0.0.1:{}{path}", self.port), &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

impl Drop for App {
    /// A failed assertion must not leave the app running (holding the test's stderr open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three users connect at once and each asks for three agent runs, all concurrently.
fn websocket_users(app: &App) -> Json {
    let out = Command::new(python())
        .arg(e2e_script("ws_clients.py"))
        .args([
            "--url",
            &format!("ws://127.0.0.1:{}/ws", app.port),
            "--users",
            "alice,bob,carol",
            "--runs",
            "3",
            "--timeout",
            "8",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn of_watch<'a>(findings: &'a [Json], watch: &str) -> Vec<&'a Json> {
    findings.iter().filter(|f| f["watch"] == watch).collect()
}

#[test]
fn kit_fastapi_singleton_is_found_with_its_origin_and_the_per_request_fix_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let _am = start_alertmanager(tmp.path(), am_port);
    let s = server_on_default_watches(&format!(
        "[alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\n"
    ));
    let mut app = App::start("singleton", &s, tmp.path());
    let clients = websocket_users(&app);
    let events = app.stop();
    assert_eq!(events["events"]["dropped"], 0, "{events}");
    let foreign: u64 = ["alice", "bob", "carol"]
        .iter()
        .map(|u| clients[u]["foreign"].as_u64().unwrap())
        .sum();
    assert!(
        foreign > 0,
        "someone really got another user's events: {clients}"
    );

    let findings = s
        .wait_for(Duration::from_secs(10), |s| {
            let f = s.findings();
            (f.len() >= 4).then_some(f)
        })
        .unwrap_or_else(|| panic!("four findings: {:#?}", s.findings()));
    for watch in ["agent_factory", "ws_emitter", "db_session"] {
        let found = of_watch(&findings, watch);
        assert_eq!(found.len(), 1, "one shared {watch}: {findings:#?}");
        let f = found[0];
        assert_eq!(f["type"], "shared_instance");
        assert_eq!(f["user_count"], 3, "{f:#}");
        for e in f["evidence"].as_array().unwrap() {
            let origin = e["origin"].as_str().unwrap_or_else(|| panic!("{e}"));
            assert!(
                origin.starts_with("agent_backend:get_agent_instance_factory:"),
                "{watch} evidence names the singleton's constructor call: {origin}"
            );
        }
    }
    let misdelivered = of_watch(&findings, "event_delivery");
    assert!(!misdelivered.is_empty(), "{findings:#?}");
    assert_eq!(misdelivered[0]["type"], "misdelivered_event");
    let sample = r#"crosstalk_findings_total{type="shared_instance",watch="agent_factory",service="agent-backend"}"#;
    assert_eq!(s.metric(sample), 1.0, "the leak is on /metrics too");
    let factory_id = of_watch(&findings, "agent_factory")[0]["id"].clone();
    let mut paged = None;
    let pushed = wait_until(Duration::from_secs(15), || {
        paged = am_alerts(am_port)
            .into_iter()
            .find(|a| a["labels"]["finding_id"] == factory_id);
        paged.is_some()
    });
    assert!(pushed, "the factory's finding paged through Alertmanager");
    let origin = paged.unwrap()["annotations"]["origin"].clone();
    assert!(
        origin
            .as_str()
            .is_some_and(|o| o.starts_with("agent_backend:get_agent_instance_factory:")),
        "the page says where the singleton is built: {origin}"
    );

    let fixed = server_on_default_watches("");
    let mut app = App::start("per-request", &fixed, tmp.path());
    let clients = websocket_users(&app);
    let events = app.stop();
    for u in ["alice", "bob", "carol"] {
        assert_eq!(clients[u]["completed"], 3, "{clients}");
        assert_eq!(clients[u]["foreign"], 0, "{clients}");
    }
    assert_eq!(
        events["events"]["written"], 45,
        "every event was logged: {events}"
    );
    fixed
        .wait_for(Duration::from_secs(10), |s| {
            (s.metric(r#"crosstalk_received_total{signal="logs",transport="http"}"#) >= 45.0)
                .then_some(())
        })
        .expect("the event log reached crosstalk as OTLP log records");
    for watch in ["agent_factory", "ws_emitter", "db_session"] {
        let sample = format!("crosstalk_tracked_instances{{watch=\"{watch}\"}}");
        assert_eq!(
            fixed.metric(&sample),
            9.0,
            "one {watch} per run, all watched"
        );
    }
    assert!(fixed.findings().is_empty(), "{:#?}", fixed.findings());
}

/// Thousands of sequential requests, alternating users, each with its own short-lived factory.
fn alternating_requests(kind: &str) -> Vec<Json> {
    let tmp = tempfile::tempdir().unwrap();
    let s = server_on_default_watches("");
    let mut app = App::start("per-request", &s, tmp.path());
    for i in 0..2000 {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        app.post(&format!("/api/trap/{kind}?user={user}"));
    }
    app.stop();
    let received = r#"crosstalk_received_total{signal="traces",transport="http"}"#;
    s.wait_for(Duration::from_secs(10), |s| {
        (s.metric(received) >= 2000.0).then_some(())
    })
    .expect("every request's spans arrived");
    s.findings_query("?watch=agent_factory&limit=1000")
}

#[test]
fn kit_ids_survive_address_reuse_where_naive_id_tagging_raises_false_findings() {
    let naive = alternating_requests("naive");
    assert!(
        !naive.is_empty(),
        "CPython reused a dead factory's address for the other user: id(obj) is a false leak"
    );
    assert!(
        naive
            .iter()
            .all(|f| f["users"] == serde_json::json!(["alice", "bob"])
                || f["users"] == serde_json::json!(["bob", "alice"]))
    );
    let kit = alternating_requests("kit");
    assert!(kit.is_empty(), "the kit's ids are never reused: {kit:#?}");
}

/// One OTLP JSON line (the Collector's file exporter format): `user` uses factory `f-1`, made at
/// the line the kit reported.
fn factory_span_json(user: &str, trace: u8) -> String {
    let attr = |k: &str, v: &str| serde_json::json!({"key": k, "value": {"stringValue": v}});
    serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", "agent-backend"), attr("service.instance.id", "pod-1")]},
        "scopeSpans": [{"spans": [{
            "traceId": format!("{trace:032x}"), "spanId": format!("{trace:016x}"), "name": "op",
            "startTimeUnixNano": "1767225600000000000", "endTimeUnixNano": "1767225600100000000",
            "attributes": [
                attr("user.id", user),
                attr("agent_factory.instance_id", "f-1"),
                attr("agent_factory.origin", "app.deps:get_agent_instance_factory:31"),
            ],
        }]}],
    }]})
    .to_string()
}

#[test]
fn check_prints_the_origin_of_a_shared_instance_in_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("traces.jsonl");
    let lines = [factory_span_json("alice", 1), factory_span_json("bob", 2)];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let run = |format: &str| {
        let out = Command::new(BIN)
            .args(["check", "--format", format])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run("text");
    assert_eq!(
        text.matches(" origin=app.deps:get_agent_instance_factory:31")
            .count(),
        2,
        "both evidence lines name the origin: {text}"
    );
    let json: Json = serde_json::from_str(&run("json")).unwrap();
    let evidence = json["findings"][0]["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 2);
    for e in evidence {
        assert_eq!(e["origin"], "app.deps:get_agent_instance_factory:31");
    }
}
