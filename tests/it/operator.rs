//! The operator's first hour (issue 18): no false page from the shipped rules, metrics that real
//! Prometheus tools accept, admin API typos counted apart, and paging through findings.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::alerting::{free_port, promql, repo, start_prometheus, wait_until};
use crate::util::*;

/// `promtool` with `stdin`, returning (success, stdout + stderr).
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A promtool rule test feeding every sample of a real scrape, held for 15 minutes, to the
/// shipped rules, and expecting `alerts` of `alertname` at minute 10.
fn rule_test_from_scrape(
    dir: &std::path::Path,
    scrape: &str,
    alertname: &str,
    alerts: &str,
) -> (bool, String) {
    let mut series = String::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let labelled = match sample.strip_suffix('}') {
            Some(s) => format!("{s},job=\"crosstalk\",instance=\"pod-a:9477\"}}"),
            None => format!("{sample}{{job=\"crosstalk\",instance=\"pod-a:9477\"}}"),
        };
        series.push_str(&format!(
            "      - series: '{labelled}'\n        values: '{value}x15'\n"
        ));
    }
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}\
         \x20   alert_rule_test:\n      - eval_time: 10m\n        alertname: {alertname}\n        exp_alerts: {alerts}\n",
        repo("deploy/prometheus/crosstalk-rules.yml").display()
    );
    let path = dir.join(format!("{alertname}.test.yml"));
    std::fs::write(&path, test).unwrap();
    promtool(&["test", "rules", path.to_str().unwrap()], "")
}

/// The alert a sidecar on `pod-a:9477` whose Redis is unreachable raises.
const CLUSTER_DOWN_ON_POD_A: &str = r#"
          - exp_labels: {severity: warning, job: crosstalk, instance: "pod-a:9477"}
            exp_annotations:
              summary: "crosstalk on pod-a:9477 lost its cluster coordination (Redis)"
              description: "crosstalk on pod-a:9477 has been unable to reach its Redis coordination for 2 minutes. Each replica still checks what it sees itself, but leaks that span several replicas may go undetected meanwhile."
              runbook_url: "https://github.com/crosstalk-dev/crosstalk/blob/main/deploy/README.md#other-alerts""#;

#[test]
fn cluster_down_alert_stays_silent_on_a_sidecar_without_cluster() {
    let single = Server::start(FACTORY_WATCH);
    let scrape = single.metrics();
    assert!(!scrape.contains("crosstalk_cluster_up"), "{scrape}");
    let (ok, out) = rule_test_from_scrape(&single.dir, &scrape, "CrosstalkClusterDown", "[]");
    assert!(ok, "CrosstalkClusterDown fired without [cluster]:\n{out}");

    // The same harness does see the alert when a configured Redis is unreachable, so the
    // silence above is the rule's and the metric's doing, not a blind test.
    let dead = free_port();
    let clustered = Server::start(&format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{dead}\"\ntimeout = \"200ms\"\n{FACTORY_WATCH}"
    ));
    let scrape = clustered.metrics();
    assert_eq!(
        metric_value(&scrape, "crosstalk_cluster_up"),
        0.0,
        "{scrape}"
    );
    let (ok, out) = rule_test_from_scrape(
        &clustered.dir,
        &scrape,
        "CrosstalkClusterDown",
        CLUSTER_DOWN_ON_POD_A,
    );
    assert!(
        ok,
        "CrosstalkClusterDown did not fire with Redis down:\n{out}"
    );
}

