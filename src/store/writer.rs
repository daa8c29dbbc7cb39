//! The writer: one connection owned by the engine thread, committing each group of batches'
//! [`Effects`] (and queuing their alerts) in one transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::wal::Checkpointer;
use super::{
    FileCheckpoint, Outbox, StoreError, StoreHealth, StoreReader, Triage, guard, open_connection,
    schema,
};
use crate::correlate::engine::Effects;

/// The writer. Owned by the engine thread.
pub struct Store {
    pub(super) conn: Connection,
    /// Declared after `conn`: it ends once the connection (holding its wake channel) is gone.
    _checkpointer: Checkpointer,
    dir: PathBuf,
    /// Held as long as the writer lives: one process per storage directory.
    _lock: guard::DirLock,
    /// Queue an alert for every new or grown finding, in the same transaction.
    alerting: bool,
    /// What the last attempted commit said, for `/api/v1/status` and the health gauge.
    health: Arc<StoreHealth>,
}

impl Store {
    /// Open (creating and migrating as needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let lock = guard::DirLock::acquire(dir)?;
        guard::check_files(dir)?;
        let mut conn = open_connection(dir).map_err(|e| guard::damaged_if_corrupt(dir, e))?;
        guard::quick_check(&conn).map_err(|what| StoreError::Damaged {
            file: dir.join(guard::DB_FILE),
            what,
        })?;
        schema::migrate(&mut conn)?;
        let checkpointer = Checkpointer::start(dir, &mut conn)?;
        Ok(Store {
            conn,
            _checkpointer: checkpointer,
            dir: dir.to_owned(),
            _lock: lock,
            alerting: false,
            health: Arc::new(StoreHealth::new(dir)),
        })
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether commits succeed, shared with the admin API.
    pub fn health(&self) -> Arc<StoreHealth> {
        self.health.clone()
    }

    /// Queue alerts for findings from now on (Alertmanager push is configured).
    pub fn with_alerting(mut self) -> Self {
        self.alerting = true;
        self
    }

    /// A reader on the same database, for the API.
    pub fn reader(&self) -> Result<StoreReader, StoreError> {
        Ok(StoreReader {
            conn: Mutex::new(open_connection(&self.dir)?),
        })
    }

    /// Acknowledging and resolving findings, on its own connection, for the API.
    pub fn triage(&self) -> Result<Triage, StoreError> {
        Ok(Triage::new(open_connection(&self.dir)?))
    }

    /// The alert outbox on its own connection, for the alert sender.
    pub fn outbox(&self) -> Result<Outbox, StoreError> {
        Ok(Outbox::new(open_connection(&self.dir)?))
    }

    /// Make one group of batches durable: their effects and file checkpoints, in one transaction.
    /// The outcome of every attempted commit is recorded in [`Self::health`].
    pub fn commit(
        &mut self,
        fx: &Effects,
        checkpoints: &[FileCheckpoint],
        now_ns: u64,
    ) -> Result<(), StoreError> {
        if fx.is_empty() && fx.news.is_empty() && checkpoints.is_empty() {
            return Ok(());
        }
        let result = self.write(fx, checkpoints, now_ns);
        match &result {
            Ok(()) => self.health.committed(now_ns),
            Err(e) => self.health.failed(e, now_ns),
        }
        result
    }

    fn write(
        &mut self,
        fx: &Effects,
        checkpoints: &[FileCheckpoint],
        now_ns: u64,
    ) -> Result<(), StoreError> {
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
            let (mut trace_hex, mut span_hex) = ([0u8; 32], [0u8; 16]);
            for b in &fx.bindings {
                let trace_id = b.trace_id.map(|t| hex_str(&t.0, &mut trace_hex));
                let span_id = b.span_id.map(|s| hex_str(&s.0, &mut span_hex));
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
                    trace_id,
                    span_id,
                    b.signal.as_str(),
                    b.evidence_scope_key,
                ])?;
            }
            let mut evict = tx.prepare_cached(
                "DELETE FROM bindings WHERE watch = ?1 AND scope_key = ?2 AND instance = ?3",
            )?;
            for e in &fx.evicted {
                evict.execute(params![e.watch, e.scope_key, e.instance])?;
            }
            // An upsert, not a replace: the triage columns belong to the API.
            let mut finding = tx.prepare_cached(
                "INSERT INTO findings (id, type, watch, scope_key, detected_ns, last_seen_ns, body,
                    users)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET type = excluded.type, watch = excluded.watch,
                    scope_key = excluded.scope_key, detected_ns = excluded.detected_ns,
                    last_seen_ns = excluded.last_seen_ns, body = excluded.body,
                    users = excluded.users",
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
                    r.users.to_bytes(),
                ])?;
            }
            // Past the findings retention: the finding, its triage state and its alert go.
            let mut expire = tx.prepare_cached("DELETE FROM findings WHERE id = ?1")?;
            let mut expire_alert =
                tx.prepare_cached("DELETE FROM alert_outbox WHERE finding_id = ?1")?;
            for id in &fx.expired_findings {
                expire.execute(params![id])?;
                expire_alert.execute(params![id])?;
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
            let mut seen = tx.prepare_cached(
                "INSERT INTO watch_evidence (watch, service, first_s, last_s) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (watch, service) DO UPDATE
                 SET first_s = min(first_s, ?3), last_s = max(last_s, ?4)",
            )?;
            for e in &fx.evidence {
                seen.execute(params![
                    e.watch,
                    e.service,
                    e.first_s as i64,
                    e.last_s as i64
                ])?;
            }
            // A user the finding did not list reopens a resolved one (before its alert is queued).
            let mut reopen = tx.prepare_cached(
                "UPDATE findings SET state = 'open', state_by = 'crosstalk', state_ns = ?2,
                    state_note = 'reopened: a user it did not list'
                 WHERE id = ?1 AND state = 'resolved'",
            )?;
            for n in fx.news.iter().filter(|n| n.users > 0) {
                reopen.execute(params![n.id, now_ns as i64])?;
            }
            if self.alerting {
                // New or grown: send now. Merely used again: re-arm only if it had resolved.
                // Only open findings alert: acknowledged and resolved ones stay silent.
                let mut news = tx.prepare_cached(
                    "INSERT INTO alert_outbox (finding_id, state, due_ns, attempts)
                     SELECT ?1, 'firing', ?2, 0 WHERE EXISTS
                        (SELECT 1 FROM findings WHERE id = ?1 AND state = 'open')
                     ON CONFLICT (finding_id) DO UPDATE SET state = 'firing', due_ns = ?2, attempts = 0",
                )?;
                for n in &fx.news {
                    news.execute(params![n.id, now_ns as i64])?;
                }
                let mut rearm = tx.prepare_cached(
                    "UPDATE alert_outbox SET state = 'firing', due_ns = ?2, attempts = 0
                     WHERE finding_id = ?1 AND state = 'resolved' AND EXISTS
                        (SELECT 1 FROM findings WHERE id = ?1 AND state = 'open')",
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

/// `bytes` as lowercase hex in `buf` (twice as long), without allocating.
fn hex_str<'a>(bytes: &[u8], buf: &'a mut [u8]) -> &'a str {
    let out = &mut buf[..bytes.len() * 2];
    // Cannot fail: `out` is exactly twice as long as `bytes`, and hex digits are ASCII.
    let _ = hex::encode_to_slice(bytes, out);
    std::str::from_utf8(out).unwrap_or_default()
}
