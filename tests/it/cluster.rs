//! Global watches across sidecars through a real `redis-server`: one finding per conflict across
//! the cluster, process scope untouched, and a Redis outage that hides nothing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::alerting::free_port;
use crate::util::*;

const WATCHES: &str = "[[watch]]\nname = \"session\"\nattribute = \"session.id\"\npolicy = \"exclusive\"\nscope = \"global\"\n";

struct Redis {
    child: Child,
}

/// `redis-server` on loopback, without persistence: a restart comes back empty.
fn redis_command(port: u16) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null());
    cmd
}

fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server on port {port} did not start");
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = redis_command(port)
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test installs it)");
        let r = Redis { child };
        wait_for_port(port);
        r
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn session_use(
    user: &str,
    session: &str,
    pod: &str,
    trace: u128,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    traces(
        "chat-api",
        pod,
        vec![span(
            trace,
            trace as u64,
            &[
                ("user.id", user),
                ("session.id", session),
                ("agent_factory.instance_id", "f-shared-id"),
            ],
        )],
    )
}

/// Whether `s` reports `crosstalk_cluster_up` as `up` within five seconds.
fn cluster_up_within_5s(s: &Server, up: f64) -> bool {
    s.wait_for(Duration::from_secs(5), |s| {
        (s.metric("crosstalk_cluster_up") == up).then_some(())
    })
    .is_some()
}

fn all_findings(sidecars: &[Server]) -> Vec<serde_json::Value> {
    sidecars.iter().flat_map(|s| s.findings()).collect()
}

fn wait_findings(sidecars: &[Server], n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let f = all_findings(sidecars);
        if f.len() >= n {
            std::thread::sleep(Duration::from_millis(500));
            return all_findings(sidecars);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    all_findings(sidecars)
}

#[test]
fn three_sidecars_one_redis_one_finding_and_an_outage_hides_nothing() {
    let port = free_port();
    let mut redis = Redis::start(port);
    let config = format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\ntimeout = \"300ms\"\n{WATCHES}{FACTORY_WATCH}"
    );
    let sidecars: Vec<Server> = (0..3).map(|_| Server::start(&config)).collect();

    // alice's session on sidecar 1, bob's on sidecar 2, the same session.id.
    assert_eq!(
        sidecars[0]
            .post_traces(&session_use("alice", "sess-1", "pod-1", 1))
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sidecars[1]
            .post_traces(&session_use("bob", "sess-1", "pod-2", 2))
            .status,
        200
    );
    let f = wait_findings(&sidecars, 1);
    assert_eq!(
        f.len(),
        1,
        "exactly one finding across the three sidecars: {f:#?}"
    );
    assert_eq!(f[0]["watch"], "session");
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
    let services: Vec<&str> = f[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["trace_id"].as_str())
        .collect();
    assert!(
        services.contains(&format!("{:032x}", 1u128).as_str())
            && services.contains(&format!("{:032x}", 2u128).as_str()),
        "evidence from both sidecars: {f:#?}"
    );
    // Process scope: the same factory id in three processes is three instances, no finding.
    sidecars[2].post_traces(&session_use("carol", "sess-3", "pod-3", 3));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        all_findings(&sidecars)
            .iter()
            .all(|f| f["watch"] == "session"),
        "process-scoped watch unaffected"
    );
    assert_eq!(sidecars[0].metric("crosstalk_cluster_up"), 1.0);

    // Redis down: alice's second session was recorded before; bob's use during the outage queues.
    sidecars[0].post_traces(&session_use("alice", "sess-2", "pod-1", 4));
    std::thread::sleep(Duration::from_millis(400));
    redis.kill9();
    assert!(cluster_up_within_5s(&sidecars[2], 0.0));
    assert_eq!(
        sidecars[2]
            .post_traces(&session_use("bob", "sess-2", "pod-3", 5))
            .status,
        200,
        "ingest carries on while Redis is down"
    );
    // Process-scoped detection carries on during the outage.
    sidecars[1].post_traces(&traces(
        "chat-api",
        "pod-2",
        vec![span(
            6,
            6,
            &[
                ("user.id", "dave"),
                ("agent_factory.instance_id", "local-f"),
            ],
        )],
    ));
    sidecars[1].post_traces(&traces(
        "chat-api",
        "pod-2",
        vec![span(
            7,
            7,
            &[
                ("user.id", "erin"),
                ("agent_factory.instance_id", "local-f"),
            ],
        )],
    ));
    assert!(
        sidecars[1]
            .findings()
            .iter()
            .any(|f| f["watch"] == "agent_factory")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        all_findings(&sidecars)
            .iter()
            .filter(|f| f["instance"] == "sess-2")
            .count(),
        0
    );
    assert!(sidecars[2].metric("crosstalk_cluster_pending") >= 1.0);

    // Redis back (empty: no persistence): the conflict seen during the outage is found.
    let _redis = Redis::start(port);
    let f = wait_findings(&sidecars, 3);
    let sess2: Vec<_> = f.iter().filter(|f| f["instance"] == "sess-2").collect();
    assert_eq!(sess2.len(), 1, "{f:#?}");
    assert_eq!(sess2[0]["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(
        f.iter().filter(|f| f["instance"] == "sess-1").count(),
        1,
        "the first conflict is not found again"
    );
}

