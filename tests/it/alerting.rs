//! From a finding to a page, on real servers: Alertmanager (direct push, outage, restart),
//! Prometheus scraping crosstalk with the shipped rules, and every dashboard query.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_alertmanager(dir: &Path, port: u16) -> Proc {
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let data = dir.join(format!("am-data-{port}"));
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager (Debian package prometheus-alertmanager; scripts/test installs it)");
    let am = Proc(child);
    wait_ready(port, Duration::from_secs(20));
    am
}

pub(crate) fn start_prometheus(
    dir: &Path,
    port: u16,
    admin: std::net::SocketAddr,
    am_port: u16,
) -> Proc {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: crosstalk\n    static_configs:\n      - targets: ['{admin}']\n",
            repo("deploy/prometheus/crosstalk-rules.yml").display()
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; scripts/test installs it)");
    let p = Proc(child);
    wait_ready(port, Duration::from_secs(30));
    p
}

/// Wait for a Prometheus-family server's `/-/ready`; a server that never gets there fails here,
/// not in a later, puzzling assertion.
fn wait_ready(port: u16, timeout: Duration) {
    let ready = wait_until(timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get(&format!("http://127.0.0.1:{port}/-/ready")).status == 200
    });
    assert!(ready, "server on port {port} not ready within {timeout:?}");
}

pub(crate) fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

pub(crate) fn am_alerts(port: u16) -> Vec<Value> {
    let r = get(&format!("http://127.0.0.1:{port}/api/v2/alerts"));
    if r.status != 200 {
        return Vec::new();
    }
    r.json().as_array().cloned().unwrap_or_default()
}

fn leak_with_python(s: &Server) {
    let out = Command::new(python())
        .arg(e2e_script("seeds_backend.py"))
        .args([
            "--mode",
            "singleton",
            "--users",
            "5",
            "--requests-per-user",
            "2",
            "--protocol",
            "http",
        ])
        .args(["--endpoint", &format!("http://{}", s.http)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_no_raw_users(text: &str) {
    for i in 1..=5 {
        assert!(
            !text.contains(&format!("user-{i}")),
            "raw user id in alert payload: {text}"
        );
    }
}

pub(crate) fn promql(prom: u16, expr: &str) -> Value {
    let url = format!(
        "http://127.0.0.1:{prom}/api/v1/query?query={}",
        form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>()
    );
    get(&url).json()
}

/// Every `expr` in a dashboard, with Grafana's variables substituted.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        collect_exprs(
            &dash,
            &mut out,
            path.file_name().unwrap().to_string_lossy().as_ref(),
        );
    }
    out.into_iter()
        .map(|(name, e)| {
            let e = e
                .replace("${service}", ".*")
                .replace("$service", ".*")
                .replace("${watch}", ".*")
                .replace("$watch", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$__interval", "15s");
            (name, e)
        })
        .collect()
}

fn collect_exprs(v: &Value, out: &mut Vec<(String, String)>, file: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(expr)) = map.get("expr") {
                if !expr.is_empty() {
                    out.push((file.to_owned(), expr.clone()));
                }
            }
            for child in map.values() {
                collect_exprs(child, out, file);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out, file)),
        _ => {}
    }
}

