//! The schema: numbered migrations recorded in `PRAGMA user_version`, applied in order at open.

use rusqlite::Connection;

use super::StoreError;

/// Numbered migrations; the index + 1 is the schema version it brings.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 4: first and last observation per (watch, service), so that `blind` survives a restart.
    "CREATE TABLE watch_evidence (
        watch TEXT NOT NULL, service TEXT NOT NULL,
        first_s INTEGER NOT NULL, last_s INTEGER NOT NULL,
        PRIMARY KEY (watch, service)
     ) WITHOUT ROWID;",
    // 5: triage state, set through the API; existing findings are open. Beside the body (which
    // the engine rewrites as the finding grows) so the engine never overwrites it.
    "ALTER TABLE findings ADD COLUMN state TEXT NOT NULL DEFAULT 'open';
     ALTER TABLE findings ADD COLUMN state_by TEXT;
     ALTER TABLE findings ADD COLUMN state_note TEXT;
     ALTER TABLE findings ADD COLUMN state_ns INTEGER;",
    // 6: every distinct user of a finding, counted (exact hashes, then a sketch); a finding
    // stored before has none and is counted again from the users it lists.
    "ALTER TABLE findings ADD COLUMN users BLOB;",
    // 7: bindings name their scopes by a small integer id, and hold trace and span ids as bytes:
    // a per-request service writes a row per request, and the scope's text (about 80 bytes, in
    // the row twice) was half of it. A binding whose scope was never stored could not be
    // restored before, and is not carried over; an unknown evidence scope becomes its own.
    "CREATE TABLE scopes_v7 (
        id        INTEGER PRIMARY KEY,
        scope_key TEXT NOT NULL UNIQUE,
        identity  TEXT NOT NULL
     );
     INSERT INTO scopes_v7 (scope_key, identity) SELECT scope_key, identity FROM scopes;
     CREATE TABLE bindings_v7 (
        watch TEXT NOT NULL, scope INTEGER NOT NULL, instance TEXT NOT NULL, user TEXT NOT NULL,
        tenant TEXT, first_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL,
        last_start_ns INTEGER NOT NULL, last_end_ns INTEGER NOT NULL,
        trace_id BLOB, span_id BLOB, signal TEXT NOT NULL, evidence_scope INTEGER NOT NULL,
        PRIMARY KEY (watch, scope, instance, user)
     ) WITHOUT ROWID;
     INSERT INTO bindings_v7
        SELECT b.watch, s.id, b.instance, b.user, b.tenant, b.first_ns, b.last_ns,
               b.last_start_ns, b.last_end_ns, unhex(b.trace_id), unhex(b.span_id), b.signal,
               coalesce(e.id, s.id)
        FROM bindings b
        JOIN scopes_v7 s ON s.scope_key = b.scope_key
        LEFT JOIN scopes_v7 e ON e.scope_key = b.evidence_scope_key;
     DROP TABLE bindings;
     ALTER TABLE bindings_v7 RENAME TO bindings;
     DROP TABLE scopes;
     ALTER TABLE scopes_v7 RENAME TO scopes;",
];

/// Bring the database to the newest schema; refuse one newer than this build understands.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
    Ok(())
}