/// A finding's users, sorted (they are listed in the order they were first seen).
fn users_of(f: &serde_json::Value) -> Vec<String> {
    let mut users: Vec<String> = (f["users"].as_array().into_iter().flatten())
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    users.sort();
    users
}

/// Poll every sidecar until each finding of `instances` names `users` (sorted), or time out;
/// the findings of those instances, with the index of the sidecar that lists each.
fn wait_users(
    sidecars: &[Server],
    instances: &[String],
    users: &[&str],
) -> Vec<(usize, serde_json::Value)> {
    let mut found = Vec::new();
    for _ in 0..100 {
        found = (sidecars.iter().enumerate())
            .flat_map(|(i, s)| s.findings().into_iter().map(move |f| (i, f)))
            .filter(|(_, f)| instances.iter().any(|x| f["instance"] == x.as_str()))
            .collect();
        let complete = |f: &serde_json::Value| users_of(f) == users;
        if found.len() >= instances.len() && found.iter().all(|(_, f)| complete(f)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    found
}

#[test]
fn a_third_user_on_another_sidecar_joins_the_owners_finding_and_first_writers_agree() {
    let port = free_port();
    let _redis = Redis::start(port);
    let config = format!("[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\n{WATCHES}");
    let sidecars: Vec<Server> = (0..3).map(|_| Server::start(&config)).collect();

    // Later: alice on sidecar 0, bob on sidecar 1 (1 finds the conflict and owns it), then
    // carol on sidecar 0 and dave on sidecar 2, neither of which owns the instance.
    let uses = [("alice", 0), ("bob", 1), ("carol", 0), ("dave", 2)];
    for (n, (user, at)) in uses.into_iter().enumerate() {
        let pod = format!("pod-{at}");
        let r = sidecars[at].post_traces(&session_use(user, "sess-late", &pod, 100 + n as u128));
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    let late = wait_users(
        &sidecars,
        &["sess-late".into()],
        &["alice", "bob", "carol", "dave"],
    );
    assert_eq!(late.len(), 1, "one finding across the cluster: {late:#?}");
    assert_eq!(
        late[0].0, 1,
        "listed by its owner, the sidecar that found it"
    );
    assert_eq!(
        late[0].1["users"],
        serde_json::json!(["alice", "bob", "carol", "dave"]),
        "users seen by sidecars that do not own the finding are appended: {late:#?}"
    );

    // Concurrent first writers: the first uses of ten sessions arrive on three sidecars at
    // once. Each session is one finding, on one sidecar, naming all three users.
    let sessions: Vec<String> = (0..10).map(|k| format!("sess-{k}")).collect();
    std::thread::scope(|scope| {
        for (i, user) in ["erin", "frank", "grace"].into_iter().enumerate() {
            let (s, sessions) = (&sidecars[i], &sessions);
            scope.spawn(move || {
                let spans = (sessions.iter().enumerate())
                    .map(|(k, sess)| {
                        let trace = 1000 * (i as u128 + 1) + k as u128;
                        span(
                            trace,
                            trace as u64,
                            &[("user.id", user), ("session.id", sess)],
                        )
                    })
                    .collect();
                let r = s.post_traces(&traces("chat-api", &format!("pod-{i}"), spans));
                assert_eq!(r.status, 200);
            });
        }
    });
    let found = wait_users(&sidecars, &sessions, &["erin", "frank", "grace"]);
    assert_eq!(
        found.len(),
        sessions.len(),
        "one finding per session: {found:#?}"
    );
    for (_, f) in &found {
        assert_eq!(users_of(f), ["erin", "frank", "grace"], "{f:#?}");
    }
}

/// Three `redis-server --cluster-enabled` nodes joined by `redis-cli --cluster create`.
struct RedisCluster {
    nodes: Vec<Redis>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let child = redis_command(*port)
                    .current_dir(&node_dir)
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .args(["--cluster-node-timeout", "2000"])
                    .spawn()
                    .unwrap();
                Redis { child }
            })
            .collect();
        for port in &ports {
            wait_for_port(*port);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..100 {
            let info = Command::new("redis-cli")
                .args(["-p", &ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster {
            nodes,
            ports,
            _dir: dir,
        }
    }
}

#[test]
fn redis_cluster_mode_finds_one_conflict_across_sidecars() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes.len(), 3);
    let urls: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}\""))
        .collect();
    let config = format!("[cluster]\nredis_url = [{}]\n{WATCHES}", urls.join(", "));
    let sidecars: Vec<Server> = (0..2).map(|_| Server::start(&config)).collect();
    // Many sessions, so that their keys spread over the three nodes' slots.
    for i in 0..20u128 {
        let session = format!("sess-{i}");
        sidecars[0].post_traces(&session_use("alice", &session, "pod-1", 100 + i));
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20u128 {
        let session = format!("sess-{i}");
        sidecars[1].post_traces(&session_use("bob", &session, "pod-2", 200 + i));
    }
    let f = wait_findings(&sidecars, 20);
    assert_eq!(f.len(), 20, "one finding per shared session: {}", f.len());
    assert!(
        f.iter()
            .all(|f| f["users"] == serde_json::json!(["alice", "bob"]))
    );
}

