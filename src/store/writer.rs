//! The writer: one connection owned by the engine thread, committing each group of batches'
//! [`Effects`] (and queuing their alerts) in one transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::wal::Checkpointer;
use super::{
    FileCheckpoint, Outbox, StoreError, StoreHealth, StoreReader, Triage, guard, open_connection,
    schema,
};
use crate::correlate::engine::{BindingRow, Effects};

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
    /// Every committed scope's id by its key (scopes are few: one per process).
    scope_ids: HashMap<Box<str>, i64>,
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
        let scope_ids = scope_ids(&conn)?;
        Ok(Store {
            scope_ids,
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
        // Scope ids this transaction creates are only known once it commits.
        let mut staged = Vec::new();
        let tx = self.conn.transaction()?;
        {
            let mut ids = ScopeIds {
                known: &self.scope_ids,
                staged: &mut staged,
            };
            for s in &fx.scopes {
                ids.store(&tx, &s.scope_key, &s.identity_json)?;
            }
            // Full groups of rows share one statement; the rest go one by one.
            let mut many = tx.prepare_cached(&INSERT_BINDINGS.0)?;
            let mut one = tx.prepare_cached(&INSERT_BINDINGS.1)?;
            let mut groups = fx.bindings.chunks_exact(ROWS_PER_INSERT);
            for group in &mut groups {
                for (i, b) in group.iter().enumerate() {
                    let scopes = ids.binding_scopes(&tx, b)?;
                    bind_binding(&mut many, i * BINDING_COLUMNS, b, scopes)?;
                }
                many.raw_execute()?;
            }
            for b in groups.remainder() {
                let scopes = ids.binding_scopes(&tx, b)?;
                bind_binding(&mut one, 0, b, scopes)?;
                one.raw_execute()?;
            }
            let mut evict = tx.prepare_cached(
                "DELETE FROM bindings WHERE watch = ?1 AND scope = ?2 AND instance = ?3",
            )?;
            for e in &fx.evicted {
                // A scope never stored has no bindings to delete.
                if let Some(scope) = ids.stored(&tx, &e.scope_key)? {
                    evict.execute(params![e.watch, scope, e.instance])?;
                }
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
        self.scope_ids.extend(staged);
        Ok(())
    }
}

/// Binding rows per INSERT statement: a per-request service writes a row per request, and a
/// statement's fixed cost (stepping, halting, resetting) is then shared by this many.
const ROWS_PER_INSERT: usize = 32;
const BINDING_COLUMNS: usize = 13;

/// The binding INSERT for [`ROWS_PER_INSERT`] rows, and for one.
static INSERT_BINDINGS: LazyLock<(String, String)> =
    LazyLock::new(|| (insert_bindings(ROWS_PER_INSERT), insert_bindings(1)));

fn insert_bindings(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR REPLACE INTO bindings (watch, scope, instance, user, tenant, first_ns, last_ns,
            last_start_ns, last_end_ns, trace_id, span_id, signal, evidence_scope) VALUES ",
    );
    for row in 0..rows {
        let params: Vec<String> = (1..=BINDING_COLUMNS)
            .map(|c| format!("?{}", row * BINDING_COLUMNS + c))
            .collect();
        sql.push_str(if row == 0 { "(" } else { ", (" });
        sql.push_str(&params.join(", "));
        sql.push(')');
    }
    sql
}

/// Bind `b`'s columns after the first `at` parameters, with its scope and evidence scope ids.
fn bind_binding(
    stmt: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    b: &BindingRow,
    (scope, evidence_scope): (i64, i64),
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at + 1, &b.watch)?;
    stmt.raw_bind_parameter(at + 2, scope)?;
    stmt.raw_bind_parameter(at + 3, &b.instance)?;
    stmt.raw_bind_parameter(at + 4, &b.user)?;
    stmt.raw_bind_parameter(at + 5, &b.tenant)?;
    stmt.raw_bind_parameter(at + 6, b.first_ns as i64)?;
    stmt.raw_bind_parameter(at + 7, b.last_ns as i64)?;
    stmt.raw_bind_parameter(at + 8, b.last_start_ns as i64)?;
    stmt.raw_bind_parameter(at + 9, b.last_end_ns as i64)?;
    stmt.raw_bind_parameter(at + 10, b.trace_id.as_ref().map(|t| &t.0[..]))?;
    stmt.raw_bind_parameter(at + 11, b.span_id.as_ref().map(|s| &s.0[..]))?;
    stmt.raw_bind_parameter(at + 12, b.signal.as_str())?;
    stmt.raw_bind_parameter(at + 13, evidence_scope)
}

/// Every stored scope's id by its key, read once at open: a binding row names its scope by id.
fn scope_ids(conn: &Connection) -> Result<HashMap<Box<str>, i64>, StoreError> {
    let mut stmt = conn.prepare("SELECT scope_key, id FROM scopes")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?.into(), r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Scope ids during one transaction: the committed ones, and those it adds (kept apart until
/// it commits, so that a refused commit leaves no id behind that the database does not have).
struct ScopeIds<'a> {
    known: &'a HashMap<Box<str>, i64>,
    staged: &'a mut Vec<(Box<str>, i64)>,
}

impl ScopeIds<'_> {
    /// Store a scope (its identity replaces a placeholder) and learn its id.
    fn store(&mut self, tx: &Transaction<'_>, key: &str, identity: &str) -> rusqlite::Result<i64> {
        tx.prepare_cached(
            "INSERT INTO scopes (scope_key, identity) VALUES (?1, ?2)
             ON CONFLICT (scope_key) DO UPDATE SET identity = excluded.identity
             WHERE identity = '{}'",
        )?
        .execute(params![key, identity])?;
        // The row is there now; an id, once given, never changes.
        self.stored(tx, key)?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)
    }

    /// The ids of a binding's scope and of its evidence's scope.
    fn binding_scopes(
        &mut self,
        tx: &Transaction<'_>,
        b: &BindingRow,
    ) -> rusqlite::Result<(i64, i64)> {
        let scope = self.id(tx, &b.scope_key)?;
        if b.evidence_scope_key == b.scope_key {
            return Ok((scope, scope));
        }
        Ok((scope, self.id(tx, &b.evidence_scope_key)?))
    }

    /// The id of the scope a binding names. The engine stores a scope before its first binding;
    /// should one come without, it gets a placeholder identity rather than lose the binding.
    fn id(&mut self, tx: &Transaction<'_>, key: &str) -> rusqlite::Result<i64> {
        match self.stored(tx, key)? {
            Some(id) => Ok(id),
            None => {
                tracing::warn!(
                    scope = key,
                    "a binding came before its scope; storing the scope"
                );
                self.store(tx, key, "{}")
            }
        }
    }

    /// The id of a stored scope, if it is stored.
    fn stored(&mut self, tx: &Transaction<'_>, key: &str) -> rusqlite::Result<Option<i64>> {
        if let Some(&id) = self.known.get(key) {
            return Ok(Some(id));
        }
        if let Some((_, id)) = self.staged.iter().find(|(k, _)| &**k == key) {
            return Ok(Some(*id));
        }
        let id = tx
            .prepare_cached("SELECT id FROM scopes WHERE scope_key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?;
        if let Some(id) = id {
            self.staged.push((key.into(), id));
        }
        Ok(id)
    }
}
