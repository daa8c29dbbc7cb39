//! Durability and bounds: acknowledged state survives kill -9, restart never re-finds, the
//! tracked-instance cap holds under a flood, SIGTERM under load exits cleanly within the grace.

use std::time::{Duration, Instant};

use crate::util::*;

/// Trials of the kill -9 loop; `scripts/stress-kill9` runs it with 100.
fn trials() -> usize {
    std::env::var("CROSSTALK_KILL9_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn acknowledged_binding_survives_kill_9_every_time() {
    let n = trials();
    let mut survived = 0;
    for trial in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let factory = format!("factory-{trial}");
        let mut s = Server::start_in(dir.path(), FACTORY_WATCH);
        let r = s.post_traces(&factory_use("alice", &factory, 1));
        assert_eq!(r.status, 200);
        s.kill9();
        let s = Server::start_in(dir.path(), FACTORY_WATCH);
        assert_eq!(s.post_traces(&factory_use("bob", &factory, 2)).status, 200);
        let f = s.findings();
        if f.len() == 1 && f[0]["users"] == serde_json::json!(["alice", "bob"]) {
            survived += 1;
        }
    }
    println!("kill -9 trials: survived {survived}/{n}");
    assert_eq!(survived, n);
}

#[test]
fn an_instance_found_before_a_restart_is_not_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), FACTORY_WATCH);
    s.post_traces(&factory_use("alice", "f", 1));
    s.post_traces(&factory_use("bob", "f", 2));
    assert_eq!(s.findings().len(), 1);
    s.kill9();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    assert_eq!(get(&s.admin_url("/ready")).status, 200);
    assert_eq!(s.findings().len(), 1, "findings are restored");
    s.post_traces(&factory_use("alice", "f", 3));
    s.post_traces(&factory_use("carol", "f", 4));
    let f = s.findings();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob", "carol"]));
    let found = s.metric(r#"crosstalk_findings_total{type="shared_instance",watch="agent_factory",service="agent-backend"}"#);
    assert_eq!(found, 0.0, "no new finding was raised after the restart");
}

