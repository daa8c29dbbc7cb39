//! The HTTP server loop shared by the OTLP/HTTP listener and the admin API: hyper over
//! hyper-util's auto (HTTP/1 + h2c) builder, with graceful shutdown.
//!
//! Each listener has a connection cap and per-connection header/idle clocks
//! ([`crate::connections`]). On shutdown the listener keeps answering for [`DRAIN_LINGER`]
//! (while connections are open): every new request, also on a kept-alive connection, is
//! answered 503 with `Retry-After` and `Connection: close`, so a client learns to retry instead
//! of writing into a closed socket. Then the listener is dropped and in-flight requests get
//! until the grace deadline to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::connections::{Bounds, Clock, Clocked, InFlight};

/// A client gets this long to finish its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long after shutdown begins a listener with open connections still answers (503).
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// Every response crosstalk's HTTP servers send.
pub type HttpResponse = Response<Full<Bytes>>;

/// A request handler.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> impl Future<Output = HttpResponse> + Send;
}

/// Serve `handler` on `listener` (over TLS when `tls` is set) within `bounds` until `shutdown`
/// fires and [`DRAIN_LINGER`] has passed, then drain for at most `grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<TlsAcceptor>,
    bounds: Bounds,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let linger = async {
        shutdown.cancelled().await;
        let until = tokio::time::Instant::now() + DRAIN_LINGER.min(grace);
        while open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::pin!(linger);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut linger => break,
        };
        let Some(permit) = bounds.admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            clock: Clock::new(),
            bounds: bounds.clone(),
            open: OpenGuard::new(open.clone()),
            _permit: permit,
        };
        let (handler, clock, draining) =
            (handler.clone(), connection.clock.clone(), shutdown.clone());
        let service = service_fn(move |req| {
            let (handler, clock) = (handler.clone(), clock.clone());
            let draining = draining.is_cancelled();
            async move {
                let _in_flight = InFlight::new(clock);
                let response = if draining {
                    shutting_down(req).await
                } else {
                    handler.handle(req).await
                };
                Ok::<_, Infallible>(response)
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        // The handshake runs in the connection's task, so a slow client cannot stall accepts.
        tokio::spawn(async move {
            let clock = connection.clock.clone();
            let served = async {
                match tls {
                    None => {
                        let io = TokioIo::new(Clocked::new(stream, clock.clone()));
                        watcher
                            .watch(builder.serve_connection(io, service).into_owned())
                            .await
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream));
                        let stream = match handshake.await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                            Err(_) => return Ok(()),
                        };
                        let io = TokioIo::new(Clocked::new(stream, clock.clone()));
                        watcher
                            .watch(builder.serve_connection(io, service).into_owned())
                            .await
                    }
                }
            };
            connection.run(served).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over with connections still open");
        }
    }
}

/// One accepted connection: its clock, its listener's bounds and its share of the cap.
struct Connection {
    clock: Arc<Clock>,
    bounds: Bounds,
    open: OpenGuard,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

type ServeResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

impl Connection {
    /// Serve until the connection ends or its clock expires (then it is closed).
    async fn run(self, served: impl Future<Output = ServeResult>) {
        let (header, idle) = (self.bounds.header_timeout, self.bounds.idle_timeout);
        tokio::select! {
            result = served => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            why = self.clock.expired(header, idle) => {
                tracing::debug!(why, "connection closed");
                if why == "header_timeout" {
                    self.bounds.count(why);
                }
            }
        }
        drop(self.open);
    }
}

/// Counts a connection as open while it lives (the drain linger waits for none to be left).
struct OpenGuard(Arc<std::sync::atomic::AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to a request that arrives once shutdown has begun. Its body is read first (for
/// up to [`DRAIN_LINGER`]): closing with unread bytes resets the connection, which can destroy
/// the 503 before the client reads it.
async fn shutting_down(request: Request<Incoming>) -> HttpResponse {
    use http_body_util::BodyExt;
    let body = http_body_util::Limited::new(request.into_body(), 64 << 20);
    let _ = tokio::time::timeout(DRAIN_LINGER, body.collect()).await;
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "crosstalk is shutting down",
    );
    let headers = r.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A response with a body and content type.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> HttpResponse {
    respond(status, "application/json", value.to_string())
}

/// A JSON error body `{"error": message}`.
pub fn json_error(status: StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// The media type of a request, lower-cased, without parameters.
pub fn media_type(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}
