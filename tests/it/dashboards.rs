//! Dashboards against Grafana's published types: every `dashboards/*.json` must type-check as
//! `@grafana/schema`'s `Dashboard` under `tsc` (tests/dashboards/check.mjs), and a deliberately
//! broken dashboard must not. The real-Prometheus query check lives in `alerting.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn checker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboards")
}

/// Run the checker; a missing node or npm install is a failure, never a skip.
fn type_check(files: &[PathBuf]) -> Output {
    let dir = checker_dir();
    assert!(
        dir.join("node_modules/@grafana/schema/package.json")
            .exists()
            && dir.join("node_modules/typescript/bin/tsc").exists(),
        "@grafana/schema and typescript are not installed in {}: run scripts/test \
         (it runs `npm ci` there)",
        dir.display()
    );
    Command::new("node")
        .arg(dir.join("check.mjs"))
        .args(files)
        .current_dir(&dir)
        .output()
        .expect("running node (scripts/test installs nodejs): is it on PATH?")
}

#[test]
fn shipped_dashboards_type_check_as_grafana_dashboards() {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
    files.sort();
    assert!(files.len() >= 2, "dashboards missing: {files:?}");
    let out = type_check(&files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dashboard type check failed:\n{text}");
    for f in &files {
        assert!(
            text.contains(&*f.to_string_lossy()),
            "{f:?} not checked:\n{text}"
        );
    }
}

#[test]
fn a_broken_dashboard_fails_the_type_check() {
    let broken = checker_dir().join("fixtures/broken-dashboard.json");
    let out = type_check(std::slice::from_ref(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "broken fixture passed:\n{stderr}"
    );
    // Both planted faults are named with the fixture's own line numbers.
    assert!(
        stderr.contains("broken-dashboard.json(10,")
            && stderr.contains("not assignable to type 'number'"),
        "gridPos.w as a string not reported:\n{stderr}"
    );
    assert!(
        stderr.contains("broken-dashboard.json(13,") && stderr.contains("\"absolut\""),
        "unknown thresholds mode not reported:\n{stderr}"
    );
}
