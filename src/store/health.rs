//! Whether the store takes writes, as `GET /api/v1/status` and `crosstalk_store_healthy` tell
//! the operator: ok, or degraded since when, why (the path and the OS error), and when a commit
//! last succeeded.
//!
//! Invariants: only a commit that was attempted moves the state (an idle tick with nothing to
//! write proves nothing about the disk); `since` is the first failure of the current degraded
//! run and is cleared by the next successful commit.

use parking_lot::Mutex;
use serde::Serialize;

use super::StoreError;
use crate::correlate::finding::rfc3339;

/// The store's health, shared between the writer (engine thread) and the admin API.
#[derive(Debug)]
pub struct StoreHealth {
    dir: std::path::PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone)]
struct State {
    /// Set while degraded: (first failure ns, reason).
    degraded: Option<(u64, String)>,
    last_commit_ns: Option<u64>,
    last_error_ns: Option<u64>,
    /// Failed commits in the current degraded run.
    failed_commits: u64,
}

/// The body of `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `ok` or `degraded`.
    pub store: &'static str,
    /// `<path>: <OS error>` of the last failed commit, while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339: the first failed commit of this degraded run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339: the last failed commit, while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// Commits refused since `since` (every batch in them was answered 503 / `UNAVAILABLE`).
    pub failed_commits: u64,
    /// RFC 3339: the last commit that succeeded since start (null before the first).
    pub last_commit_at: Option<String>,
    /// The storage directory.
    pub dir: String,
}

impl StoreHealth {
    /// Healthy until a commit in `dir` fails.
    pub fn new(dir: &std::path::Path) -> Self {
        StoreHealth {
            dir: dir.to_owned(),
            state: Mutex::default(),
        }
    }

    /// A commit succeeded at `now_ns`.
    pub fn committed(&self, now_ns: u64) {
        let mut s = self.state.lock();
        s.degraded = None;
        s.failed_commits = 0;
        s.last_commit_ns = Some(now_ns);
    }

    /// A commit failed at `now_ns` with `error`.
    pub fn failed(&self, error: &StoreError, now_ns: u64) {
        let why = error
            .os_error()
            .map_or_else(|| error.to_string(), |e| e.to_string());
        let reason = format!("{}: {why}", self.dir.display());
        let mut s = self.state.lock();
        let since = s.degraded.as_ref().map_or(now_ns, |(t, _)| *t);
        s.degraded = Some((since, reason));
        s.failed_commits += 1;
        s.last_error_ns = Some(now_ns);
    }

    /// True unless the last attempted commit failed.
    pub fn is_ok(&self) -> bool {
        self.state.lock().degraded.is_none()
    }

    /// What `/api/v1/status` shows.
    pub fn status(&self) -> StoreStatus {
        let s = self.state.lock().clone();
        let degraded = s.degraded.is_some();
        let (since, reason) = s.degraded.map(|(t, r)| (rfc3339(t), r)).unzip();
        StoreStatus {
            store: if degraded { "degraded" } else { "ok" },
            reason,
            since,
            last_error_at: s.last_error_ns.filter(|_| degraded).map(rfc3339),
            failed_commits: s.failed_commits,
            last_commit_at: s.last_commit_ns.map(rfc3339),
            dir: self.dir.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_keeps_its_first_failure_and_a_commit_clears_it() {
        let h = StoreHealth::new(std::path::Path::new("/data"));
        assert_eq!(h.status().store, "ok");
        let full = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ));
        h.failed(&full, 1_000_000_000);
        h.failed(&full, 2_000_000_000);
        let s = h.status();
        assert_eq!(s.store, "degraded");
        assert_eq!(s.since.as_deref(), Some("1970-01-01T00:00:01Z"));
        assert_eq!(s.last_error_at.as_deref(), Some("1970-01-01T00:00:02Z"));
        assert_eq!(s.failed_commits, 2);
        let reason = s.reason.unwrap();
        assert!(
            reason.starts_with("/data: No space left on device"),
            "{reason}"
        );
        assert!(!h.is_ok());
        h.committed(3_000_000_000);
        let s = h.status();
        assert_eq!((s.store, s.reason, s.since), ("ok", None, None));
        assert_eq!(s.last_commit_at.as_deref(), Some("1970-01-01T00:00:03Z"));
    }
}
