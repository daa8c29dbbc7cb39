//! gRPC requests within the listener's limits, as on the HTTP listeners: each request is in
//! flight on its connection's clock (which stops the connection's wait for a first request; see
//! `connections`), and its message must arrive whole within `limits.body_timeout`. A client that
//! sends the HEADERS and then trickles or stops its DATA is answered `DEADLINE_EXCEEDED`,
//! counted in `crosstalk_rejected_total{source="otlp_grpc", reason="body_timeout"}`.
//!
//! The deadline sits on the request body, not on the call (tonic's `Server::timeout`): a call
//! timeout also runs while an export that did arrive waits for its commit, so a slow disk would
//! cut acknowledged-to-be work with `CANCELLED`, uncounted; and a per-read timeout would let a
//! body trickled a byte at a time live forever. One deadline from the head to the end of the
//! body covers both a stalled and a trickled message, and nothing after it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use crate::connections::{AdmittedInfo, InFlight};
use crate::telemetry::Metrics;
use crate::telemetry::events::Rejected;

/// The bounds of one listener's requests (see the module doc).
#[derive(Clone)]
pub struct RequestBounds {
    body_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The `source` label a late body is counted under.
    source: &'static str,
}

impl RequestBounds {
    pub fn new(body_timeout: Duration, metrics: Arc<Metrics>, source: &'static str) -> Self {
        RequestBounds {
            body_timeout,
            metrics,
            source,
        }
    }

    /// `inner` with its requests held to these bounds.
    pub fn around<S>(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            bounds: self.clone(),
        }
    }
}

/// A gRPC service whose requests are held to [`RequestBounds`].
#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    bounds: RequestBounds,
}

impl<S: NamedService> NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Bounded<S>
where
    S: Service<http::Request<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let in_flight = (request.extensions().get::<AdmittedInfo>())
            .map(|connection| InFlight::new(connection.clock.clone()));
        let bounds = self.bounds.clone();
        let request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep(bounds.body_timeout)),
                late: Some(bounds),
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let _in_flight = in_flight;
            response.await
        })
    }
}

/// A request body that fails with `DEADLINE_EXCEEDED` when it has not ended by its deadline.
/// (Not `CANCELLED`: tonic reads a cancelled request body as one that ended.)
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    /// Taken when the deadline passes (or the body ends): the body is late at most once.
    late: Option<RequestBounds>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() {
                this.late = None;
            }
            return Poll::Ready(frame);
        }
        let Some(late) = this.late.as_ref() else {
            return Poll::Pending;
        };
        if this.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Rejected {
            source: late.source,
            reason: "body_timeout",
            n: 1,
        }
        .emit(&late.metrics);
        let message = format!(
            "the request message did not arrive whole within {:?} (limits.body_timeout)",
            late.body_timeout
        );
        this.late = None;
        Poll::Ready(Some(Err(Status::deadline_exceeded(message))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
