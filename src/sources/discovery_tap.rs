//! The live feed of discovery: each accepted OTLP export (its body over HTTP, its message over
//! gRPC) is offered to one discovery thread, which decodes it and counts every attribute off the
//! request path. The engine's hot path only pays a sampling check and a channel send.
//!
//! Bounded: at most [`QUEUE_BATCHES`] exports and [`QUEUE_BYTES`] of bodies wait; when either is
//! full the export is skipped (full-policy: drop, counted in `skipped`), so under load discovery
//! samples instead of slowing ingest. `[discovery] sample` < 1 inspects that share of exports.
//! The thread also keeps to a CPU budget ([`CPU_BUDGET`] of one core, with a bounded burst): the
//! queue alone would let it take half a core flat out, since it shares cores with the engine.
//! Exports past the budget are skipped too. The report says how many exports were skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::correlate::discovery::Verdict;
use crate::correlate::discovery::feed::Feed;
use crate::correlate::discovery::report::Report;
use crate::correlate::finding::now_ns;
use crate::privacy::Pseudonymizer;
use crate::telemetry::metrics::Metrics;

pub const QUEUE_BATCHES: usize = 64;
pub const QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Share of one core the discovery thread may spend inspecting exports, over time.
pub const CPU_BUDGET: f64 = 0.10;
/// Most inspection time saved up while quiet (and granted at start): a burst after a quiet spell
/// is inspected whole, a sustained flood is sampled down to the budget.
const MAX_CREDIT_S: f64 = 2.0;

/// One export for discovery.
pub enum Export {
    TracesProtobuf(Bytes),
    TracesJson(Bytes),
    LogsProtobuf(Bytes),
    LogsJson(Bytes),
    Logs(Box<ExportLogsServiceRequest>),
}

impl Export {
    fn body_len(&self) -> usize {
        match self {
            Export::TracesProtobuf(b)
            | Export::TracesJson(b)
            | Export::LogsProtobuf(b)
            | Export::LogsJson(b) => b.len(),
            Export::Logs(m) => m.encoded_len(),
        }
    }
}

/// The sources' handle on discovery, and the admin API's.
pub struct DiscoveryTap {
    tx: mpsc::Sender<Export>,
    feed: Arc<Mutex<Feed>>,
    offered: AtomicU64,
    sample: f64,
    queued_bytes: Arc<AtomicUsize>,
    /// Exports not inspected: sampled out, dropped because the queue was full, or past the
    /// thread's CPU budget.
    pub skipped: Arc<AtomicU64>,
}

impl DiscoveryTap {
    /// Start the discovery thread; None when `[discovery] enabled = false`.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        if !config.discovery.enabled {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let feed = Arc::new(Mutex::new(Feed::new(config)));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            skipped: skipped.clone(),
            budget: Budget::new(std::time::Instant::now()),
            rx,
            feed: feed.clone(),
            queued_bytes: queued_bytes.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || worker.run())
            .ok()?;
        Some(Arc::new(DiscoveryTap {
            tx,
            feed,
            offered: AtomicU64::new(0),
            sample: config.discovery.sample,
            queued_bytes,
            skipped,
        }))
    }

    /// Offer an accepted export; skipped (counted) when sampled out or the queue is full.
    pub fn offer(&self, export: impl FnOnce() -> Export) {
        let n = self.offered.fetch_add(1, Ordering::Relaxed) as f64;
        // Inspect when the running share crosses an integer: evenly spread, no randomness.
        if (n * self.sample).floor() == ((n + 1.0) * self.sample).floor() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(permit) = self.tx.try_reserve() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let export = export();
        let len = export.body_len();
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        permit.send(export);
    }

    /// The current candidates (user names pseudonymised when `pseudo` is given).
    pub fn report(&self, pseudo: Option<&Pseudonymizer>) -> Report {
        let mut report = self.feed.lock().discovery.report(pseudo);
        report.skipped_exports = self.skipped.load(Ordering::Relaxed);
        report
    }
}

