//! The gRPC listener against half-sent requests (issue 15), with a raw HTTP/2 client: a message
//! trickled past `limits.body_timeout` is answered `DEADLINE_EXCEEDED`; a connection that
//! starts no request within `limits.header_timeout` is closed (on the h2c HTTP listener too);
//! each is counted. A connection that did export may then sit quiet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::util::*;

type Body = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
type Feed = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LIMITS: &str = "[limits]\nheader_timeout = \"500ms\"\nbody_timeout = \"500ms\"\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP/2 connection to `addr` (preface and settings sent), and the task driving it, which
/// ends when the server closes the connection.
async fn h2(addr: SocketAddr) -> (SendRequest<Body>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driving = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driving)
}

/// A `TraceService/Export` request whose body is whatever is sent through the feed.
fn export(addr: SocketAddr) -> (http::Request<Body>, Feed) {
    let (feed, body) = mpsc::channel(16);
    let request = http::Request::post(format!("http://{addr}{EXPORT}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(ReceiverStream::new(body)))
        .unwrap();
    (request, feed)
}

/// `request` as one gRPC message: not compressed, its length, its bytes.
fn framed(request: &ExportTraceServiceRequest) -> Vec<u8> {
    let message = request.encode_to_vec();
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// The `grpc-status` of a response: in its headers (trailers-only), else in its trailers.
async fn grpc_status(response: http::Response<Incoming>) -> Option<String> {
    let text = |v: &http::HeaderValue| v.to_str().unwrap().to_owned();
    if let Some(status) = response.headers().get("grpc-status") {
        return Some(text(status));
    }
    let body = response.into_body().collect().await.ok()?;
    body.trailers()?.get("grpc-status").map(text)
}

/// Send a whole export on `sender`; its `grpc-status`.
async fn export_whole(sender: &mut SendRequest<Body>, addr: SocketAddr, trace: u128) -> String {
    let (request, feed) = export(addr);
    let message = framed(&factory_use("alice", "f", trace));
    feed.send(Ok(Frame::data(message.into()))).await.unwrap();
    drop(feed);
    let response = sender.send_request(request).await.unwrap();
    grpc_status(response).await.unwrap_or_default()
}

#[test]
fn a_grpc_message_trickled_past_body_timeout_is_deadline_exceeded_and_counted() {
    let s = Server::start(&format!("{LIMITS}{FACTORY_WATCH}"));
    let (status, took) = runtime().block_on(async {
        let (mut sender, _connection) = h2(s.grpc).await;
        let (request, feed) = export(s.grpc);
        let message = framed(&factory_use("alice", "f", 1));
        // A byte every 50 ms: each read is quick, the message is never whole in time.
        let trickle = tokio::spawn(async move {
            for byte in message {
                if feed.send(Ok(Frame::data(vec![byte].into()))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let sent = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request));
        let response = answer.await.expect("no answer within 5 s").unwrap();
        let took = sent.elapsed();
        trickle.abort();
        (grpc_status(response).await, took)
    });
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        s.metric(r#"crosstalk_rejected_total{source="otlp_grpc",reason="body_timeout"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"crosstalk_received_total{signal="traces",transport="grpc"}"#),
        0.0,
        "nothing of the late message was taken"
    );
}

#[test]
fn a_connection_with_no_request_within_header_timeout_is_closed_one_that_exported_may_rest() {
    let s = Server::start(&format!("{LIMITS}{FACTORY_WATCH}"));
    runtime().block_on(async {
        // The HTTP/2 preface and settings, then nothing: on gRPC and on the h2c HTTP listener.
        for addr in [s.grpc, s.http] {
            let (_sender, connection) = h2(addr).await;
            let opened = Instant::now();
            let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
            assert!(
                closed.is_ok(),
                "{addr}: kept a connection that sent no request"
            );
            let took = opened.elapsed();
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_secs(3),
                "{addr}: {took:?}"
            );
        }
        // A connection that exported is quiet between exports, not late.
        let (mut sender, connection) = h2(s.grpc).await;
        assert_eq!(export_whole(&mut sender, s.grpc, 1).await, "0");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!connection.is_finished(), "a quiet connection was cut");
        assert_eq!(export_whole(&mut sender, s.grpc, 2).await, "0");
    });
    let cut = |source: &str| {
        s.metric(&format!(
            r#"crosstalk_rejected_total{{source="{source}",reason="header_timeout"}}"#
        ))
    };
    assert_eq!(cut("otlp_grpc"), 1.0);
    assert_eq!(cut("otlp_http"), 1.0);
    // Not even the preface: the gRPC listener's clock runs from the accept.
    let silent = std::net::TcpStream::connect(s.grpc).unwrap();
    assert!(
        closed_within(silent, Duration::from_secs(3)),
        "a silent connection was kept"
    );
    assert_eq!(cut("otlp_grpc"), 2.0);
}

/// Whether the server closes `stream` (EOF or reset) within `within`, whatever it sends first
/// (an HTTP/2 server opens with its settings).
fn closed_within(mut stream: std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    let until = Instant::now() + within;
    let mut buf = [0u8; 256];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                use std::io::ErrorKind::{TimedOut, WouldBlock};
                return !matches!(e.kind(), WouldBlock | TimedOut);
            }
        }
    }
    false
}