#[test]
fn leak_pages_through_alertmanager_prometheus_rules_and_dashboards() {
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let _am = start_alertmanager(dir.path(), am_port);
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\nresend_interval = \"2s\"\n{FACTORY_WATCH}"
        ),
    );
    let prom_port = free_port();
    let _prom = start_prometheus(dir.path(), prom_port, s.admin, am_port);
    // A baseline scrape before the leak, so increases are visible.
    assert!(wait_until(Duration::from_secs(20), || {
        promql(prom_port, "up{job=\"crosstalk\"}")["data"]["result"][0]["value"][1] == "1"
    }));
    leak_with_python(&s);
    let finding = s.findings()[0].clone();
    let id = finding["id"].as_str().unwrap().to_owned();

    // (a) the direct push, with the right labels, within seconds.
    let mut pushed = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            pushed = am_alerts(am_port)
                .into_iter()
                .find(|a| a["labels"]["finding_id"] == id.as_str());
            pushed.is_some()
        }),
        "no direct-push alert in Alertmanager"
    );
    let alert = pushed.unwrap();
    let labels = &alert["labels"];
    assert_eq!(labels["alertname"], "CrossUserStateLeak");
    assert_eq!(labels["watch"], "agent_factory");
    assert_eq!(labels["service"], "agent-backend");
    assert_eq!(labels["severity"], "critical");
    let ann = &alert["annotations"];
    assert_eq!(ann["affected_users"], "5");
    assert!(
        ann["finding_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/api/v1/findings/{id}"))
    );
    assert!(ann["runbook_url"].as_str().unwrap().starts_with("http"));
    assert!(!ann["trace_ids"].as_str().unwrap().is_empty());
    let users = ann["users"].as_str().unwrap();
    assert_eq!(users.split(", ").count(), 5);
    let hash = Command::new(BIN)
        .args(["user-hash", "--config"])
        .arg(dir.path().join("crosstalk.toml"))
        .arg("user-1")
        .output()
        .unwrap();
    let pseudonym = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
    assert!(
        users.contains(&pseudonym),
        "`crosstalk user-hash user-1` = {pseudonym} names the user in {users}"
    );
    assert_no_raw_users(&serde_json::to_string(&am_alerts(am_port)).unwrap());
    assert!(s.metric("crosstalk_alerts_sent_total") >= 1.0);

    // (b) Prometheus fires the shipped rule.
    let mut fired = false;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let alerts = get(&format!("http://127.0.0.1:{prom_port}/api/v1/alerts")).json();
            fired = alerts["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "CrossUserStateLeakDetected"
                        && a["state"] == "firing"
                });
            fired
        }),
        "CrossUserStateLeakDetected did not fire"
    );

    // (c) every dashboard query runs; the leak's panels show data.
    std::thread::sleep(Duration::from_secs(2));
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "found {} dashboard queries",
        queries.len()
    );
    let mut leak_panels = 0;
    for (file, expr) in &queries {
        let r = promql(prom_port, expr);
        assert_eq!(r["status"], "success", "{file}: `{expr}` failed: {r}");
        if expr.contains("crosstalk_findings_total")
            || expr.contains("crosstalk_affected_users_total")
        {
            leak_panels += 1;
            assert!(
                !r["data"]["result"].as_array().unwrap().is_empty(),
                "{file}: `{expr}` shows no leak"
            );
        }
    }
    assert!(leak_panels > 0);
}

#[test]
fn alert_survives_an_alertmanager_outage_and_a_crosstalk_restart_and_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let config = format!(
        "[alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\nresend_interval = \"2s\"\n{FACTORY_WATCH}"
    );
    let mut s = Server::start_in(dir.path(), &config);
    leak_with_python(&s);
    let id = s.findings()[0]["id"].as_str().unwrap().to_owned();
    assert!(
        s.wait_for(Duration::from_secs(10), |s| (s
            .metric("crosstalk_alert_failures_total")
            >= 1.0)
            .then_some(()))
            .is_some()
    );
    s.kill9();

    let s = Server::start_in(dir.path(), &config);
    let _am = start_alertmanager(dir.path(), am_port);
    let mut alerts = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            alerts = am_alerts(am_port);
            !alerts.is_empty()
        }),
        "the alert never arrived after the outage"
    );
    std::thread::sleep(Duration::from_secs(3));
    let alerts = am_alerts(am_port);
    let ours: Vec<_> = alerts
        .iter()
        .filter(|a| a["labels"]["finding_id"] == id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{alerts:#?}");
    assert_eq!(alerts.len(), 1, "one alert per finding");
    assert_no_raw_users(&serde_json::to_string(&alerts).unwrap());
    assert!(s.metric("crosstalk_alerts_sent_total") >= 1.0);
}

#[test]
fn quiet_instance_resolves_its_alert() {
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let _am = start_alertmanager(dir.path(), am_port);
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\nresend_interval = \"1s\"\nresolve_after = \"2s\"\n{FACTORY_WATCH}"
        ),
    );
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    assert!(wait_until(Duration::from_secs(10), || !am_alerts(am_port).is_empty()));
    // Active alerts disappear from the default listing once resolved.
    assert!(
        wait_until(Duration::from_secs(15), || am_alerts(am_port)
            .iter()
            .all(|a| a["status"]["state"] != "active")),
        "the alert did not resolve: {:#?}",
        am_alerts(am_port)
    );
}

