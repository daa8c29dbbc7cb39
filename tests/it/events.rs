//! WebSocket event logs: the file tail (rotation, truncation, partial lines, kill -9 and resume)
//! and `POST /v1/events`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

const EMITTER_WATCH: &str = "[[watch]]\nname = \"emitter\"\nattribute = \"emitter_id\"\npolicy = \"exclusive\"\nscope = \"process\"\n";
const RECEIVED_FILE: &str = r#"crosstalk_received_total{signal="events",transport="file"}"#;
const TRACKED: &str = r#"crosstalk_tracked_instances{watch="emitter"}"#;

fn tail_config(log: &Path) -> String {
    format!(
        "[events]\nfiles = [\"{}\"]\npoll_interval = \"20ms\"\n{EMITTER_WATCH}",
        log.display()
    )
}

/// One event line of a fixed length (ids are zero-padded), its own emitter, the same user.
fn line(n: usize) -> String {
    format!(
        "{{\"time\":\"2026-01-01T00:00:00Z\",\"event\":\"agent_thinking\",\"user_id\":\"alice\",\"connection_id\":\"c1\",\"connection_user_id\":\"alice\",\"emitter_id\":\"e{n:08}\"}}\n"
    )
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
}

fn lines(range: std::ops::Range<usize>) -> String {
    range.map(line).collect()
}

fn wait_metric(s: &Server, sample: &str, want: f64) -> f64 {
    s.wait_for(Duration::from_secs(10), |s| {
        let v = s.metric(sample);
        (v >= want).then_some(v)
    })
    .unwrap_or_else(|| s.metric(sample))
}

#[test]
fn rotation_by_rename_and_by_copytruncate_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ws-events.jsonl");
    append(&log, &lines(0..100));
    let s = Server::start_in(dir.path(), &tail_config(&log));
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 100.0), 100.0);

    // Rename-and-create: the tail finishes the old file, then follows the new one.
    append(&log, &lines(100..150));
    std::fs::rename(&log, dir.path().join("ws-events.jsonl.1")).unwrap();
    append(&log, &lines(150..200));
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 200.0), 200.0);

    // Copytruncate: copy away, truncate in place, keep appending.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::copy(&log, dir.path().join("ws-events.jsonl.2")).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    append(&log, &lines(200..230));
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 230.0), 230.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.metric(RECEIVED_FILE), 230.0, "no line counted twice");
    assert_eq!(s.metric(TRACKED), 230.0, "every line's emitter is tracked");
}

#[test]
fn partial_last_line_waits_for_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    append(&log, &lines(0..3));
    let s = Server::start_in(dir.path(), &tail_config(&log));
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 3.0), 3.0);
    let whole = line(3);
    let (a, b) = whole.split_at(40);
    append(&log, a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.metric(RECEIVED_FILE), 3.0, "half a line is not a line");
    assert_eq!(
        s.metric(r#"crosstalk_rejected_total{source="events_file",reason="invalid_json"}"#),
        0.0
    );
    append(&log, b);
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 4.0), 4.0);
    assert_eq!(s.metric(TRACKED), 4.0);
}

#[test]
fn bad_lines_are_counted_and_skipped_and_the_tail_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let huge = format!(
        "{{\"user_id\":\"a\",\"pad\":\"{}\"}}\n",
        "x".repeat(3 << 20)
    );
    let text = format!(
        "{}not json\n[1,2,3]\n{{\"event\":\"no user\"}}\n{huge}{}",
        line(0),
        line(1)
    );
    append(&log, &text);
    let s = Server::start_in(
        dir.path(),
        &format!(
            "[events]\nmax_line_bytes = 65536\n{}",
            tail_config(&log).replace("[events]\n", "")
        ),
    );
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 2.0), 2.0);
    let m = s.metrics();
    for reason in [
        "invalid_json",
        "not_an_object",
        "missing_user",
        "line_too_long",
    ] {
        let sample =
            format!("crosstalk_rejected_total{{source=\"events_file\",reason=\"{reason}\"}}");
        assert_eq!(metric_value(&m, &sample), 1.0, "{reason}");
    }
    append(&log, &line(2));
    assert_eq!(wait_metric(&s, RECEIVED_FILE, 3.0), 3.0);
}

