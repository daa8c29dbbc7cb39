//! The ingest queue and the engine thread that owns all correlation state.
//!
//! Producers (the OTLP and events listeners, the file tailers) normalize in their own tasks and
//! hand [`Batch`]es to one bounded queue. Full-policy: listeners use [`IngestHandle::try_submit`]
//! and answer 503 / `UNAVAILABLE` when it is full; tailers use [`IngestHandle::submit`], which
//! waits (the tail pauses). The engine thread takes every batch waiting, applies them, commits
//! their effects and file checkpoints in one transaction (group commit), and only then
//! acknowledges each producer. Nothing acknowledged is ever lost to a crash. Cluster verdicts
//! reach the engine on a path of their own ([`Verdict`], [`VERDICT_CAPACITY`]).
//! When a commit fails (a full disk), every batch of the group is undone from the engine's undo
//! log, newest first, and answered with the error (503 / `UNAVAILABLE`): a retry is judged
//! again instead of being taken as already known. The undo costs what the batches changed, not
//! what the store holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::config::Watch;
use crate::correlate::engine::{ClusterCheck, RemoteConflict, WatchChanges};
use crate::correlate::{Effects, Engine, Received};
use crate::normalize::Observation;
use crate::store::{FileCheckpoint, Store};
use crate::telemetry::events::{ItemsReceived, StoreCommitFailed};
use crate::telemetry::metrics::{Metrics, QueueLabels};

/// Batches taken per group commit at most, so one commit cannot grow without bound.
const MAX_GROUP: usize = 256;
/// How often pending attributions and retention are looked at when no batch arrives.
const TICK: Duration = Duration::from_millis(50);

/// What a producer is told once its batch is durable (or why it is not).
pub type Ack = Result<(), String>;

/// One producer's worth of observations, applied and committed as a unit.
pub struct Batch {
    pub observations: Vec<Observation>,
    pub received: Received,
    /// For `crosstalk_received_total`: counted only once the batch is durable.
    pub signal: &'static str,
    pub transport: &'static str,
    pub items: u64,
    pub checkpoint: Option<FileCheckpoint>,
    pub ack: Option<oneshot::Sender<Ack>>,
}

/// Why a batch was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: shed (503 / `UNAVAILABLE`) and let the client retry.
    #[error("ingest queue is full")]
    Full,
    #[error("crosstalk is shutting down")]
    Stopped,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("observations", &self.observations.len())
            .field("items", &self.items)
            .finish()
    }
}

/// The engine has stopped (shutdown).
#[derive(Debug, thiserror::Error)]
#[error("crosstalk is shutting down")]
pub struct EngineStopped;

/// A cheap, cloneable handle for producers.
#[derive(Clone)]
pub struct IngestHandle {
    tx: SyncSender<Batch>,
    pushed: Counter,
    full: Counter,
}