#[test]
fn text_exposition_passes_promtool_and_openmetrics_scrapes_into_prometheus_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    // A refused admin request, so that family has a sample on the page too.
    let _ = get(&s.admin_url("/api/v1/findings?limit=none"));

    let plain = get_with(&s.admin_url("/metrics"), &[("accept", "text/plain")]);
    assert!(
        plain
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = plain.text();
    assert!(text.contains("crosstalk_findings_total{"), "{text}");
    let (ok, out) = promtool(&["check", "metrics"], &text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics (text):\n{out}"
    );

    // promtool's linter reads only the 0.0.4 text format (exemplars are a parse error to it),
    // so the OpenMetrics page is checked by Prometheus itself: it negotiates OpenMetrics, and a
    // page it cannot parse leaves `up` at 0 and no metadata.
    let om = get_with(
        &s.admin_url("/metrics"),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert!(om.text().ends_with("# EOF\n"));
    let prom_port = free_port();
    let _prom = start_prometheus(dir.path(), prom_port, s.admin, free_port());
    let scraped = wait_until(Duration::from_secs(30), || {
        promql(prom_port, "crosstalk_findings_total")["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    assert!(scraped, "Prometheus did not ingest the OpenMetrics page");
    let meta = get(&format!(
        "http://127.0.0.1:{prom_port}/api/v1/targets/metadata?metric=crosstalk_findings"
    ))
    .json();
    let entry = &meta["data"][0];
    assert_eq!(entry["type"], "counter", "{meta}");
    assert!(
        entry["help"]
            .as_str()
            .unwrap()
            .starts_with("Findings raised"),
        "{meta}"
    );
}

#[test]
fn admin_api_typos_are_counted_apart_from_rejected_input() {
    let s = Server::start(FACTORY_WATCH);
    for query in ["?limit=many", "?colour=red", "?since=whenever"] {
        let r = get(&s.admin_url(&format!("/api/v1/findings{query}")));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
    }
    assert_eq!(get(&s.admin_url("/api/v1/nothing")).status, 404);
    let m = s.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_admin_bad_requests_total{reason="bad_query"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_admin_bad_requests_total{reason="not_found"}"#
        ),
        1.0
    );
    // Exported at zero from start; none may have moved.
    let rejected = m
        .lines()
        .filter(|l| l.starts_with("crosstalk_rejected_total{"))
        .filter(|l| !l.ends_with(" 0"));
    assert_eq!(rejected.count(), 0, "{m}");
}

#[test]
fn findings_page_with_a_next_cursor_and_bad_limits_are_400() {
    let s = Server::start(FACTORY_WATCH);
    for f in 0..5u128 {
        s.post_traces(&factory_use("alice", &format!("f{f}"), 100 + 2 * f));
        s.post_traces(&factory_use("bob", &format!("f{f}"), 101 + 2 * f));
    }
    for bad in ["0", "-1", "10001", "two"] {
        let r = get(&s.admin_url(&format!("/api/v1/findings?limit={bad}")));
        assert_eq!(r.status, 400, "limit={bad}: {}", r.text());
    }
    assert_eq!(
        get(&s.admin_url("/api/v1/findings?cursor=forged")).status,
        400
    );

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = get(&s.admin_url(&format!("/api/v1/findings{query}"))).json();
        pages += 1;
        let items = page["findings"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|f| f["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let all: Vec<String> = s
        .findings()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all.len(), 5);
    assert_eq!(seen, all, "pages in order, none twice, none missing");
}

#[test]
fn partial_success_names_the_attribute_and_every_reason() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message;
    let s = Server::start(FACTORY_WATCH);
    let long = "x".repeat(300);
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
                &[("user.id", "al\0ice"), ("agent_factory.instance_id", "f")],
            ),
            span(
                3,
                3,
                &[("user.id", "alice"), ("agent_factory.instance_id", "f")],
            ),
        ],
    );
    let r = s.post_traces(&req);
    assert_eq!(r.status, 200, "{}", r.text());
    let partial = ExportTraceServiceResponse::decode(&r.body[..])
        .unwrap()
        .partial_success
        .expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    let msg = partial.error_message;
    assert!(
        msg.contains(
            "1 id_too_long: span attribute `agent_factory.instance_id` longer than 256 bytes"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("1 control_chars_in_id: span attribute `user.id` holds control characters"),
        "{msg}"
    );
}

/// The Python SDK's OTLP metric exporter over `protocol`, against `endpoint`.
fn export_metrics_with_python(protocol: &str, endpoint: &str) -> (bool, String) {
    let out = Command::new(python())
        .arg(e2e_script("metrics_exporter.py"))
        .args(["--protocol", protocol, "--endpoint", endpoint])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sdk_metrics_over_http_and_grpc_are_accepted_and_counted_as_discarded() {
    let s = Server::start(FACTORY_WATCH);
    let (ok, out) = export_metrics_with_python("http", &format!("http://{}", s.http));
    assert!(ok, "OTLP/HTTP metrics export failed: {out}");
    let (ok, out) = export_metrics_with_python("grpc", &format!("http://{}", s.grpc));
    assert!(ok, "OTLP/gRPC metrics export failed: {out}");
    let discarded = r#"crosstalk_discarded_total{signal="metrics"}"#;
    assert_eq!(s.metric(discarded), 6.0, "three data points per export");

    // The official example, and a body that is not a metrics export at all.
    let example = std::fs::read(repo("tests/fixtures/opentelemetry-proto/metrics.json")).unwrap();
    let r = s.post("/v1/metrics", "application/json", &example);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s.metric(discarded) > 6.0);
    let r = s.post("/v1/metrics", "application/x-protobuf", b"\xff\xff\xff");
    assert_eq!(r.status, 400);
}

#[test]
fn official_example_traces_and_logs_are_accepted_over_http() {
    let s = Server::start(FACTORY_WATCH);
    for (path, file) in [
        ("/v1/traces", "trace.json"),
        ("/v1/logs", "logs.json"),
        ("/v1/logs", "events.json"),
    ] {
        let body =
            std::fs::read(repo(&format!("tests/fixtures/opentelemetry-proto/{file}"))).unwrap();
        let r = s.post(path, "application/json", &body);
        assert_eq!(r.status, 200, "{file}: {}", r.text());
    }
}

#[test]
fn detection_delay_runs_from_receipt_of_the_conflicting_span_to_the_committed_finding() {
    let s = Server::start(&format!("[attribution]\nwait = \"5s\"\n{FACTORY_WATCH}"));
    s.post_traces(&factory_use("alice", "f", 1));
    // Bob's use of the factory arrives without a user and waits for its trace's root span.
    let child = traces(
        "agent-backend",
        "pod-1",
        vec![span(2, 2, &[("agent_factory.instance_id", "f")])],
    );
    assert_eq!(s.post_traces(&child).status, 200);
    std::thread::sleep(Duration::from_millis(400));
    assert!(s.findings().is_empty());
    let root = traces(
        "agent-backend",
        "pod-1",
        vec![span(2, 1, &[("user.id", "bob")])],
    );
    assert_eq!(s.post_traces(&root).status, 200);
    let found = s.wait_for(Duration::from_secs(5), |s| {
        (!s.findings().is_empty()).then_some(())
    });
    assert!(found.is_some(), "no finding");
    let m = s.metrics();
    assert_eq!(
        metric_value(&m, "crosstalk_detection_delay_seconds_count"),
        1.0,
        "{m}"
    );
    let sum = metric_value(&m, "crosstalk_detection_delay_seconds_sum");
    assert!(
        (0.4..5.0).contains(&sum),
        "delay {sum}s: the wait for bob's root span counts"
    );
}

/// `crosstalk serve ARGS` with `env`, until its ready line: the child and the bound addresses.
fn serve_ready(
    args: &[&str],
    env: &[(&str, &str)],
) -> (crate::alerting::Proc, serde_json::Value, std::path::PathBuf) {
    use std::io::BufRead;
    let log = tempfile::NamedTempFile::new()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env_remove("CROSSTALK_CONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "not ready ({e}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (crate::alerting::Proc(child), ready, log)
}

fn config_check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["config", "check"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn a_file_that_only_moves_the_ports_keeps_the_default_watches() {
    let dir = tempfile::tempdir().unwrap();
    let ports_only = dir.path().join("ports.toml");
    std::fs::write(&ports_only, config_text(dir.path(), "")).unwrap();
    let out = config_check(&ports_only);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok (4 watches)"), "{text}");
    assert!(
        text.contains("agent_factory = agent_factory.instance_id"),
        "{text}"
    );
    assert!(text.contains("the defaults"), "{text}");

    // And serve really watches them: the default agent_factory watch finds the leak.
    let s = Server::start_with_config(dir.path(), &ports_only, &[]);
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    let found = s.findings();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["watch"], "agent_factory");
    drop(s); // the storage directory is locked while it runs

    // `watch = []` is the explicit way to watch nothing, and it is said out loud.
    let none = dir.path().join("none.toml");
    std::fs::write(
        &none,
        format!("watch = []\n{}", config_text(dir.path(), "")),
    )
    .unwrap();
    let out = config_check(&none);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (0 watches)"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is watched"));
    let (_p, _ready, log) = serve_ready(&["--config", none.to_str().unwrap()], &[]);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("NOTHING IS WATCHED"), "{stderr}");
}