#[test]
fn flood_of_unique_ids_never_tracks_more_than_the_cap() {
    let cap = 100_000;
    let per_request = 5_000;
    let requests = 400; // 2,000,000 unique instance ids
    let s = Server::start(&format!(
        "[limits]\nmax_tracked_instances = {cap}\n{FACTORY_WATCH}"
    ));
    let mut max_seen = 0.0f64;
    for r in 0..requests {
        let spans = (0..per_request)
            .map(|i| {
                let id = format!("f{r:04}-{i:05}");
                span(
                    (r * per_request + i) as u128 + 1,
                    1,
                    &[("user.id", "u"), ("agent_factory.instance_id", &id)],
                )
            })
            .collect();
        let reply = s.post_traces(&traces("svc", "p", spans));
        assert_eq!(reply.status, 200, "{}", reply.text());
        if r % 20 == 0 || r == requests - 1 {
            let tracked = s.metric(r#"crosstalk_tracked_instances{watch="agent_factory"}"#);
            assert!(tracked <= cap as f64, "tracked {tracked} > cap {cap}");
            max_seen = max_seen.max(tracked);
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_owned()
    };
    println!(
        "flood: {} unique ids, cap {cap}: peak {} / now {}",
        requests * per_request,
        field("VmHWM"),
        field("VmRSS")
    );
    let evicted = s.metric(r#"crosstalk_evicted_total{watch="agent_factory",reason="capacity"}"#);
    let tracked = s.metric(r#"crosstalk_tracked_instances{watch="agent_factory"}"#);
    assert_eq!(
        evicted + tracked,
        (requests * per_request) as f64,
        "every instance is tracked or counted as evicted"
    );
    assert!(
        max_seen > (cap / 2) as f64,
        "the cap was actually reached: {max_seen}"
    );
}

#[test]
fn sigterm_under_load_exits_0_within_the_grace() {
    let mut s = Server::start(&format!("[shutdown]\ngrace = \"3s\"\n{FACTORY_WATCH}"));
    let url = s.http_url("/v1/traces");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|t| {
            let url = url.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                use prost::Message;
                let mut i = 0u128;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let req = factory_use("alice", &format!("f{t}-{i}"), i + 1);
                    // Refused connections are expected once the listener closes.
                    let _ = std::panic::catch_unwind(|| {
                        post(
                            &url,
                            &[("content-type", "application/x-protobuf")],
                            &req.encode_to_vec(),
                        )
                    });
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, took) = s.terminate();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    assert_eq!(status.code(), Some(0), "{}", s.stderr());
    assert!(
        took < Duration::from_secs(3) + Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    assert!(s.stderr().contains("stopped"));
}

#[test]
fn overload_through_the_real_sdk_exporter_answers_503_and_loses_nothing() {
    // A one-batch queue: concurrent exports must find it full.
    let s = Server::start(&format!("[limits]\nqueue_capacity = 1\n{FACTORY_WATCH}"));
    let out = std::process::Command::new(python())
        .arg(e2e_script("overload.py"))
        .args([
            "--endpoint",
            &format!("http://{}", s.http),
            "--threads",
            "16",
            "--batches",
            "6",
            "--batch-size",
            "512",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total = summary["spans"].as_f64().unwrap();
    assert_eq!(summary["exported"].as_f64(), Some(total));
    let m = s.metrics();
    let refused = metric_value(
        &m,
        r#"crosstalk_rejected_total{source="otlp_http",reason="queue_full"}"#,
    );
    println!("overload: {total} spans, {refused} exports answered 503 while the queue was full");
    assert!(
        refused > 0.0,
        "the queue never filled: the test proved nothing"
    );
    assert!(metric_value(&m, r#"crosstalk_queue_full_total{queue="ingest"}"#) >= refused);
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_received_total{signal="traces",transport="http"}"#
        ),
        total,
        "every span counted exactly once"
    );
    assert_eq!(
        metric_value(&m, r#"crosstalk_tracked_instances{watch="agent_factory"}"#),
        total,
        "every span's binding made it"
    );
}

#[test]
fn span_still_waiting_for_its_trace_user_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[attribution]\nwait = \"30s\"\n{FACTORY_WATCH}");
    let mut s = Server::start_in(dir.path(), &config);
    // The factory span arrives first, without a user; its root span has not been exported yet.
    let child = traces(
        "agent-backend",
        "pod-1",
        vec![span(1, 11, &[("agent_factory.instance_id", "f")])],
    );
    assert_eq!(s.post_traces(&child).status, 200);
    s.kill9();
    let s = Server::start_in(dir.path(), &config);
    let root = traces(
        "agent-backend",
        "pod-1",
        vec![span(1, 10, &[("user.id", "alice")])],
    );
    assert_eq!(s.post_traces(&root).status, 200);
    assert_eq!(s.post_traces(&factory_use("bob", "f", 2)).status, 200);
    let f = s.findings();
    assert_eq!(
        f.len(),
        1,
        "the acknowledged span was kept across the crash"
    );
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
}

/// Two users bound to one instance in the store with no finding row (a process that crashed
/// between binding and judging, or an older release wrote it): judged again at start-up.
#[test]
fn conflicting_bindings_already_in_the_store_become_a_finding_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), FACTORY_WATCH);
    assert_eq!(s.post_traces(&factory_use("alice", "f", 1)).status, 200);
    s.terminate();
    let db = rusqlite::Connection::open(dir.path().join("data/crosstalk.db")).unwrap();
    let n = db
        .execute(
            "INSERT INTO bindings SELECT watch, scope, instance, 'bob', tenant, first_ns + 1,
                last_ns + 1, last_start_ns + 1, last_end_ns + 1, trace_id, span_id, signal,
                evidence_scope FROM bindings WHERE user = 'alice'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let findings: i64 = db
        .query_row("SELECT count(*) FROM findings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(findings, 0);
    drop(db);
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    let f = s
        .wait_for(Duration::from_secs(5), |s| {
            let f = s.findings();
            (!f.is_empty()).then_some(f)
        })
        .expect("no finding after the restart");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(s.metric(r#"crosstalk_findings_total{type="shared_instance",watch="agent_factory",service="agent-backend"}"#), 1.0);
}
