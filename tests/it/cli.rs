//! The command line: config verbs and exit codes.

use std::process::Command;

use crate::util::BIN;

#[test]
fn config_default_prints_a_config_that_checks() {
    let out = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("session.id"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn config_check_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[watch]]\nname = \"f\"\nattribute = \"a\"\nscope = \"galaxy\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("watch[0].scope") && err.contains("galaxy"),
        "{err}"
    );

    std::fs::write(&path, "[listen]\nadmn = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admn"));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN)
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_argument_of_check_run_and_user_hash_has_help_text() {
    for (verb, args) in [
        ("check", &["--config", "FILES", "--format"][..]),
        ("run", &["--config", "--format", "--grace", "COMMAND"][..]),
        ("user-hash", &["--config", "<ID>"][..]),
    ] {
        let out = Command::new(BIN).args([verb, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for arg in args {
            // clap prints an argument with no help as its name alone on the line.
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(arg) || l.contains(&format!("<{arg}>")))
                .unwrap_or_else(|| panic!("{verb} --help does not list {arg}:\n{help}"));
            let words = line.split_whitespace().count();
            assert!(words > 2, "{verb}: `{line}` has no help text:\n{help}");
        }
    }
}

/// Backticked paths in a document, relative to the repository root or to the document.
fn doc_paths(doc: &str) -> Vec<String> {
    const ROOTS: [&str; 9] = [
        "../",
        "tests/",
        "deploy/",
        "dashboards/",
        "scripts/",
        "src/",
        "benches/",
        "fuzz/",
        "clients/",
    ];
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| ROOTS.iter().any(|r| t.starts_with(r)) && !t.contains(' '))
        .map(str::to_owned)
        .collect()
}

#[test]
fn readmes_refer_only_to_files_inside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    for doc in ["README.md", "deploy/README.md"] {
        let path = root.join(doc);
        let base = path.parent().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let paths = doc_paths(&text);
        assert!(!paths.is_empty(), "{doc}: no paths found");
        for p in paths {
            // Relative to the document when it says `../`, else to the repository root.
            let target = if p.starts_with("../") {
                base.join(&p)
            } else {
                root.join(&p)
            };
            let resolved = target
                .canonicalize()
                .unwrap_or_else(|e| panic!("{doc}: `{p}` does not exist for a clone ({e})"));
            assert!(
                resolved.starts_with(&root),
                "{doc}: `{p}` is outside the repository"
            );
        }
    }
}

#[test]
fn readme_shows_the_grpc_exporter_import_for_port_4317() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let grpc = "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter";
    let at = text
        .find(grpc)
        .expect("README shows the gRPC exporter import");
    assert!(
        text[at..].lines().take(3).any(|l| l.contains(":4317")),
        "next to port 4317"
    );
}

#[test]
fn user_hash_without_the_sidecars_key_refuses_instead_of_inventing_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, crate::util::config_text(dir.path(), "")).unwrap();
    let out = Command::new(BIN)
        .args(["user-hash", "--config"])
        .arg(&config)
        .arg("alice")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "printed a pseudonym matching no alert"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no HMAC key at") && err.contains("hmac.key"),
        "{err}"
    );
    assert!(
        !dir.path().join("data/hmac.key").exists(),
        "a key was generated"
    );

    // Once the sidecar has run, its key is read, and the same pseudonym comes back every time.
    let mut s = crate::util::Server::start_with_config(dir.path(), &config, &[]);
    s.terminate();
    let hash = || {
        let out = Command::new(BIN)
            .args(["user-hash", "--config"])
            .arg(&config)
            .arg("alice")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = hash();
    assert!(first.starts_with("u_"), "{first}");
    assert_eq!(first, hash());
}

/// Defect 4: a node id file that cannot be written is reported as what it is, not as a bind
/// error on the admin address.
#[test]
fn unwritable_node_id_is_reported_as_such_not_as_a_bind_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: reading and writing it both fail.
    std::fs::create_dir_all(dir.path().join("data/node.id")).unwrap();
    let config = dir.path().join("c.toml");
    let cluster = "[cluster]\nredis_url = \"redis://127.0.0.1:1\"\n";
    std::fs::write(&config, crate::util::config_text(dir.path(), cluster)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node id") && err.contains("node.id"), "{err}");
    assert!(!err.contains("cannot listen"), "{err}");
}
