//! Bytes of correlation state per tracked (instance, user) binding, measured with a counting
//! global allocator over `CROSSTALK_BINDINGS` (default 1,000,000) bindings: one user per
//! instance, as in a service without leaks, and no trace ids, so that only binding state grows.
//!
//! Prints the live heap per binding (bytes the engine asked the allocator for, net of frees;
//! allocator overhead not included), the resident-set growth per binding, and the sizes of the
//! parts that make up a binding, then one line `bytes_per_binding=N` for `scripts/bench`.

// The only unsafe code in the project: the allocator shim below. `forbid` cannot be used here
// because the shim's module must opt out; `deny` holds everywhere else in this file.
#![deny(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use crosstalk::config::Config;
use crosstalk::correlate::{Effects, Engine, Received};
use crosstalk::normalize::{Observation, Resource, Signal, WatchedId};
use crosstalk::telemetry::metrics::Metrics;

/// Counts live heap bytes. Unsafe only because `GlobalAlloc` is an unsafe trait; every call is
/// forwarded unchanged to the system allocator, so its contract holds by delegation.
#[allow(unsafe_code)]
mod counting {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};

    pub static LIVE: AtomicIsize = AtomicIsize::new(0);
    /// Live allocations by requested size (the last slot: every larger size), for the
    /// breakdown.
    pub static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];
    pub const SIZES: usize = 1025;

    fn slot(size: usize) -> &'static AtomicIsize {
        &BY_SIZE[size.min(SIZES - 1)]
    }

    pub struct Counting;

    // SAFETY: delegates to `System` with the caller's arguments; the counter has no effect on
    // the memory handed out.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            slot(layout.size()).fetch_add(1, Ordering::Relaxed);
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            slot(layout.size()).fetch_sub(1, Ordering::Relaxed);
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            slot(layout.size()).fetch_sub(1, Ordering::Relaxed);
            slot(new_size).fetch_add(1, Ordering::Relaxed);
            // SAFETY: same contract as ours.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

fn live() -> isize {
    counting::LIVE.load(Ordering::Relaxed)
}

/// Live allocation counts by size.
fn by_size() -> Vec<isize> {
    counting::BY_SIZE
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect()
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let n: usize = std::env::var("CROSSTALK_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut config = Config::default_config();
    config.limits.max_tracked_instances = n * 2;
    let watch = config
        .watches
        .iter()
        .position(|w| w.attribute == "agent_factory.instance_id")
        .expect("the default config watches agent factories") as u16;
    let mut engine = Engine::new(&config, Arc::new(Metrics::new()));
    let resource = Arc::new(Resource::from_identity(
        [("service.name".to_owned(), "agent-backend".to_owned())].into(),
        None,
        None,
    ));
    let received = Received::now();
    let batch_of = |from: usize, to: usize| -> Vec<Observation> {
        (from..to)
            .map(|i| Observation {
                signal: Signal::Span,
                start_ns: received.wall_ns,
                end_ns: received.wall_ns,
                trace_id: None,
                span_id: None,
                resource: resource.clone(),
                user: Some(format!("user-{i:07}").into()),
                tenant: None,
                watched: vec![WatchedId {
                    watch,
                    id: format!("factory-{i:07}-0").into(),
                    origin: None,
                }],
                delivery: None,
            })
            .collect()
    };
    // The first batch interns the scope; leave it out of the per-binding figure.
    engine.ingest(batch_of(0, 1), received, &mut Effects::default());
    let (heap0, rss0, sizes0) = (live(), rss_kb(), by_size());
    let step = 4096;
    for from in (1..=n).step_by(step) {
        let batch = batch_of(from, (from + step).min(n + 1));
        let mut fx = Effects::default();
        engine.ingest(batch, received, &mut fx);
    }
    let (heap1, rss1, sizes1) = (live(), rss_kb(), by_size());
    assert_eq!(engine.tracked_instances(), n + 1);
    let per = (heap1 - heap0) as f64 / n as f64;
    let rss_per = (rss1.saturating_sub(rss0) * 1024) as f64 / n as f64;
    println!("bindings: {n}");
    println!("live heap per binding: {per:.1} bytes");
    println!("resident set growth per binding: {rss_per:.1} bytes");
    println!(
        "live allocations added per binding, by requested size (instance id 17 bytes and \
         user 12 share one, with 2 length bytes):"
    );
    let large: isize = heap1
        - heap0
        - (0..counting::SIZES - 1)
            .map(|size| (sizes1[size] - sizes0[size]) * size as isize)
            .sum::<isize>();
    for size in 0..counting::SIZES - 1 {
        let added = sizes1[size] - sizes0[size];
        if added as f64 / n as f64 >= 0.05 {
            println!(
                "  {:>5} bytes x {:.2} = {:.1} bytes",
                size,
                added as f64 / n as f64,
                (added * size as isize) as f64 / n as f64
            );
        }
    }
    println!(
        "  larger than {} bytes (80-byte records in slab chunks, 4-byte index slots): {:.1} bytes",
        counting::SIZES - 2,
        large as f64 / n as f64
    );
    println!("bytes_per_binding={}", per.round() as u64);
}