#[test]
fn shipped_kubernetes_config_is_valid() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/configmap.yaml")).unwrap();
    let toml: String = text
        .split_once("crosstalk.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The blind-watch rules on a real Prometheus scraping a real crosstalk: a watch and service
/// whose stored last observation is two hours old goes pending (promtool proves the `for:`
/// timing), a live one does not; an expected watch never observed goes pending, a watch never
/// observed and not expected does not. The Isolation row's queries show the live watch.
#[test]
fn blind_watch_rules_fire_and_stay_quiet_on_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[watch]]\nname = \"agent_factory\"\nattribute = \"agent_factory.instance_id\"\nexpected = true\n\
                  [[watch]]\nname = \"db_session\"\nattribute = \"db.session.instance_id\"\n\
                  [[watch]]\nname = \"ws_emitter\"\nattribute = \"websocket.emitter.id\"\nexpected = true\n";
    // A store that saw agent_factory in `billing` two hours ago (as a crosstalk would have
    // recorded it), then a crosstalk restarted on it.
    let mut first = Server::start_in(dir.path(), config);
    first.terminate();
    let two_hours_ago = (now_ns() / 1_000_000_000 - 7200) as i64;
    rusqlite::Connection::open(dir.path().join("data/crosstalk.db"))
        .unwrap()
        .execute(
            "INSERT INTO watch_evidence (watch, service, first_s, last_s) VALUES ('agent_factory', 'billing', ?1, ?1)",
            [two_hours_ago],
        )
        .unwrap();
    let s = Server::start_in(dir.path(), config);
    s.post_traces(&factory_use("alice", "f1", 1));
    s.post_traces(&factory_use("bob", "f2", 2));
    let prom_port = free_port();
    let _prom = start_prometheus(dir.path(), prom_port, s.admin, free_port());
    let alert_of = |name: &str, label: &str, value: &str| {
        let alerts = get(&format!("http://127.0.0.1:{prom_port}/api/v1/alerts")).json();
        alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
            .map(|a| a["state"].as_str().unwrap_or("").to_owned())
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            alert_of("CrosstalkWatchWentBlind", "service", "billing").is_some()
                && alert_of("CrosstalkExpectedWatchNeverObserved", "watch", "ws_emitter").is_some()
        }),
        "the blind-watch rules did not trigger: {}",
        get(&format!("http://127.0.0.1:{prom_port}/api/v1/alerts")).text()
    );
    assert_eq!(
        alert_of("CrosstalkWatchWentBlind", "service", "billing").as_deref(),
        Some("pending")
    );
    assert_eq!(
        alert_of("CrosstalkWatchWentBlind", "service", "agent-backend"),
        None,
        "a live watch is not blind"
    );
    assert_eq!(
        alert_of("CrosstalkExpectedWatchNeverObserved", "watch", "db_session"),
        None,
        "never observed but not expected: reported, not paged"
    );
    assert_eq!(
        alert_of(
            "CrosstalkExpectedWatchNeverObserved",
            "watch",
            "agent_factory"
        ),
        None,
        "observed"
    );
    // The Isolation row shows the live watch: instances, users, max users per instance, last seen.
    let isolation: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .filter(|(_, e)| e.contains("crosstalk_watch_") && !e.contains("count("))
        .collect();
    assert_eq!(isolation.len(), 4, "{isolation:?}");
    for (file, expr) in &isolation {
        let r = promql(prom_port, expr);
        let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(
            result
                .iter()
                .any(|row| row["metric"]["watch"] == "agent_factory"
                    && row["metric"]["service"] == "agent-backend"),
            "{file}: `{expr}` does not show agent_factory in agent-backend: {r}"
        );
    }
}
