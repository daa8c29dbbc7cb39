//! Triage: people acknowledging and resolving findings through the API (its own connection).
//!
//! The state lives in the findings table's triage columns, never in the body the engine
//! rewrites, so the engine's next write of a growing finding cannot undo an acknowledgement.
//! Changing it also settles the finding's alert in the same transaction: a firing alert is
//! queued to be ended at once (`ending`), and from then on nothing is re-sent (`silenced`) until
//! a new user reopens a resolved finding.

use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::StoreError;
use super::reader::finding_by_id;
use crate::correlate::Finding;
use crate::correlate::finding::FindingState;

/// What a triage request came to.
#[derive(Debug)]
pub enum Triaged {
    /// The state was set; the finding as it now reads.
    Changed(Box<Finding>),
    NotFound,
    /// The change makes no sense from the finding's state (acknowledging a resolved finding).
    Refused(&'static str),
}

/// Who changes a finding's state, and why.
#[derive(Debug, Clone)]
pub struct StateRequest {
    pub to: FindingState,
    pub by: String,
    pub note: String,
    pub now_ns: u64,
}

/// The API's connection for triage.
pub struct Triage {
    conn: Mutex<Connection>,
}

impl Triage {
    pub(super) fn new(conn: Connection) -> Self {
        Triage {
            conn: Mutex::new(conn),
        }
    }