#[test]
fn flags_beat_environment_beats_file_for_listeners_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let [file_port, env_port, flag_port] = [free_port(), free_port(), free_port()];
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\notlp_grpc = \"127.0.0.1:0\"\notlp_http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:{file_port}\"\n\
             [storage]\ndir = \"{}\"\n",
            dir.path().join("file-data").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let env_admin = format!("127.0.0.1:{env_port}");
    let env_data = dir.path().join("env-data");
    let env = [
        ("CROSSTALK_LISTEN_ADMIN", env_admin.as_str()),
        ("CROSSTALK_STORAGE_DIR", env_data.to_str().unwrap()),
        ("CROSSTALK_NO_SUCH_KEY", "1"),
    ];
    let admin_of = |ready: &serde_json::Value| ready["admin"].as_str().unwrap().to_owned();

    let (p, ready, _) = serve_ready(&["--config", cfg], &[]);
    assert_eq!(admin_of(&ready), format!("127.0.0.1:{file_port}"));
    drop(p);
    let (p, ready, log) = serve_ready(&["--config", cfg], &env);
    assert_eq!(admin_of(&ready), env_admin);
    assert!(
        env_data.join("crosstalk.db").exists(),
        "CROSSTALK_STORAGE_DIR not used"
    );
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("CROSSTALK_NO_SUCH_KEY"),
        "unknown variable not warned: {stderr}"
    );
    drop(p);
    let flag_admin = format!("127.0.0.1:{flag_port}");
    let flag_data = dir.path().join("flag-data");
    let (p, ready, _) = serve_ready(
        &[
            "--config",
            cfg,
            "--admin",
            &flag_admin,
            "--storage-dir",
            flag_data.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(admin_of(&ready), flag_admin);
    assert!(
        flag_data.join("crosstalk.db").exists(),
        "--storage-dir not used"
    );
    drop(p);
    // No --config: CROSSTALK_CONFIG names the file.
    let (_p, ready, _) = serve_ready(&[], &[("CROSSTALK_CONFIG", cfg)]);
    assert_eq!(admin_of(&ready), format!("127.0.0.1:{file_port}"));
}

#[test]
fn config_check_refuses_two_listeners_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for listen in [
        "otlp_grpc = \"127.0.0.1:4317\"\notlp_http = \"127.0.0.1:4317\"",
        "otlp_http = \"0.0.0.0:9477\"\nadmin = \"127.0.0.1:9477\"",
    ] {
        std::fs::write(&path, format!("[listen]\n{listen}\n")).unwrap();
        let out = config_check(&path);
        assert_eq!(out.status.code(), Some(2), "{listen}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("collides with"), "{err}");
    }
    // Port 0 twice is fine: each listener gets its own free port.
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    assert_eq!(config_check(&path).status.code(), Some(0));
}
