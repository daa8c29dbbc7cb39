//! Readiness, linkerd2-proxy's way: one [`Latch`] per thing `/ready` waits for (each listener
//! actually serving, the state restored), and `/ready` answers 200 only once every latch is
//! released. A component that fails before it serves drops its latch unreleased, so a
//! half-started sidecar never reads ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Shared view of the latches: ready when none is held.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<AtomicUsize>,
    released: Arc<Notify>,
}

/// Held by one component until it is up; see [`Latch::release`].
#[must_use = "a latch never released keeps /ready at 503"]
pub struct Latch {
    readiness: Readiness,
    name: &'static str,
}

impl Readiness {
    /// A new latch that `/ready` waits for. Take every latch before releasing any.
    pub fn latch(&self, name: &'static str) -> Latch {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Latch {
            readiness: self.clone(),
            name,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Wait until every latch is released.
    pub async fn wait(&self) {
        loop {
            // Made before the check: `notify_waiters` reaches it even if it is not polled yet.
            let released = self.released.notified();
            if self.is_ready() {
                return;
            }
            released.await;
        }
    }
}

impl Latch {
    /// This component is up.
    pub fn release(self) {
        tracing::debug!(component = self.name, "up");
        self.readiness.pending.fetch_sub(1, Ordering::AcqRel);
        self.readiness.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn ready_once_every_latch_is_released() {
        let readiness = Readiness::default();
        let (a, b) = (readiness.latch("a"), readiness.latch("b"));
        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.wait().await }
        });
        a.release();
        assert!(!readiness.is_ready());
        b.release();
        assert!(readiness.is_ready());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("wait() returns once the last latch is released")
            .unwrap();
    }

    #[tokio::test]
    async fn a_latch_dropped_unreleased_is_never_ready() {
        let readiness = Readiness::default();
        let (a, b) = (readiness.latch("a"), readiness.latch("b"));
        a.release();
        drop(b);
        assert!(!readiness.is_ready());
        let waited = tokio::time::timeout(Duration::from_millis(50), readiness.wait()).await;
        assert!(waited.is_err());
    }
}