#[test]
fn kill_9_in_the_middle_of_a_file_then_restart_counts_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let total = 20_000;
    let line_len = line(0).len() as u64;
    append(&log, &lines(0..total));
    let config = tail_config(&log);
    let mut s = Server::start_in(dir.path(), &config);
    // Kill as soon as some, but not all, of the file is in.
    let seen = wait_metric(&s, RECEIVED_FILE, 1.0);
    s.kill9();
    assert!(seen >= 1.0);

    let db = rusqlite::Connection::open(dir.path().join("data/crosstalk.db")).unwrap();
    let offset: i64 = db
        .query_row("SELECT offset FROM file_offsets", [], |r| r.get(0))
        .unwrap();
    drop(db);
    let offset = offset as u64;
    assert_eq!(
        offset % line_len,
        0,
        "a checkpoint never falls inside a line"
    );
    let committed = (offset / line_len) as usize;
    assert!(
        committed < total,
        "killed in the middle ({committed} of {total})"
    );

    let s = Server::start_in(dir.path(), &config);
    let remaining = (total - committed) as f64;
    assert_eq!(wait_metric(&s, RECEIVED_FILE, remaining), remaining);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.metric(RECEIVED_FILE),
        remaining,
        "lines before the checkpoint are not read again"
    );
    assert_eq!(
        s.metric(TRACKED),
        total as f64,
        "no line lost: every emitter is bound"
    );
}

#[test]
fn post_events_counts_match_the_counters() {
    let s = Server::start(EMITTER_WATCH);
    let body = format!(
        "{}{}not json\n{{\"event\":\"x\"}}\n\n{}\n{{\"user_id\":\"a\",\"time\":-1}}\n",
        line(0),
        line(1),
        "[1]"
    );
    let r = s.post("/v1/events", "application/x-ndjson", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["accepted"], 2);
    assert_eq!(j["rejected"], 4);
    assert_eq!(j["reasons"]["invalid_json"], 1);
    assert_eq!(j["errors"][0]["line"], 3);
    let m = s.metrics();
    assert_eq!(
        metric_value(
            &m,
            r#"crosstalk_received_total{signal="events",transport="http"}"#
        ),
        2.0
    );
    let rejected: f64 = ["invalid_json", "missing_user", "not_an_object", "bad_time"]
        .iter()
        .map(|r| {
            metric_value(
                &m,
                &format!("crosstalk_rejected_total{{source=\"events_http\",reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(rejected, 4.0);

    // A JSON array works too.
    let arr = format!("[{}, {}]", line(5).trim(), "{\"nouser\":1}");
    let j = s
        .post("/v1/events", "application/json", arr.as_bytes())
        .json();
    assert_eq!(
        (j["accepted"].as_u64(), j["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(s.post("/v1/events", "image/png", b"x").status, 415);
}

#[test]
fn misdelivered_event_over_http_names_both_users_and_the_connection() {
    let s = Server::start("");
    let ev = |user: &str, conn_user: &str, event: &str| {
        format!(
            "{{\"time\":1767225600,\"event\":\"{event}\",\"user_id\":\"{user}\",\"connection_id\":\"conn-b\",\"connection_user_id\":\"{conn_user}\",\"run_id\":\"run-7\",\"service.name\":\"agent-backend\"}}\n"
        )
    };
    let body = [
        ev("bob", "bob", "agent_started"),
        ev("alice", "bob", "agent_thinking"),
        ev("alice", "bob", "tool_executing"),
    ]
    .concat();
    assert_eq!(
        s.post("/v1/events", "application/x-ndjson", body.as_bytes())
            .status,
        200
    );
    let f = s.findings();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["type"], "misdelivered_event");
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(f[0]["instance"], "conn-b");
    let e = &f[0]["evidence"][0];
    assert_eq!(e["connection_id"], "conn-b");
    assert_eq!(e["event"], "agent_thinking");
    assert_eq!(e["run_id"], "run-7");
    assert_eq!(s.metric(r#"crosstalk_findings_total{type="misdelivered_event",watch="event_delivery",service="agent-backend"}"#), 1.0);
}
