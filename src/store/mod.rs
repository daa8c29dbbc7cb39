//! The embedded store: SQLite (WAL) under `[storage] dir`, holding findings, (instance, user)
//! bindings, process scopes and event-file offsets.
//!
//! One writer ([`Store`], owned by the engine thread) commits each group of batches in one
//! transaction before any of them is acknowledged; readers ([`StoreReader`], the findings API)
//! use their own connection and never block it. Schema changes are numbered migrations recorded
//! in `PRAGMA user_version`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::correlate::engine::{
    BindingRow, Effects, FindingRecord, PendingRow, Restored, RestoredScope,
};
use crate::correlate::{Finding, FindingKind};

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
}

/// Numbered migrations; the index + 1 is the schema version it brings.
const MIGRATIONS: &[&str] = &[
    // 1: the first release.
    "CREATE TABLE scopes (
        scope_key TEXT PRIMARY KEY,
        identity  TEXT NOT NULL
     );
     CREATE TABLE bindings (
        watch TEXT NOT NULL, scope_key TEXT NOT NULL, instance TEXT NOT NULL, user TEXT NOT NULL,
        tenant TEXT, first_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL,
        last_start_ns INTEGER NOT NULL, last_end_ns INTEGER NOT NULL,
        trace_id TEXT, span_id TEXT, signal TEXT NOT NULL, evidence_scope_key TEXT NOT NULL,
        PRIMARY KEY (watch, scope_key, instance, user)
     ) WITHOUT ROWID;
     CREATE TABLE findings (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, watch TEXT NOT NULL, scope_key TEXT NOT NULL,
        detected_ns INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL, body TEXT NOT NULL
     );
     CREATE INDEX findings_by_detection ON findings (detected_ns);
     CREATE TABLE file_offsets (
        path TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
        offset INTEGER NOT NULL, updated_ns INTEGER NOT NULL
     );",
    // 2: the durable alert outbox (one row per finding; Alertmanager dedups by labels).
    "CREATE TABLE alert_outbox (
        finding_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,            -- firing | resolved
        due_ns INTEGER NOT NULL,        -- next send attempt
        attempts INTEGER NOT NULL DEFAULT 0,
        last_sent_ns INTEGER
     );
     CREATE INDEX alert_outbox_due ON alert_outbox (due_ns);",
    // 3: observations acknowledged while still waiting for their trace's user.
    "CREATE TABLE pending (
        seq INTEGER PRIMARY KEY,
        received_ns INTEGER NOT NULL,
        body TEXT NOT NULL
     );",
];

/// How far a tailed file has been read and committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

fn open_connection(dir: &Path) -> Result<Connection, StoreError> {
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

/// The writer. Owned by the engine thread.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
    /// Queue an alert for every new or grown finding, in the same transaction.
    alerting: bool,
}