impl IngestHandle {
    /// Enqueue without waiting.
    pub fn try_submit(&self, batch: Batch) -> Result<(), Refused> {
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.pushed.inc();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.full.inc();
                Err(Refused::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// Enqueue, waiting for room (blocking: call from a blocking thread).
    pub fn submit(&self, batch: Batch) -> Result<(), EngineStopped> {
        let batch = match self.tx.try_send(batch) {
            Ok(()) => {
                self.pushed.inc();
                return Ok(());
            }
            Err(TrySendError::Full(b)) => {
                self.full.inc();
                b
            }
            Err(TrySendError::Disconnected(_)) => return Err(EngineStopped),
        };
        self.tx.send(batch).map_err(|_| EngineStopped)?;
        self.pushed.inc();
        Ok(())
    }
}

/// Room for reloads on their way to the engine thread. Full-policy: the reload waits for room
/// (reloads are rare and serialized by the reloader; the engine looks every [`TICK`]).
const RELOAD_CAPACITY: usize = 1;

/// A reload's watch table by slot, its findings retention, and where the engine says what it
/// did (once committed).
struct Reconfigure {
    slots: Vec<Option<Watch>>,
    findings_retention: Duration,
    reply: oneshot::Sender<Result<WatchChanges, String>>,
}

/// Delivers reloaded watch tables to the engine thread.
#[derive(Clone)]
pub struct WatchSender(tokio::sync::mpsc::Sender<Reconfigure>);

impl WatchSender {
    /// Hand `slots` and `findings_retention` to the engine and wait (at most `wait`) until it
    /// has applied and committed them; what changed, or why not.
    pub async fn send(
        &self,
        slots: Vec<Option<Watch>>,
        findings_retention: Duration,
        wait: Duration,
    ) -> Result<WatchChanges, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || "crosstalk is shutting down".to_owned();
        let asked = async {
            self.0
                .send(Reconfigure {
                    slots,
                    findings_retention,
                    reply,
                })
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        };
        tokio::time::timeout(wait, asked)
            .await
            .map_err(|_| format!("no answer within {wait:?}"))?
    }
}

/// Receives the new global bindings each commit made, for Redis to judge.
pub type ClusterSink = Box<dyn FnMut(Vec<ClusterCheck>) + Send>;

/// Room for cluster verdicts on their way to the engine thread. Full-policy: the coordinator
/// waits for room (verdicts are rare, each one is a finding, and the checks behind it wait in
/// the coordinator's own bounded, counted queue). The engine takes every verdict waiting each
/// time round its loop (at least every [`TICK`]).
pub const VERDICT_CAPACITY: usize = 64;

/// A conflict Redis found on a global watch that this sidecar owns: its own message to the
/// engine thread, apart from the ingest queue.
#[derive(Debug)]
pub struct Verdict {
    pub conflict: RemoteConflict,
    pub received: Received,
}

/// The engine's two ends of cluster coordination.
pub struct ClusterLink {
    /// New global bindings, after each commit.
    pub checks: ClusterSink,
    pub verdicts: tokio::sync::mpsc::Receiver<Verdict>,
}

/// Stops the engine thread: it takes what is queued, settles what is pending, commits, and
/// hands the engine back (for `crosstalk check`/`run` to read).
pub struct EngineControl {
    reloads: WatchSender,
    stop: Arc<AtomicBool>,
    settle_on_stop: Arc<AtomicBool>,
    join: JoinHandle<Engine>,
}

impl EngineControl {
    /// Where reloaded watch tables go.
    pub fn reloads(&self) -> WatchSender {
        self.reloads.clone()
    }

    /// Ask the engine to finish; producers still holding handles are refused from then on.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stop and wait for the engine (blocking). `settle`: judge observations still waiting for
    /// their trace's user now (a `run` that ends), instead of keeping them in the store for the
    /// next start (a sidecar restarting).
    pub fn finish(self, settle: bool) -> Result<Engine, EnginePanicked> {
        self.settle_on_stop.store(settle, Ordering::Release);
        self.stop();
        self.join.join().map_err(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            EnginePanicked(message)
        })
    }
}

/// The engine thread died of a panic (a bug): what it held since its last commit is lost, and
/// `serve` must not exit as if it had stopped cleanly.
#[derive(Debug, thiserror::Error)]
#[error("the engine thread panicked: {0}")]
pub struct EnginePanicked(pub String);

/// Start the engine thread. It runs until [`EngineControl::stop`] or until every
/// [`IngestHandle`] is dropped.
pub fn spawn(
    engine: Engine,
    store: Store,
    capacity: usize,
    metrics: Arc<Metrics>,
    cluster: Option<ClusterLink>,
) -> (IngestHandle, EngineControl) {
    let mut engine = engine;
    engine.keep_undo_log();
    let (tx, rx) = sync_channel(capacity);
    let label = QueueLabels {
        queue: "ingest".into(),
    };
    metrics
        .queue_capacity
        .get_or_create(&label)
        .set(capacity as i64);
    let handle = IngestHandle {
        tx,
        pushed: metrics.queue_pushed.get_or_create(&label).clone(),
        full: metrics.queue_full.get_or_create(&label).clone(),
    };
    let popped = metrics.queue_popped.get_or_create(&label).clone();
    let stop = Arc::new(AtomicBool::new(false));
    let settle_on_stop = Arc::new(AtomicBool::new(false));
    metrics.store_healthy.set(1);
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(RELOAD_CAPACITY);
    let worker = EngineWorker {
        reloads,
        engine,
        store,
        metrics,
        popped,
        cluster,
        stop: stop.clone(),
        settle_on_stop: settle_on_stop.clone(),
    };
    let join = std::thread::Builder::new()
        .name("crosstalk-engine".into())
        .spawn(move || worker.run(rx))
        .expect("spawning the engine thread");
    (
        handle,
        EngineControl {
            reloads: WatchSender(reload_tx),
            stop,
            settle_on_stop,
            join,
        },
    )
}

