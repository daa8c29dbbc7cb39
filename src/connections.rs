//! Per-listener connection bounds, so that slow, idle or greedy clients cannot take crosstalk's
//! file descriptors: a cap on open connections (`limits.max_connections`, clamped below the
//! process's open-files limit, so the admin listener keeps descriptors to answer `/ready` and
//! `/metrics` when the OTLP listeners are full), and per-connection clocks that close a
//! connection whose request head does not arrive (`limits.header_timeout`) or that sits idle
//! (`limits.idle_timeout`). On HTTP/2 (h2c on the HTTP listeners, every gRPC connection) frames
//! with no request in flight are pings and settings, not a head: there the header clock runs
//! only until the connection's first request, which must start within `header_timeout` of the
//! preface (gRPC: of the connection's accept, TLS handshake included).
//!
//! At the cap a new connection is accepted and closed at once (counted in
//! `crosstalk_rejected_total{source, reason="too_many_connections"}`): the client learns at once
//! and retries, instead of waiting in the kernel's backlog.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::telemetry::Metrics;
use crate::telemetry::events::Rejected;

/// Descriptors kept out of the listeners' share: the store and its WAL, event logs, Redis,
/// Alertmanager, stdio and the listening sockets themselves.
const RESERVED_FDS: u64 = 128;
/// Listeners sharing what is left (OTLP/HTTP, OTLP/gRPC, admin).
const LISTENERS: u64 = 3;

/// The soft open-files limit (`RLIMIT_NOFILE`), read from `/proc/self/limits`; None when it
/// cannot be read (not Linux) or is unlimited.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `configured` clamped so that the three listeners together stay below `fd_limit`.
pub fn per_listener_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let share = (limit.saturating_sub(RESERVED_FDS) / LISTENERS).max(1);
    configured.min(usize::try_from(share).unwrap_or(usize::MAX))
}

/// The connection cap and timeouts of one listener.
#[derive(Clone)]
pub struct Bounds {
    permits: Arc<Semaphore>,
    /// The `source` label its refusals are counted under.
    source: &'static str,
    metrics: Arc<Metrics>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Bounds {
    pub fn new(
        source: &'static str,
        max_connections: usize,
        header_timeout: Duration,
        idle_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Bounds {
            permits: Arc::new(Semaphore::new(max_connections)),
            source,
            metrics,
            header_timeout,
            idle_timeout,
        }
    }

    /// Count a connection refused or cut under `reason`.
    pub fn count(&self, reason: &str) {
        Rejected {
            source: self.source,
            reason,
            n: 1,
        }
        .emit(&self.metrics);
    }

    /// A permit for a connection just accepted, or None (the connection is to be closed) at
    /// the cap.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.count("too_many_connections");
        }
        permit
    }

    /// The accepted connections of `listener` that fit under the cap, for tonic's
    /// `serve_with_incoming` (gRPC, so HTTP/2): the permit goes with the stream and is released
    /// when it closes, and each connection is cut (counted as `header_timeout`) when no request
    /// has started within `header_timeout` of its accept. An accept task hands them over a
    /// channel of one (full: it waits for tonic to take the last one, as accepting directly
    /// would); it ends when tonic drops the stream.
    pub fn incoming(self, listener: TcpListener) -> ReceiverStream<std::io::Result<Admitted>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = tx.closed() => return,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(permit) = self.admit() else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                if tx.send(Ok(self.admitted(stream, permit))).await.is_err() {
                    return;
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// An HTTP/2 connection on a clock that starts at once, with its watchdog.
    fn admitted(&self, stream: TcpStream, permit: OwnedSemaphorePermit) -> Admitted {
        let clock = Clock::h2_from_now();
        let (watched, bounds) = (clock.clone(), self.clone());
        let watchdog = Box::pin(async move {
            let why = watched.watch(bounds.header_timeout, None).await;
            tracing::debug!(why, "connection closed");
            bounds.count(why);
        });
        Admitted {
            stream,
            info: AdmittedInfo { clock },
            watchdog,
            cut: false,
            _permit: permit,
        }
    }
}

/// A gRPC connection: its TCP stream, one of its listener's permits, and the watchdog that cuts
/// it when no request started in time (its reads fail from then on, so tonic closes it).
pub struct Admitted {
    stream: TcpStream,
    info: AdmittedInfo,
    watchdog: Pin<Box<dyn Future<Output = ()> + Send>>,
    cut: bool,
    _permit: OwnedSemaphorePermit,
}