#[test]
fn after_redis_restarts_empty_a_finding_stays_with_the_sidecar_that_owns_it() {
    let port = free_port();
    let mut redis = Redis::start(port);
    let config = format!(
        "[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\ntimeout = \"300ms\"\n{WATCHES}"
    );
    let sidecars: Vec<Server> = (0..2).map(|_| Server::start(&config)).collect();
    sidecars[0].post_traces(&session_use("alice", "sess-1", "pod-1", 1));
    std::thread::sleep(Duration::from_millis(300));
    sidecars[1].post_traces(&session_use("bob", "sess-1", "pod-2", 2));
    let f = wait_findings(&sidecars, 1);
    assert_eq!(f.len(), 1, "{f:#?}");
    let owner = (0..2)
        .find(|&i| !sidecars[i].findings().is_empty())
        .unwrap();
    let other = 1 - owner;

    redis.kill9();
    for s in &sidecars {
        assert!(cluster_up_within_5s(s, 0.0));
    }
    // Redis comes back empty. The owner reconnects first (an export wakes it; the other waits
    // for its heartbeat), so the other sidecar's replay is the one that meets the conflict: the
    // order in which the finding would change hands if claims were not made again.
    let _redis = Redis::start(port);
    sidecars[owner].post_traces(&session_use("carol", "sess-9", "pod-1", 3));
    assert!(cluster_up_within_5s(&sidecars[other], 1.0));
    std::thread::sleep(Duration::from_millis(1500));
    let holders: Vec<usize> = (0..2)
        .filter(|&i| {
            sidecars[i]
                .findings()
                .iter()
                .any(|f| f["instance"] == "sess-1")
        })
        .collect();
    assert_eq!(
        holders,
        vec![owner],
        "one sidecar, the owner, lists the finding"
    );
}