impl Store {
    /// Open (creating and migrating as needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut conn = open_connection(dir)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn,
            dir: dir.to_owned(),
            alerting: false,
        })
    }

    /// Queue alerts for findings from now on (Alertmanager push is configured).
    pub fn with_alerting(mut self) -> Self {
        self.alerting = true;
        self
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A reader on the same database, for the API.
    pub fn reader(&self) -> Result<StoreReader, StoreError> {
        Ok(StoreReader {
            conn: Mutex::new(open_connection(&self.dir)?),
        })
    }

    /// Everything the engine needs to carry on where it stopped.
    pub fn restore(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        let mut stmt = self
            .conn
            .prepare("SELECT scope_key, identity FROM scopes")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (key, identity) = row?;
            let identity: BTreeMap<String, String> = serde_json::from_str(&identity)?;
            restored.scopes.push(RestoredScope {
                scope_key: key,
                identity,
            });
        }
        let mut stmt = self.conn.prepare(
            "SELECT watch, scope_key, instance, user, tenant, first_ns, last_ns, last_start_ns,
                    last_end_ns, trace_id, span_id, signal, evidence_scope_key FROM bindings",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(BindingRow {
                watch: r.get(0)?,
                scope_key: r.get(1)?,
                instance: r.get(2)?,
                user: r.get(3)?,
                tenant: r.get(4)?,
                first_ns: r.get::<_, i64>(5)? as u64,
                last_ns: r.get::<_, i64>(6)? as u64,
                last_start_ns: r.get::<_, i64>(7)? as u64,
                last_end_ns: r.get::<_, i64>(8)? as u64,
                trace_id: r.get(9)?,
                span_id: r.get(10)?,
                signal: r.get(11)?,
                evidence_scope_key: r.get(12)?,
            })
        })?;
        for row in rows {
            restored.bindings.push(row?);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT body, scope_key, detected_ns, last_seen_ns FROM findings")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (body, scope_key, detected, last_seen) = row?;
            restored.findings.push(FindingRecord {
                finding: serde_json::from_str(&body)?,
                scope_key,
                detected_ns: detected as u64,
                last_seen_ns: last_seen as u64,
            });
        }
        let mut stmt = self
            .conn
            .prepare("SELECT seq, received_ns, body FROM pending ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(PendingRow {
                seq: r.get::<_, i64>(0)? as u64,
                received_ns: r.get::<_, i64>(1)? as u64,
                body: r.get(2)?,
            })
        })?;
        for row in rows {
            restored.pending.push(row?);
        }
        Ok(restored)
    }

    /// Committed offsets of tailed files, by path.
    pub fn file_offsets(&self) -> Result<HashMap<String, FileCheckpoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, dev, ino, offset FROM file_offsets")?;
        let rows = stmt.query_map([], |r| {
            Ok(FileCheckpoint {
                path: r.get(0)?,
                dev: r.get::<_, i64>(1)? as u64,
                ino: r.get::<_, i64>(2)? as u64,
                offset: r.get::<_, i64>(3)? as u64,
            })
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let c = row?;
            out.insert(c.path.clone(), c);
        }
        Ok(out)
    }

    /// Make one group of batches durable: their effects and file checkpoints, in one transaction.
    pub fn commit(
        &mut self,
        fx: &Effects,
        checkpoints: &[FileCheckpoint],
        now_ns: u64,
    ) -> Result<(), StoreError> {
        if fx.is_empty() && fx.news.is_empty() && checkpoints.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut scope = tx.prepare_cached(
                "INSERT OR IGNORE INTO scopes (scope_key, identity) VALUES (?1, ?2)",
            )?;
            for s in &fx.scopes {
                scope.execute(params![s.scope_key, s.identity_json])?;
            }
            let mut binding = tx.prepare_cached(
                "INSERT OR REPLACE INTO bindings (watch, scope_key, instance, user, tenant, first_ns,
                    last_ns, last_start_ns, last_end_ns, trace_id, span_id, signal, evidence_scope_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for b in &fx.bindings {
                binding.execute(params![
                    b.watch,
                    b.scope_key,
                    b.instance,
                    b.user,
                    b.tenant,
                    b.first_ns as i64,
                    b.last_ns as i64,
                    b.last_start_ns as i64,
                    b.last_end_ns as i64,
                    b.trace_id,
                    b.span_id,
                    b.signal,
                    b.evidence_scope_key,
                ])?;
            }
            let mut evict = tx.prepare_cached(
                "DELETE FROM bindings WHERE watch = ?1 AND scope_key = ?2 AND instance = ?3",
            )?;
            for e in &fx.evicted {
                evict.execute(params![e.watch, e.scope_key, e.instance])?;
            }
            let mut finding = tx.prepare_cached(
                "INSERT OR REPLACE INTO findings (id, type, watch, scope_key, detected_ns, last_seen_ns, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for r in &fx.findings {
                finding.execute(params![
                    r.finding.id,
                    r.finding.kind.as_str(),
                    r.finding.watch,
                    r.scope_key,
                    r.detected_ns as i64,
                    r.last_seen_ns as i64,
                    serde_json::to_string(&r.finding)?,
                ])?;
            }
            let mut offset = tx.prepare_cached(
                "INSERT OR REPLACE INTO file_offsets (path, dev, ino, offset, updated_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for c in checkpoints {
                offset.execute(params![
                    c.path,
                    c.dev as i64,
                    c.ino as i64,
                    c.offset as i64,
                    now_ns as i64
                ])?;
            }
            let mut park = tx.prepare_cached(
                "INSERT OR REPLACE INTO pending (seq, received_ns, body) VALUES (?1, ?2, ?3)",
            )?;
            for p in &fx.parked {
                park.execute(params![p.seq as i64, p.received_ns as i64, p.body])?;
            }
            let mut unpark = tx.prepare_cached("DELETE FROM pending WHERE seq = ?1")?;
            for seq in &fx.unparked {
                unpark.execute(params![*seq as i64])?;
            }
            if self.alerting {
                // New or grown: send now. Merely used again: re-arm only if it had resolved.
                let mut news = tx.prepare_cached(
                    "INSERT INTO alert_outbox (finding_id, state, due_ns, attempts) VALUES (?1, 'firing', ?2, 0)
                     ON CONFLICT (finding_id) DO UPDATE SET state = 'firing', due_ns = ?2, attempts = 0",
                )?;
                for n in &fx.news {
                    news.execute(params![n.id, now_ns as i64])?;
                }
                let mut rearm = tx.prepare_cached(
                    "UPDATE alert_outbox SET state = 'firing', due_ns = ?2, attempts = 0
                     WHERE finding_id = ?1 AND state = 'resolved'",
                )?;
                for r in &fx.findings {
                    rearm.execute(params![r.finding.id, now_ns as i64])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Which findings to list.
#[derive(Debug, Default, Clone)]
pub struct FindingFilter {
    pub kind: Option<FindingKind>,
    pub watch: Option<String>,
    /// Findings detected or updated at or after this time (Unix ns).
    pub since_ns: Option<u64>,
    pub limit: usize,
    /// Resume after this position (the last finding of the previous page).
    pub after: Option<Cursor>,
}

/// A position in the newest-first order of findings: detection time, then id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub detected_ns: u64,
    pub id: String,
}

/// A read-only view of the store for the findings API.
pub struct StoreReader {
    conn: Mutex<Connection>,
}

impl StoreReader {
    /// Findings matching `filter`, newest first, and the cursor of the last one when more follow.
    pub fn findings(
        &self,
        filter: &FindingFilter,
    ) -> Result<(Vec<Finding>, Option<Cursor>), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT body, detected_ns, id FROM findings
             WHERE (?1 IS NULL OR type = ?1) AND (?2 IS NULL OR watch = ?2)
               AND (?3 IS NULL OR detected_ns >= ?3 OR last_seen_ns >= ?3)
               AND (?5 IS NULL OR detected_ns < ?5 OR (detected_ns = ?5 AND id > ?6))
             ORDER BY detected_ns DESC, id LIMIT ?4",
        )?;
        let after = filter.after.as_ref();
        // One row past the page tells whether a next page exists.
        let rows = stmt.query_map(
            params![
                filter.kind.map(FindingKind::as_str),
                filter.watch,
                filter.since_ns.map(|n| n as i64),
                filter.limit as i64 + 1,
                after.map(|c| c.detected_ns as i64),
                after.map(|c| c.id.as_str()),
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        let mut last = None;
        for row in rows {
            let (body, detected, id) = row?;
            if out.len() == filter.limit {
                return Ok((out, last));
            }
            out.push(serde_json::from_str(&body)?);
            last = Some(Cursor {
                detected_ns: detected as u64,
                id,
            });
        }
        Ok((out, None))
    }

    /// One finding by id.
    pub fn finding(&self, id: &str) -> Result<Option<Finding>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let body: Option<String> = conn
            .query_row("SELECT body FROM findings WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(match body {
            Some(b) => Some(serde_json::from_str(&b)?),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let v: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn offsets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let c = FileCheckpoint {
            path: "/x".into(),
            dev: 1,
            ino: 2,
            offset: 3,
        };
        store
            .commit(&Effects::default(), std::slice::from_ref(&c), 5)
            .unwrap();
        assert_eq!(store.file_offsets().unwrap()["/x"], c);
    }
}
