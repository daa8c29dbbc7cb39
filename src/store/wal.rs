//! WAL checkpoints on a thread of their own, so that copying committed pages into the database
//! (and the fsyncs that go with it) never runs on the engine thread between two group commits.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! committing connection: the engine would wait for the copy and both fsyncs before it could
//! acknowledge the group or judge the next one. Here the writer's WAL hook only wakes the
//! checkpointer (a bounded channel of one: a wake already pending covers this commit too), and
//! the checkpointer runs a PASSIVE checkpoint on its own connection while the engine goes on.
//! Durability is unchanged: a commit is durable once in the WAL (`synchronous=NORMAL`), whoever
//! checkpoints it later. Should the WAL still outgrow [`WAL_HARD_PAGES`] (a checkpointer that
//! cannot keep up with a writer that never pauses), the writer checkpoints inline as SQLite
//! would, so the WAL stays bounded.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::{Connection, wal::CheckpointMode};

use super::{StoreError, open_connection};

/// WAL pages after which the checkpointer is woken (SQLite's own default threshold).
const WAL_WAKE_PAGES: i32 = 1000;
/// WAL pages after which the writer checkpoints itself (about 64 MiB at 4 KiB pages).
const WAL_HARD_PAGES: i32 = 16 * WAL_WAKE_PAGES;
/// What the WAL file is cut back to when it restarts after a burst.
const WAL_KEPT_BYTES: i64 = 16 << 20;

/// The checkpointer thread. It ends when the writer's connection (whose WAL hook holds the only
/// waking end) is dropped; dropping this waits for it, so that its connection is closed before
/// the storage directory's lock is released.
pub(super) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Start a checkpointer for the database in `dir` and hand the writer's WAL to it.
    pub(super) fn start(dir: &Path, writer: &mut Connection) -> Result<Self, StoreError> {
        let conn = open_connection(dir)?;
        let (wake, woken): (SyncSender<()>, _) = sync_channel(1);
        // After a burst the WAL file shrinks back to this when it next restarts (it is reused,
        // not truncated, otherwise).
        writer.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
        // Replaces SQLite's automatic checkpoint on this connection (it is a WAL hook too).
        writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages >= WAL_HARD_PAGES {
                // Best effort, as SQLite's own: the commit has succeeded whatever this says.
                let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
            } else if pages >= WAL_WAKE_PAGES {
                match wake.try_send(()) {
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Disconnected(())) => {
                        let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
                    }
                }
            }
            Ok(())
        }))?;
        let thread = std::thread::Builder::new()
            .name("crosstalk-wal".into())
            .spawn(move || run(conn, woken))
            .map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Checkpointer {
            thread: Some(thread),
        })
    }
}

fn run(conn: Connection, woken: Receiver<()>) {
    while woken.recv().is_ok() {
        if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            // A full disk fails the writer's commits too, and those are what is reported.
            tracing::debug!(error = %e, "WAL checkpoint failed; the next wake tries again");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::WAL_WAKE_PAGES;
    use crate::correlate::engine::{BindingRow, Effects};
    use crate::normalize::Signal;
    use crate::store::{Store, guard};

    fn bindings(from: usize, n: usize) -> Effects {
        let row = |i: usize| BindingRow {
            watch: "agent_factory".into(),
            scope_key: "service.name=api".into(),
            instance: format!("factory-{i:09}"),
            user: format!("user-{i:09}"),
            tenant: None,
            first_ns: 1,
            last_ns: 2,
            last_start_ns: 1,
            last_end_ns: 2,
            trace_id: None,
            span_id: None,
            signal: Signal::Span,
            evidence_scope_key: "service.name=api".into(),
        };
        Effects {
            bindings: (from..from + n).map(row).collect(),
            ..Effects::default()
        }
    }

    /// The writer no longer checkpoints inside its commits below the hard bound: the
    /// checkpointer thread must copy a WAL past the wake threshold into the database soon after,
    /// or the WAL would grow to the hard bound first.
    #[test]
    fn a_wal_past_the_wake_threshold_is_copied_into_the_database_by_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let size = |file: &str| std::fs::metadata(dir.path().join(file)).map_or(0, |m| m.len());
        let empty = size(guard::DB_FILE);
        let wake_bytes = WAL_WAKE_PAGES as u64 * 4096;
        let mut written = 0;
        while size(guard::WAL_FILE) < 2 * wake_bytes {
            store.commit(&bindings(written, 2000), &[], 3).unwrap();
            written += 2000;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while size(guard::DB_FILE) < empty + wake_bytes / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            size(guard::DB_FILE) >= empty + wake_bytes / 2,
            "{written} bindings committed, WAL {} bytes, yet the database is still {} bytes",
            size(guard::WAL_FILE),
            size(guard::DB_FILE)
        );
    }
}
