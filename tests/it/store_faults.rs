//! The storage directory under faults a real operator meets: a second process started on it,
//! a 0-byte database, a write-ahead log damaged after a crash. Each must be refused loudly
//! (exit 2, naming the file and what to do), never a silent fresh start.

use crate::util::*;

fn config_in(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("crosstalk.toml");
    std::fs::write(&config, config_text(dir, FACTORY_WATCH)).unwrap();
    config
}

#[test]
fn a_second_process_on_one_storage_directory_exits_2_naming_it_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_in(dir.path(), FACTORY_WATCH);
    let (code, stderr) = serve_refused(&config_in(dir.path()));
    assert_eq!(code, Some(2), "{stderr}");
    let data = dir.path().join("data");
    assert!(stderr.contains(&*data.to_string_lossy()), "{stderr}");
    assert!(stderr.contains(&format!("PID {}", first.pid())), "{stderr}");
    // The first process is untouched and still the only writer.
    assert_eq!(first.post_traces(&factory_use("alice", "f", 1)).status, 200);
}

#[test]
fn an_empty_database_is_refused_and_repair_keeps_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("crosstalk.db"), b"").unwrap();
    let config = config_in(dir.path());
    let (code, stderr) = serve_refused(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&*data.join("crosstalk.db").to_string_lossy())
            && stderr.contains("empty")
            && stderr.contains("--repair"),
        "{stderr}"
    );
    let s = Server::start_with_args(dir.path(), &config, &[], &["--repair"]);
    assert_eq!(s.post_traces(&factory_use("alice", "f", 1)).status, 200);
    let kept: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::metadata(kept[0].join("crosstalk.db"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_corrupted_wal_is_refused_and_repair_keeps_the_readable_part() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_in(dir.path(), FACTORY_WATCH);
    // A finding first, then enough commits that the damage lands well before the WAL's end.
    assert_eq!(
        s.post_traces(&factory_use("alice", "shared", 1)).status,
        200
    );
    assert_eq!(s.post_traces(&factory_use("bob", "shared", 2)).status, 200);
    for i in 0..40u128 {
        let r = s.post_traces(&factory_use("carol", &format!("f{i}"), 10 + i));
        assert_eq!(r.status, 200);
    }
    s.kill9();
    let wal_path = data.join("crosstalk.db-wal");
    let mut wal = std::fs::read(&wal_path).unwrap();
    let page = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let frames = (wal.len() - 32) / (24 + page);
    assert!(
        frames > 20,
        "only {frames} WAL frames: nothing to corrupt in the middle"
    );
    let victim = frames * 2 / 3;
    wal[32 + victim * (24 + page) + 24 + page / 2] ^= 0x5a;
    std::fs::write(&wal_path, &wal).unwrap();

    let config = config_in(dir.path());
    let (code, stderr) = serve_refused(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&*wal_path.to_string_lossy()) && stderr.contains("--repair"),
        "{stderr}"
    );

    let s = Server::start_with_args(dir.path(), &config, &[], &["--repair"]);
    let f = s.findings();
    assert_eq!(f.len(), 1, "the finding before the damage is kept: {f:?}");
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
    let kept = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .expect("damaged files kept");
    assert_eq!(std::fs::read(kept.join("crosstalk.db-wal")).unwrap(), wal);
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mount a `size` tmpfs at `at`. A fault test that cannot set up its fault fails.
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (the full-disk test needs root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }

    /// Write a filler file until the file system refuses: the disk is now full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_refuses_exports_until_space_returns_and_loses_no_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("data"), "1m");
    let mut s = Server::start_in(dir.path(), FACTORY_WATCH);
    assert_eq!(s.metric("crosstalk_store_healthy"), 1.0);
    assert_eq!(store_status(&s)["store"], "ok");
    assert_eq!(s.post_traces(&factory_use("alice", "f", 1)).status, 200);
    let committed = store_status(&s)["last_commit_at"].clone();
    assert!(committed.is_string(), "no last commit time: {committed}");

    let filler = disk.fill();
    let conflict = factory_use("bob", "f", 2);
    for attempt in 0..3 {
        let r = s.post_traces(&conflict);
        assert_eq!(
            r.status, 503,
            "attempt {attempt} acknowledged on a full disk"
        );
        assert!(r.header("retry-after").is_some(), "no retry hint");
    }
    assert!(
        s.findings().is_empty(),
        "a finding the store never took: {:?}",
        s.findings()
    );
    assert_eq!(s.metric("crosstalk_store_healthy"), 0.0);
    assert!(s.metric("crosstalk_store_errors_total") >= 3.0);
    let status = store_status(&s);
    assert_eq!(status["store"], "degraded", "{status}");
    let data = dir.path().join("data");
    assert_eq!(
        status["reason"].as_str().unwrap(),
        format!("{}: No space left on device (os error 28)", data.display()),
        "{status}"
    );
    assert!(status["since"].is_string(), "{status}");
    assert!(status["failed_commits"].as_u64().unwrap() >= 3, "{status}");
    assert_eq!(status["last_commit_at"], committed, "{status}");
    // Readiness is a start-up signal: a full disk must not take the application's pod out.
    assert_eq!(get(&s.admin_url("/ready")).status, 200);
    assert_eq!(
        findings_counted(&s),
        0.0,
        "a refused conflict was counted as a finding"
    );
    let log = s.stderr();
    assert!(
        log.contains(&*dir.path().join("data").to_string_lossy())
            && log.contains("No space left on device"),
        "the log names neither the path nor the OS error:\n{log}"
    );

    std::fs::remove_file(filler).unwrap();
    assert_eq!(
        s.post_traces(&conflict).status,
        200,
        "the retry once space returned"
    );
    assert_eq!(s.metric("crosstalk_store_healthy"), 1.0);
    let status = store_status(&s);
    assert_eq!(status["store"], "ok", "{status}");
    assert!(status.get("reason").is_none(), "{status}");
    assert_ne!(status["last_commit_at"], committed, "{status}");
    assert_eq!(
        findings_counted(&s),
        1.0,
        "three refused attempts and one retry of one conflict are one finding"
    );
    s.kill9();
    let s = Server::start_in(dir.path(), FACTORY_WATCH);
    assert_eq!(s.post_traces(&factory_use("bob", "f", 3)).status, 200);
    let f = s.findings();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["users"], serde_json::json!(["alice", "bob"]));
    drop(s);
    drop(disk);
}

/// `GET /api/v1/status`.
fn store_status(s: &Server) -> serde_json::Value {
    let r = get(&s.admin_url("/api/v1/status"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Every `crosstalk_findings_total` series summed (labels vary with the service).
fn findings_counted(s: &Server) -> f64 {
    s.metrics()
        .lines()
        .filter(|l| l.starts_with("crosstalk_findings_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
