//! Reading back: what the engine restores at start-up, tailed files' offsets, and the
//! findings API's read-only view (its own connection, never blocking the writer).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{FileCheckpoint, Store, StoreError};
use crate::correlate::engine::{
    FindingRecord, PendingRow, RestoreSink, Restored, RestoredScope, StoredBinding,
};
use crate::correlate::evidence::SeenRow;
use crate::correlate::finding::UserCounter;
use crate::correlate::finding::{FindingState, StateChange, rfc3339};
use crate::correlate::{Finding, FindingKind};
use crate::normalize::{Signal, SpanId, TraceId};

impl Store {
    /// Everything the engine needs to carry on where it stopped, all at once (tests, tools;
    /// the server streams it with [`Self::restore_into`]).
    pub fn restore(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        self.restore_into(&mut restored)?;
        Ok(restored)
    }

    /// Hand everything the engine needs to carry on to `sink`, one row at a time, in the
    /// order [`RestoreSink`] promises.
    pub fn restore_into(&self, sink: &mut impl RestoreSink) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, scope_key, identity FROM scopes")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut scope_keys = HashMap::new();
        for row in rows {
            let (id, key, identity) = row?;
            let identity: BTreeMap<String, String> = serde_json::from_str(&identity)?;
            scope_keys.insert(id, key.clone());
            sink.scope(RestoredScope {
                scope_key: key,
                identity,
            });
        }
        self.restore_bindings(&scope_keys, sink)?;
        let mut stmt = self
            .conn
            .prepare("SELECT body, scope_key, detected_ns, last_seen_ns, users FROM findings")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })?;
        for row in rows {
            let (body, scope_key, detected, last_seen, users) = row?;
            let finding: Finding = serde_json::from_str(&body)?;
            let users = user_counter(&finding, users.as_deref());
            sink.finding(FindingRecord {
                finding,
                scope_key,
                detected_ns: detected as u64,
                last_seen_ns: last_seen as u64,
                users,
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
            sink.pending(row?);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT watch, service, first_s, last_s FROM watch_evidence")?;
        let rows = stmt.query_map([], |r| {
            Ok(SeenRow {
                watch: r.get(0)?,
                service: r.get(1)?,
                first_s: r.get::<_, i64>(2)? as u64,
                last_s: r.get::<_, i64>(3)? as u64,
            })
        })?;
        for row in rows {
            sink.evidence(row?);
        }
        Ok(())
    }

    /// Every binding, borrowed from its row: nothing is copied but what the sink keeps.
    fn restore_bindings(
        &self,
        scope_keys: &HashMap<i64, String>,
        sink: &mut impl RestoreSink,
    ) -> Result<(), StoreError> {
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM bindings", [], |r| r.get(0))?;
        sink.expect_bindings(count.max(0) as usize);
        let mut stmt = self.conn.prepare(
            "SELECT watch, scope, instance, user, tenant, first_ns, last_ns, last_start_ns,
                    last_end_ns, trace_id, span_id, signal, evidence_scope FROM bindings",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            // A binding of an unknown scope cannot be restored (the engine would skip it too).
            if let Some(binding) = stored_binding(r, scope_keys)? {
                sink.binding(binding);
            }
        }
        Ok(())
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
}

/// A binding row, borrowed from the row and the scopes' keys; `None` if its scope is unknown.
fn stored_binding<'r>(
    r: &'r rusqlite::Row<'_>,
    scope_keys: &'r HashMap<i64, String>,
) -> rusqlite::Result<Option<StoredBinding<'r>>> {
    let text = |i: usize| -> rusqlite::Result<&'r str> { Ok(r.get_ref(i)?.as_str()?) };
    let bytes =
        |i: usize| -> rusqlite::Result<Option<&'r [u8]>> { Ok(r.get_ref(i)?.as_blob_or_null()?) };
    let ns = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)? as u64) };
    let Some(scope_key) = scope_keys.get(&r.get::<_, i64>(1)?) else {
        return Ok(None);
    };
    let evidence_scope_key = scope_keys.get(&r.get::<_, i64>(12)?).unwrap_or(scope_key);
    Ok(Some(StoredBinding {
        watch: text(0)?,
        scope_key,
        instance: text(2)?,
        user: text(3)?,
        tenant: r.get_ref(4)?.as_str_or_null()?,
        first_ns: ns(5)?,
        last_ns: ns(6)?,
        last_start_ns: ns(7)?,
        last_end_ns: ns(8)?,
        trace_id: bytes(9)?.and_then(TraceId::from_bytes),
        span_id: bytes(10)?.and_then(SpanId::from_bytes),
        signal: Signal::from_name(text(11)?),
        evidence_scope_key,
    }))
}