    /// Set finding `id`'s state, and end its alert if one is firing.
    pub fn set_state(&self, id: &str, req: &StateRequest) -> Result<Triaged, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // Immediate: the read and the write are one step, never a stale read upgraded.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .query_row("SELECT state FROM findings WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(current) = current else {
            return Ok(Triaged::NotFound);
        };
        let current = FindingState::parse(&current).unwrap_or_default();
        if current == FindingState::Resolved && req.to == FindingState::Acknowledged {
            return Ok(Triaged::Refused(
                "the finding is resolved: it reopens by itself when a new user is seen",
            ));
        }
        tx.execute(
            "UPDATE findings SET state = ?2, state_by = ?3, state_note = ?4, state_ns = ?5
             WHERE id = ?1",
            params![
                id,
                req.to.as_str(),
                req.by,
                req.note,
                req.now_ns.min(i64::MAX as u64) as i64
            ],
        )?;
        if req.to != FindingState::Open {
            tx.execute(
                "UPDATE alert_outbox SET state = 'ending', due_ns = ?2, attempts = 0
                 WHERE finding_id = ?1 AND state = 'firing'",
                params![id, req.now_ns.min(i64::MAX as u64) as i64],
            )?;
        }
        let finding = finding_by_id(&tx, id)?;
        tx.commit()?;
        Ok(finding.map_or(Triaged::NotFound, |f| Triaged::Changed(Box::new(f))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::FindingKind;
    use crate::correlate::engine::{Effects, FindingNews, FindingRecord};
    use crate::correlate::finding::Subject;
    use crate::store::{AlertState, Settled, Store};

    fn record(users: &[&str]) -> FindingRecord {
        let subject = Subject {
            kind: FindingKind::SharedInstance,
            watch: "w",
            scope_key: "",
            instance: "i",
            scope: Default::default(),
            service: "api",
            policy: "exclusive",
            boundary: "user",
            severity: "critical",
        };
        let mut r = FindingRecord::new(subject, 1, 1);
        r.absorb(users.iter().copied(), [], [], 5);
        r
    }

    /// The engine writes `users` as the finding; `added` of them are new to it.
    fn commit(store: &mut Store, users: &[&str], added: u64, now_ns: u64) -> String {
        let r = record(users);
        let id = r.finding.id.clone();
        let news = (added > 0).then(|| FindingNews {
            id: id.clone(),
            new: false,
            received: None,
            users: added,
            trace: None,
        });
        let fx = Effects {
            findings: vec![r],
            news: news.into_iter().collect(),
            ..Effects::default()
        };
        store.commit(&fx, &[], now_ns).unwrap();
        id
    }

    fn set(triage: &Triage, id: &str, to: FindingState) -> Triaged {
        let req = StateRequest {
            to,
            by: "alice".into(),
            note: "on it".into(),
            now_ns: 3_000,
        };
        triage.set_state(id, &req).unwrap()
    }

    fn state(store: &Store, id: &str) -> FindingState {
        store.reader().unwrap().finding(id).unwrap().unwrap().state
    }

    #[test]
    fn an_acknowledgement_survives_the_engine_rewriting_the_finding_and_ends_its_alert_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().with_alerting();
        let id = commit(&mut store, &["alice", "bob"], 2, 1_000);
        let (triage, outbox) = (store.triage().unwrap(), store.outbox().unwrap());
        let Triaged::Changed(f) = set(&triage, &id, FindingState::Acknowledged) else {
            panic!("not changed");
        };
        assert_eq!(f.state, FindingState::Acknowledged);
        assert_eq!(f.state_change.as_ref().unwrap().by, "alice");
        let due = outbox.due(4_000, 64).unwrap().alerts;
        assert!(due.len() == 1 && due[0].ending, "sent once, as ended");
        // A firing send that raced the acknowledgement does not undo it.
        let fired = Settled {
            state: AlertState::Firing,
            due_ns: 9_000,
            attempts: 0,
            sent_ns: Some(4_000),
        };
        outbox.settle(&id, fired).unwrap();
        assert!(outbox.due(4_000, 64).unwrap().alerts[0].ending);
        let silenced = Settled {
            state: AlertState::Silenced,
            due_ns: u64::MAX,
            attempts: 0,
            sent_ns: Some(4_000),
        };
        outbox.settle(&id, silenced).unwrap();
        // The finding grows: the engine rewrites it, with news.
        commit(&mut store, &["alice", "bob", "carol"], 1, 5_000);
        assert_eq!(state(&store, &id), FindingState::Acknowledged);
        assert!(
            outbox.due(u64::MAX / 2, 64).unwrap().alerts.is_empty(),
            "no re-alert"
        );
    }

    #[test]
    fn a_resolved_finding_reopens_on_a_new_user_but_not_on_a_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().with_alerting();
        let id = commit(&mut store, &["alice", "bob"], 2, 1_000);
        let triage = store.triage().unwrap();
        assert!(matches!(
            set(&triage, &id, FindingState::Resolved),
            Triaged::Changed(_)
        ));
        assert!(matches!(
            set(&triage, &id, FindingState::Acknowledged),
            Triaged::Refused(_)
        ));
        // A known user again: only `last_seen` moves, no news.
        commit(&mut store, &["alice", "bob"], 0, 5_000);
        assert_eq!(state(&store, &id), FindingState::Resolved);
        commit(&mut store, &["alice", "bob", "carol"], 1, 6_000);
        let f = store.reader().unwrap().finding(&id).unwrap().unwrap();
        assert_eq!(f.state, FindingState::Open);
        assert_eq!(f.state_change.unwrap().by, "crosstalk");
        let due = store.outbox().unwrap().due(6_000, 64).unwrap().alerts;
        assert!(due.len() == 1 && !due[0].ending, "alerts again");
    }

    #[test]
    fn unknown_findings_are_not_found_and_existing_stores_migrate_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = super::super::open_connection(dir.path()).unwrap();
            for sql in &super::super::schema::MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            let body = serde_json::to_string(&record(&["a", "b"]).finding).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute(
                "INSERT INTO findings VALUES ('x', 'shared_instance', 'w', '', 1, 1, ?1)",
                [body],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(state(&store, "x"), FindingState::Open);
        let triage = store.triage().unwrap();
        assert!(matches!(
            set(&triage, "nope", FindingState::Resolved),
            Triaged::NotFound
        ));
    }
}
