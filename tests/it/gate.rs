//! The CI gate: `crosstalk check` on Collector-style files and event logs, and
//! `crosstalk run -- CMD` with the Python model of the seeds' backend.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::util::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(args: &[&str]) -> Output {
    Command::new(BIN).arg("check").args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn collector_file_with_a_leak_exits_1_and_names_the_users() {
    let leak = fixture("collector-leak.jsonl");
    let out = check(&[leak.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("shared_instance") && text.contains("agent_factory"),
        "{text}"
    );
    assert!(text.contains("user-1, user-2, user-3"), "{text}");

    let out = check(&["--format", "json", leak.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["findings"].as_array().unwrap().len(), 1);
    assert_eq!(
        j["findings"][0]["users"],
        serde_json::json!(["user-1", "user-2", "user-3"])
    );
    assert_eq!(j["findings"][0]["instance"], "5f0c2e");
}

#[test]
fn collector_file_without_a_leak_exits_0() {
    let out = check(&[fixture("collector-clean.jsonl").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("no cross-user leaks"));
}

#[test]
fn check_shows_progress_on_a_terminal_and_nothing_extra_in_a_pipe() {
    let file = fixture("collector-clean.jsonl");
    let size = std::fs::metadata(&file).unwrap().len();
    let total = indicatif::HumanBytes(size).to_string();

    // Without the harness's own CROSSTALK_* variables, which crosstalk warns about on stderr.
    let clean_env = |c: &mut Command| {
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("CROSSTALK_")) {
            c.env_remove(name);
        }
    };
    let mut piped = Command::new(BIN);
    piped.arg("check").arg(&file);
    clean_env(&mut piped);
    let piped = piped.output().unwrap();
    assert_eq!(piped.status.code(), Some(0));
    assert!(
        piped.stderr.is_empty(),
        "stderr of a piped check: {}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(!stdout(&piped).contains(&total), "{}", stdout(&piped));

    // `script` gives the command a pseudo-terminal, as an engineer's shell would.
    let command = format!("{BIN} check {}", file.display());
    let mut tty = Command::new("script");
    tty.args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null());
    clean_env(&mut tty);
    let tty = tty
        .output()
        .expect("script(1) from util-linux runs the check on a pseudo-terminal");
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains(&format!("/{total}")),
        "no progress bar over {total} on the terminal: {screen:?}"
    );
    assert!(screen.contains("no cross-user leaks"), "{screen}");
}

#[test]
fn malformed_file_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(fixture("collector-clean.jsonl")).unwrap();
    std::fs::write(&bad, format!("{good}{{\"resourceSpans\": [truncated\n")).unwrap();
    let out = check(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", bad.display())), "{err}");
    let missing = check(&["/nonexistent/file.jsonl"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn gzip_and_stdin_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("leak.jsonl.gz");
    std::fs::write(
        &gz,
        gzip(&std::fs::read(fixture("collector-leak.jsonl")).unwrap()),
    )
    .unwrap();
    assert_eq!(check(&[gz.to_str().unwrap()]).status.code(), Some(1));

    let mut child = Command::new(BIN)
        .args(["check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(fixture("collector-leak.jsonl")).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn event_log_with_a_misdelivery_is_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ws.jsonl");
    std::fs::write(&log, "{\"time\":1,\"event\":\"agent_started\",\"user_id\":\"a\",\"connection_id\":\"c\",\"connection_user_id\":\"b\"}\n").unwrap();
    let out = check(&["--format", "json", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["findings"][0]["type"], "misdelivered_event");
}

/// The JUnit report, read back by Python's XML parser (a real one, not string matching).
#[test]
fn junit_report_parses_with_one_failed_case_per_finding() {
    let out = check(&[
        "--format",
        "junit",
        fixture("collector-leak.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let parse = "import sys, xml.etree.ElementTree as ET\nroot = ET.fromstring(sys.stdin.buffer.read())\n\
                 cases = root.findall('.//testcase')\nfailed = [c for c in cases if c.find('failure') is not None]\n\
                 print(root.tag, root.get('failures'), len(cases), len(failed), failed[0].find('failure').get('type') if failed else '-')";
    let mut py = Command::new("python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(parsed.status.success(), "invalid XML:\n{}", stdout(&out));
    assert_eq!(stdout(&parsed).trim(), "testsuites 1 1 1 shared_instance");

    let clean = check(&[
        "--format",
        "junit",
        fixture("collector-clean.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(clean.status.code(), Some(0));
    assert!(stdout(&clean).contains("failures=\"0\""));
}

fn run_backend_under_crosstalk(mode: &str) -> Output {
    Command::new(BIN)
        .args(["run", "--grace", "1s", "--"])
        .arg(python())
        .arg(e2e_script("seeds_backend.py"))
        .args(["--mode", mode, "--users", "5", "--requests-per-user", "2"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .output()
        .unwrap()
}

#[test]
fn run_fails_the_build_on_the_singleton_and_passes_the_per_request_fix() {
    let out = run_backend_under_crosstalk("singleton");
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("spans_exported=20"),
        "the SDK found crosstalk through the environment: {text}"
    );
    assert!(
        text.contains("1 cross-user leak(s) found") && text.contains("users=5"),
        "{text}"
    );

    let out = run_backend_under_crosstalk("per-request");
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("no cross-user leaks"));
}

#[test]
fn run_passes_on_the_commands_own_failure() {
    let out = Command::new(BIN)
        .args(["run", "--grace", "0s", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
}

fn proto_example(name: &str) -> String {
    fixture(&format!("opentelemetry-proto/{name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn official_otlp_json_examples_pass_check_as_whole_documents() {
    for name in ["trace.json", "logs.json", "events.json", "metrics.json"] {
        let out = check(&[&proto_example(name)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn pretty_printed_documents_with_a_leak_are_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let pretty = dir.path().join("leak.json");
    let docs: Vec<String> = std::fs::read_to_string(fixture("collector-leak.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::to_string_pretty(&v).unwrap()
        })
        .collect();
    assert!(docs.len() > 1);
    std::fs::write(&pretty, docs.join("\n")).unwrap();
    let out = check(&[pretty.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("user-1, user-2, user-3"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn input_that_is_neither_json_lines_nor_a_document_says_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "trace of a leak, see ticket 42\n").unwrap();
    let out = check(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":1:") && err.contains("expected OTLP JSON"),
        "{err}"
    );
    // A document cut short is named at the line where JSON broke off.
    let cut = dir.path().join("cut.json");
    let trace = std::fs::read_to_string(proto_example("trace.json")).unwrap();
    std::fs::write(&cut, &trace[..trace.len() / 2]).unwrap();
    let out = check(&[cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected OTLP JSON"), "{err}");
}
