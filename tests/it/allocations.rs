//! Allocations on the engine's hot path, counted by a global allocator that tallies each
//! thread's allocations (so tests running beside this one do not count): observing a binding
//! the engine already knows must allocate nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use crosstalk::config::Config;
use crosstalk::correlate::{Effects, Engine, Received};
use crosstalk::normalize::{Observation, Resource, Signal, SpanId, TraceId, WatchedId};
use crosstalk::telemetry::metrics::Metrics;

thread_local! {
    /// Allocations (and reallocations) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: a thread being torn down has no counter left, and still allocates.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Forwards every call unchanged to the system allocator, counting.
struct Counting;

// SAFETY: every call is delegated to `System` with the caller's arguments; counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// `n` spans, each using its own agent factory as its own user and tenant, within a trace.
fn spans(n: u64, resource: &Arc<Resource>, watch: u16, now: u64) -> Vec<Observation> {
    (0..n)
        .map(|i| Observation {
            signal: Signal::Span,
            start_ns: now + i,
            end_ns: now + i + 1,
            trace_id: TraceId::from_hex(&format!("{:032x}", i + 1)),
            span_id: SpanId::from_hex(&format!("{:016x}", i + 1)),
            resource: resource.clone(),
            user: Some(format!("user-{i}").into()),
            tenant: Some(format!("tenant-{}", i % 3).into()),
            watched: vec![WatchedId {
                watch,
                id: format!("factory-{i}").into(),
                origin: None,
            }],
            delivery: None,
        })
        .collect()
}

#[test]
fn observing_known_bindings_allocates_nothing_in_the_engine() {
    let config = Config::default_config();
    let watch = (config.watches.iter())
        .position(|w| w.attribute == "agent_factory.instance_id")
        .expect("the default config watches agent factories") as u16;
    let mut engine = Engine::new(&config, Arc::new(Metrics::new()));
    // As the pipeline runs it: every batch undoable until its commit.
    engine.keep_undo_log();
    let resource = Arc::new(Resource::from_identity(
        [("service.name".to_owned(), "agent-backend".to_owned())].into(),
        None,
        None,
    ));
    let received = Received::now();
    let (first, again) = (
        spans(512, &resource, watch, received.wall_ns),
        spans(512, &resource, watch, received.wall_ns + 1000),
    );
    let mut fx = Effects::default();
    engine.ingest(first, received, &mut fx);
    assert_eq!(fx.bindings.len(), 512);
    engine.committed(engine.undo_mark());

    let mut fx = Effects::default();
    let before = allocations();
    engine.ingest(again, received, &mut fx);
    let made = allocations() - before;
    assert!(fx.is_empty(), "a known binding writes nothing: {fx:?}");
    assert_eq!(
        made, 0,
        "allocations for 512 observations of known bindings"
    );
}
