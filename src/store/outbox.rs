//! The durable alert outbox, as the alert sender sees it: which alerts are due, and when each
//! is due next. Rows are queued by the writer in the same transaction as their finding.
//!
//! Two promises: a row whose next due time cannot be written is still not sent again before
//! that time (it is held in memory), and a row whose finding cannot be read is set aside
//! (`unreadable`, re-armed when the finding is written again) so it can never block the rows
//! behind it.

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use super::StoreError;
use super::reader::StoredFinding;
use crate::correlate::Finding;

/// Passes over the due rows per call at most, each setting aside the unreadable ones it met.
const MAX_PASSES: usize = 16;

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    /// Sent as ended after the instance went quiet; re-armed when it is used again.
    Resolved,
    /// Its finding was acknowledged or resolved: to be sent once as ended.
    Ending,
    /// Ended for its finding's triage state: never sent again unless the finding reopens.
    Silenced,
}

impl AlertState {
    fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Ending => "ending",
            AlertState::Silenced => "silenced",
        }
    }
}

/// An alert due for sending: a firing one, or one to end for its finding's triage state.
#[derive(Debug, Clone)]
pub struct DueAlert {
    pub finding: Finding,
    /// Send it ended (`endsAt` now): its finding was acknowledged or resolved.
    pub ending: bool,
    /// Failed sends since the last success, for the backoff.
    pub attempts: u32,
    pub last_seen_ns: u64,
}

/// What became of one alert, to write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub state: AlertState,
    /// When to send it next; `u64::MAX` for never (resolved).
    pub due_ns: u64,
    pub attempts: u32,
    /// Set when it was sent.
    pub sent_ns: Option<u64>,
}

/// One poll's worth of the outbox.
#[derive(Debug, Default)]
pub struct Due {
    pub alerts: Vec<DueAlert>,
    /// Finding ids whose rows could not be read and were set aside.
    pub unreadable: Vec<String>,
}

/// The alert sender's connection to the outbox.
pub struct Outbox {
    conn: Mutex<Connection>,
    /// Rows whose next due time could not be written, by finding id: not due before this.
    held: Mutex<HashMap<String, u64>>,
}

impl Outbox {
    pub(super) fn new(conn: Connection) -> Self {
        Outbox {
            conn: Mutex::new(conn),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Firing alerts due at `now_ns`, oldest due first, at most `limit`.
    pub fn due(&self, now_ns: u64, limit: usize) -> Result<Due, StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, until| *until > now_ns);
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Due::default();
        for _ in 0..MAX_PASSES {
            let mut set_aside = 0;
            // Held rows still read as due: ask for that many more so they cannot crowd out
            // the rest.
            for row in read_due(&conn, now_ns, limit + held.len())? {
                let (id, stored, attempts, last_seen, ending) = row;
                if held.contains_key(&id) || due.alerts.len() >= limit {
                    continue;
                }
                match stored.finding() {
                    Ok(finding) => due.alerts.push(DueAlert {
                        finding,
                        ending,
                        attempts,
                        last_seen_ns: last_seen,
                    }),
                    Err(_) => {
                        let parked = conn.execute(
                            "UPDATE alert_outbox SET state = 'unreadable', due_ns = ?2
                             WHERE finding_id = ?1",
                            params![id, i64::MAX],
                        );
                        if parked.is_err() {
                            held.insert(id.clone(), u64::MAX);
                        }
                        due.unreadable.push(id);
                        set_aside += 1;
                    }
                }
            }
            if set_aside == 0 || due.alerts.len() >= limit {
                break;
            }
            // Rows already taken come back in the next pass: start over without them.
            due.alerts.clear();
        }
        Ok(due)
    }

    /// Write back what became of alert `finding_id`. If that fails, the row is still not sent
    /// again before `settled.due_ns` by this process. A row whose state changed while it was
    /// being sent (acknowledged mid-send, or reopened while its end was sent) is left as it now
    /// is, so it is sent again as that.
    pub fn settle(&self, finding_id: &str, settled: Settled) -> Result<(), StoreError> {
        let sent_as = match settled.state {
            AlertState::Firing | AlertState::Resolved => AlertState::Firing,
            AlertState::Ending | AlertState::Silenced => AlertState::Ending,
        };
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let written = conn.execute(
            "UPDATE alert_outbox SET state = ?2, due_ns = ?3, attempts = ?4,
                 last_sent_ns = COALESCE(?5, last_sent_ns) WHERE finding_id = ?1 AND state = ?6",
            params![
                finding_id,
                settled.state.as_str(),
                settled.due_ns.min(i64::MAX as u64) as i64,
                settled.attempts,
                settled.sent_ns.map(|n| n as i64),
                sent_as.as_str(),
            ],
        );
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match written {
            Ok(_) => {
                held.remove(finding_id);
                Ok(())
            }
            Err(e) => {
                held.insert(finding_id.to_owned(), settled.due_ns);
                Err(e.into())
            }
        }
    }
}

/// A due row: finding id, the finding, attempts, last seen, and whether it is to be ended.
type DueRow = (String, StoredFinding, u32, u64, bool);

/// Due rows, firing or ending.
fn read_due(conn: &Connection, now_ns: u64, limit: usize) -> Result<Vec<DueRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.finding_id, o.attempts, f.last_seen_ns, o.state = 'ending' AS ending,
                f.body, f.state, f.state_by, f.state_note, f.state_ns
         FROM alert_outbox o JOIN findings f ON f.id = o.finding_id
         WHERE o.due_ns <= ?1 AND o.state IN ('firing', 'ending') ORDER BY o.due_ns LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now_ns as i64, limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            StoredFinding::row(r)?,
            r.get::<_, i64>(1)?.clamp(0, u32::MAX as i64) as u32,
            r.get::<_, i64>(2)?.max(0) as u64,
            r.get::<_, bool>(3)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