/// A finding's user counter as stored; one stored before the counter (or unreadable) is
/// counted again from the users it lists, which is all such a row ever knew exactly.
fn user_counter(finding: &Finding, stored: Option<&[u8]>) -> UserCounter {
    if let Some(bytes) = stored {
        match UserCounter::from_bytes(bytes) {
            Ok(counter) => return counter,
            Err(e) => tracing::warn!(finding = %finding.id, error = %e,
                "a finding's user counter cannot be read; counting its listed users again"),
        }
    }
    let mut counter = UserCounter::new();
    for user in &finding.users {
        counter.insert(user.as_bytes());
    }
    counter
}

/// Which findings to list.
#[derive(Debug, Default, Clone)]
pub struct FindingFilter {
    pub kind: Option<FindingKind>,
    pub watch: Option<String>,
    /// Findings detected or updated at or after this time (Unix ns).
    pub since_ns: Option<u64>,
    pub limit: usize,
    /// Only findings in this triage state.
    pub state: Option<FindingState>,
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
    pub(super) conn: Mutex<Connection>,
}

impl StoreReader {
    /// Findings matching `filter`, newest first, and the cursor of the last one when more follow.
    pub fn findings(
        &self,
        filter: &FindingFilter,
    ) -> Result<(Vec<Finding>, Option<Cursor>), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT body, detected_ns, id, state, state_by, state_note, state_ns FROM findings
             WHERE (?1 IS NULL OR type = ?1) AND (?2 IS NULL OR watch = ?2)
               AND (?3 IS NULL OR detected_ns >= ?3 OR last_seen_ns >= ?3)
               AND (?5 IS NULL OR detected_ns < ?5 OR (detected_ns = ?5 AND id > ?6))
               AND (?7 IS NULL OR state = ?7)
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
                filter.state.map(FindingState::as_str),
            ],
            |r| {
                Ok((
                    StoredFinding::row(r)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        let mut last = None;
        for row in rows {
            let (stored, detected, id) = row?;
            if out.len() == filter.limit {
                return Ok((out, last));
            }
            out.push(stored.finding()?);
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
        finding_by_id(&conn, id)
    }
}

/// One finding by id, its triage state from the columns that hold it.
pub(super) fn finding_by_id(conn: &Connection, id: &str) -> Result<Option<Finding>, StoreError> {
    let stored = conn
        .query_row(
            "SELECT body, detected_ns, id, state, state_by, state_note, state_ns
             FROM findings WHERE id = ?1",
            [id],
            StoredFinding::row,
        )
        .optional()?;
    stored.map(StoredFinding::finding).transpose()
}

/// A finding row: the engine's body and the API's triage columns, read by column name.
pub(super) struct StoredFinding {
    body: String,
    state: String,
    by: Option<String>,
    note: Option<String>,
    at_ns: Option<i64>,
}

impl StoredFinding {
    pub(super) fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(StoredFinding {
            body: r.get("body")?,
            state: r.get("state")?,
            by: r.get("state_by")?,
            note: r.get("state_note")?,
            at_ns: r.get("state_ns")?,
        })
    }

    /// The finding as the API shows it: the body with the stored state laid over it.
    pub(super) fn finding(self) -> Result<Finding, StoreError> {
        let mut f: Finding = serde_json::from_str(&self.body)?;
        f.state = FindingState::parse(&self.state).unwrap_or_default();
        f.state_change = self.by.map(|by| StateChange {
            by,
            at: rfc3339(self.at_ns.unwrap_or(0).max(0) as u64),
            note: self.note.unwrap_or_default(),
        });
        Ok(f)
    }
}