/// A token bucket of inspection time: earns [`CPU_BUDGET`] seconds per second, spends what each
/// export took.
struct Budget {
    credit_s: f64,
    last: std::time::Instant,
}

impl Budget {
    fn new(now: std::time::Instant) -> Self {
        Budget {
            credit_s: MAX_CREDIT_S,
            last: now,
        }
    }

    /// Whether an export may be inspected now.
    fn allow(&mut self, now: std::time::Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * CPU_BUDGET;
        self.credit_s = (self.credit_s + earned).min(MAX_CREDIT_S);
        self.last = now;
        self.credit_s > 0.0
    }

    fn spend(&mut self, took: std::time::Duration) {
        self.credit_s -= took.as_secs_f64();
    }
}

struct Worker {
    skipped: Arc<AtomicU64>,
    budget: Budget,
    rx: mpsc::Receiver<Export>,
    feed: Arc<Mutex<Feed>>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Runs until every sender is gone (the sources stopped).
    fn run(mut self) {
        let mut evicted = 0;
        while let Some(export) = self.rx.blocking_recv() {
            self.queued_bytes
                .fetch_sub(export.body_len(), Ordering::AcqRel);
            let started = std::time::Instant::now();
            if !self.budget.allow(started) {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let now = now_ns();
            let mut feed = self.feed.lock();
            // Bodies were accepted by the source, so they decode; one that does not is skipped.
            match export {
                Export::TracesProtobuf(b) => {
                    if let Ok(r) = ExportTraceServiceRequest::decode(b) {
                        feed.traces(&r, now);
                    }
                }
                Export::TracesJson(b) => {
                    if let Ok(r) = serde_json::from_slice::<ExportTraceServiceRequest>(&b) {
                        feed.traces(&r, now);
                    }
                }
                Export::LogsProtobuf(b) => {
                    if let Ok(r) = ExportLogsServiceRequest::decode(b) {
                        feed.logs(&r, now);
                    }
                }
                Export::LogsJson(b) => {
                    if let Ok(r) = serde_json::from_slice::<ExportLogsServiceRequest>(&b) {
                        feed.logs(&r, now);
                    }
                }
                Export::Logs(r) => feed.logs(&r, now),
            }
            let total = feed.discovery.evicted;
            drop(feed);
            self.budget.spend(started.elapsed());
            self.metrics.discovery_evicted.inc_by(total - evicted);
            evicted = total;
        }
    }
}

impl DiscoveryTap {
    /// Recompute `crosstalk_discovery_suspects{service}` (at scrape time: a pass over the keys).
    pub fn refresh_gauge(&self, metrics: &Metrics) {
        let report = self.feed.lock().discovery.report(None);
        let mut per_service: std::collections::BTreeMap<&str, i64> = Default::default();
        for c in &report.candidates {
            if c.verdict == Verdict::LeakSuspect {
                *per_service.entry(c.service.as_str()).or_default() += 1;
            }
        }
        metrics.set_discovery_suspects(&per_service);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A sustained flood is held to the budget's share; quiet time earns inspection back.
    #[test]
    fn budget_holds_a_flood_to_its_share_of_a_core() {
        let t0 = Instant::now();
        let mut budget = Budget::new(t0);
        let (mut inspected, mut offered) = (0u32, 0u32);
        // 100 s of exports every 10 ms, each taking 5 ms to inspect: half a core if unbudgeted.
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            offered += 1;
            if budget.allow(now) {
                inspected += 1;
                budget.spend(Duration::from_millis(5));
            }
        }
        let share = f64::from(inspected) * 0.005 / 100.0;
        assert!(
            share <= CPU_BUDGET + MAX_CREDIT_S / 100.0 + 0.001,
            "{inspected} of {offered} inspected: {share:.3} of a core"
        );
        assert!(share >= CPU_BUDGET * 0.9, "budget left unused: {share:.3}");
        // After a quiet minute the next burst is inspected again.
        assert!(budget.allow(t0 + Duration::from_secs(160)));
    }
}