/// What a gRPC request knows of its connection (a request extension, set by tonic): the clock
/// its requests start and finish on.
#[derive(Clone)]
pub struct AdmittedInfo {
    pub clock: Arc<Clock>,
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = AdmittedInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // The server keeps a read pending on a live connection, so the watchdog is polled here
        // and its timer wakes the connection's task.
        if !self.cut && self.watchdog.as_mut().poll(cx).is_ready() {
            self.cut = true;
        }
        if self.cut {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within limits.header_timeout",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What one HTTP connection is doing, shared by its I/O, its requests and its watchdog.
pub struct Clock {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or response finished.
    last_activity_ms: AtomicU64,
    /// Milliseconds since `start` (+1; 0: none) of the first byte of a request head not yet
    /// complete.
    head_from_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2: bytes with no request in flight are frames (pings, settings), not a head; only
    /// the wait for the first request is timed.
    h2: AtomicBool,
    /// Whether any request has started on this connection.
    served: AtomicBool,
}

impl Clock {
    pub fn new() -> Arc<Self> {
        Arc::new(Clock {
            start: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            head_from_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            served: AtomicBool::new(false),
        })
    }

    /// An HTTP/2 connection (gRPC) whose wait for its first request starts now.
    pub fn h2_from_now() -> Arc<Self> {
        let clock = Self::new();
        clock.h2.store(true, Ordering::Relaxed);
        clock.head_from_ms.store(1, Ordering::Relaxed);
        clock
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn read(&self, first_bytes: &[u8]) {
        let now = self.now_ms();
        self.last_activity_ms.store(now, Ordering::Relaxed);
        if first_bytes.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = (self.head_from_ms).compare_exchange(
                0,
                now + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// A request's head is complete; it is being handled.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.head_from_ms.store(0, Ordering::Release);
    }

    pub fn request_finished(&self) {
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves when the connection must be closed, with why: a head that did not arrive
    /// within `header` (HTTP/2: a first request), or nothing in flight and nothing read for
    /// `idle`.
    pub async fn expired(&self, header: Duration, idle: Duration) -> &'static str {
        self.watch(header, Some(idle)).await
    }

    /// [`Self::expired`], with the idle clock only when `idle` is set.
    pub async fn watch(&self, header: Duration, idle: Option<Duration>) -> &'static str {
        let header = header.as_millis() as u64;
        let idle = idle.map(|idle| idle.as_millis() as u64);
        loop {
            let now = self.now_ms();
            let mut next = now + idle.unwrap_or(header).min(header).max(1);
            if self.in_flight.load(Ordering::Acquire) == 0 {
                let head_from = self.head_from_ms.load(Ordering::Acquire);
                let awaits_head =
                    !self.h2.load(Ordering::Relaxed) || !self.served.load(Ordering::Acquire);
                if head_from != 0 && awaits_head {
                    let due = head_from - 1 + header;
                    if now >= due {
                        return "header_timeout";
                    }
                    next = next.min(due);
                }
                if let Some(idle) = idle {
                    let due = self.last_activity_ms.load(Ordering::Relaxed) + idle;
                    if now >= due {
                        return "idle_timeout";
                    }
                    next = next.min(due);
                }
            }
            tokio::time::sleep(Duration::from_millis(next.saturating_sub(now).max(1))).await;
        }
    }
}

/// A request in flight on its connection's clock, until dropped (also when its future is).
pub struct InFlight(Arc<Clock>);

impl InFlight {
    pub fn new(clock: Arc<Clock>) -> Self {
        clock.request_started();
        InFlight(clock)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// An HTTP connection's I/O, telling its [`Clock`] when bytes arrive.
pub struct Clocked<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S> Clocked<S> {
    pub fn new(inner: S, clock: Arc<Clock>) -> Self {
        Clocked { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Clocked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Clocked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_caps_stay_below_the_open_files_limit() {
        assert_eq!(per_listener_cap(4096, None), 4096);
        assert_eq!(per_listener_cap(4096, Some(1024)), (1024 - 128) / 3);
        assert_eq!(per_listener_cap(100, Some(1_048_576)), 100);
        assert!(per_listener_cap(4096, Some(10)) >= 1);
    }

    #[test]
    fn open_files_limit_is_read_on_linux() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