struct EngineWorker {
    reloads: tokio::sync::mpsc::Receiver<Reconfigure>,
    engine: Engine,
    store: Store,
    metrics: Arc<Metrics>,
    popped: Counter,
    cluster: Option<ClusterLink>,
    stop: Arc<AtomicBool>,
    settle_on_stop: Arc<AtomicBool>,
}

impl EngineWorker {
    fn run(mut self, rx: Receiver<Batch>) -> Engine {
        let mut group: Vec<Batch> = Vec::with_capacity(MAX_GROUP);
        loop {
            let stopping = match rx.recv_timeout(TICK) {
                Ok(batch) => {
                    group.push(batch);
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(b) => group.push(b),
                            Err(_) => break,
                        }
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            // Asked to stop: take everything already queued, then finish.
            let stopping = stopping || {
                let asked = self.stop.load(Ordering::Acquire);
                if asked {
                    group.extend(rx.try_iter());
                }
                asked
            };
            self.popped.inc_by(group.len() as u64);
            self.process(&mut group, stopping);
            if stopping {
                return self.engine;
            }
        }
    }

    /// Apply a reloaded watch table, in two steps so that a refused commit changes nothing:
    /// first the bindings it forgets are deleted from the store, then (only if that committed)
    /// the engine takes the table. Nothing else runs on this thread in between.
    fn reload(&mut self, r: Reconfigure) {
        let forgets = Effects {
            evicted: self.engine.forgotten_by(&r.slots),
            ..Effects::default()
        };
        let answer = match self.store.commit(&forgets, &[], Received::now().wall_ns) {
            Ok(()) => {
                let changes = self.engine.reconfigure(&r.slots, &mut Effects::default());
                self.engine.set_findings_retention(r.findings_retention);
                // Its forgetting is already durable: nothing of it is to be undone.
                self.engine.committed(self.engine.undo_mark());
                Ok(changes)
            }
            Err(e) => Err(format!(
                "the store refused to forget the changed watches' bindings ({e}); the running \
                 watches are unchanged"
            )),
        };
        // A reloader that gave up waiting is no error of ours.
        let _ = r.reply.send(answer);
    }

    fn process(&mut self, group: &mut Vec<Batch>, stopping: bool) {
        // Before the group: with watches keeping their index, its observations read the same
        // under either table.
        if let Ok(r) = self.reloads.try_recv() {
            self.reload(r);
        }
        // Everything after this mark is the group's (and this tick's): undone together if the
        // commit fails, newest first, so each retry is judged again.
        let mark = self.engine.undo_mark();
        let mut fx = Effects::default();
        let mut checkpoints = Vec::new();
        for batch in group.iter_mut() {
            let observations = std::mem::take(&mut batch.observations);
            self.engine.ingest(observations, batch.received, &mut fx);
            if let Some(c) = batch.checkpoint.take() {
                checkpoints.retain(|x: &FileCheckpoint| x.path != c.path);
                checkpoints.push(c);
            }
        }
        if let Some(link) = self.cluster.as_mut() {
            while let Ok(v) = link.verdicts.try_recv() {
                let now = Received::now();
                self.engine
                    .remote_conflict(v.conflict, v.received, now, &mut fx);
            }
        }
        let now = Received::now();
        if stopping && self.settle_on_stop.load(Ordering::Acquire) {
            self.engine.settle_all(now, &mut fx);
        } else {
            self.engine.tick(now, &mut fx);
        }
        if stopping {
            self.engine.flush_evidence(&mut fx);
        }
        let result = self
            .store
            .commit(&fx, &checkpoints, now.wall_ns)
            .map_err(|e| {
                StoreCommitFailed {
                    error: &e,
                    os_error: e.os_error(),
                    dir: self.store.dir(),
                }
                .emit(&self.metrics);
                e.to_string()
            });
        // From the store's health, not this result: an idle tick with nothing to write proves
        // nothing about the disk and must not flip the gauge back while commits fail.
        let healthy = self.store.health().is_ok();
        self.metrics.store_healthy.set(i64::from(healthy));
        if result.is_ok() {
            self.engine.committed(self.engine.undo_mark());
            // Counted before the producers hear back, so a scrape after the ack sees it.
            for n in &fx.news {
                self.engine.count_committed(n);
            }
        } else {
            let written: Vec<String> = fx.findings.iter().map(|r| r.finding.id.clone()).collect();
            self.engine.undo_since(mark, &written);
        }
        for batch in group.drain(..) {
            if result.is_ok() {
                ItemsReceived {
                    signal: batch.signal,
                    transport: batch.transport,
                    n: batch.items,
                }
                .emit(&self.metrics);
            }
            if let Some(ack) = batch.ack {
                // A producer that gave up waiting is no error of ours.
                let _ = ack.send(result.clone());
            }
        }
        if result.is_ok() && !fx.cluster.is_empty() {
            if let Some(link) = self.cluster.as_mut() {
                (link.checks)(std::mem::take(&mut fx.cluster));
            }
        }
        if result.is_ok() && !fx.news.is_empty() {
            for n in &fx.news {
                // Receipt of the conflicting observation → committed, so readable by the API.
                if let Some(received) = n.received {
                    let delay = received.elapsed().as_secs_f64();
                    self.metrics.detection_delay.observe(delay);
                }
                if let Some(f) = self.engine.finding(&n.id) {
                    tracing::warn!(
                        finding = %f.id, kind = f.kind.as_str(), watch = %f.watch,
                        service = %f.service, users = f.user_count, new = n.new,
                        "cross-user leak"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;
    use crate::normalize::{Resource, Signal, WatchedId};

    /// Defect 6: a panic on the engine thread comes back as a panic with its message (it used
    /// to be `None`, which `serve` reported as a slow stop and exited 0 on).
    #[test]
    fn engine_thread_panic_is_reported_as_a_panic() {
        let cfg = Config::from_toml("[[watch]]\nname=\"w\"\nattribute=\"a\"\nscope=\"global\"\n")
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let engine = Engine::new(&cfg, metrics.clone()).with_cluster();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // The cluster sink runs on the engine thread: the one place a test can inject a fault.
        let sink: ClusterSink = Box::new(|_| panic!("injected fault"));
        let (_verdict_tx, verdicts) = tokio::sync::mpsc::channel(1);
        let link = ClusterLink {
            checks: sink,
            verdicts,
        };
        let (ingest, control) = spawn(engine, store, 4, metrics, Some(link));
        let mut identity = BTreeMap::new();
        identity.insert("service.name".to_owned(), "api".to_owned());
        let observation = Observation {
            signal: Signal::Span,
            start_ns: 1,
            end_ns: 2,
            trace_id: None,
            span_id: None,
            resource: Arc::new(Resource::from_identity(identity, None, None)),
            user: Some("alice".into()),
            tenant: None,
            watched: vec![WatchedId {
                watch: 0,
                id: "i-1".into(),
                origin: None,
            }],
            delivery: None,
        };
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            observations: vec![observation],
            received: Received::now(),
            signal: "traces",
            transport: "test",
            items: 1,
            checkpoint: None,
            ack: Some(tx),
        };
        ingest.submit(batch).unwrap();
        assert_eq!(
            rx.blocking_recv().unwrap(),
            Ok(()),
            "committed before the sink ran"
        );
        let Err(err) = control.finish(false) else {
            panic!("the panic went unreported");
        };
        assert!(err.to_string().contains("injected fault"), "{err}");
    }
}
