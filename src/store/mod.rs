//! The embedded store: SQLite (WAL) under `[storage] dir`, holding findings, (instance, user)
//! bindings, process scopes, event-file offsets, waiting observations and the alert outbox.
//! The only owner of SQL in crosstalk.
//!
//! - [`schema`]: numbered migrations;
//! - [`writer`]: [`Store`], owned by the engine thread, commits each group of batches in one
//!   transaction before any of them is acknowledged;
//! - [`reader`]: restore at start-up and [`StoreReader`] for the findings API (own connection);
//! - [`outbox`]: [`Outbox`], the alert sender's view of due alerts (own connection);
//! - [`health`]: [`StoreHealth`], whether commits succeed (`/api/v1/status`);
//! - [`triage`]: [`Triage`], people acknowledging and resolving findings (own connection);
//! - [`guard`]: the directory lock and the integrity check before the writer opens (`--repair`).

pub mod guard;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

mod health;
mod outbox;
mod reader;
mod schema;
mod triage;
mod wal;
mod writer;

pub use health::{StoreHealth, StoreStatus};
pub use outbox::{AlertState, Due, DueAlert, Outbox, Settled};
pub use reader::{Cursor, FindingFilter, StoreReader};
pub use triage::{StateRequest, Triage, Triaged};
pub use writer::Store;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create storage directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store holds a finding that cannot be read: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("store schema version {found} is newer than this crosstalk understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "storage directory {} is in use by another crosstalk process ({}); stop it, or give this \
         one its own [storage] dir", dir.display(),
        pid.map_or("PID unknown".to_owned(), |p| format!("PID {p}"))
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error(
        "store file {} is damaged: {what}. crosstalk will not start on it (that would silently \
         lose acknowledged data). Run `crosstalk serve --repair` to keep a copy of the damaged \
         files in a damaged-<time>/ folder of the storage directory and carry on with what can \
         still be read, or restore the storage directory from a backup", file.display()
    )]
    Damaged { file: PathBuf, what: String },
}

impl StoreError {
    /// The operating system's error behind a failed write, when SQLite tells which: it reports
    /// ENOSPC as `SQLITE_FULL`.
    pub fn os_error(&self) -> Option<std::io::Error> {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DiskFull =>
            {
                Some(rustix::io::Errno::NOSPC.into())
            }
            StoreError::Io { source, .. } | StoreError::Dir { source, .. } => {
                Some(std::io::Error::new(source.kind(), source.to_string()))
            }
            _ => None,
        }
    }
}

/// How far a tailed file has been read and committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

pub(super) fn open_connection(dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let conn = Connection::open(dir.join("crosstalk.db"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL + NORMAL: a commit survives the process being killed (the WAL is in the OS's
    // hands); only a power loss may take the last transactions.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;
