//! OTLP/gRPC traces on the zero-copy path: a tonic codec that hands a request's raw protobuf
//! bytes on instead of a prost message, and the `TraceService` server built on it.
//!
//! The generated `TraceServiceServer` is tied to the prost codec, which builds every span,
//! attribute and string of a request only for the engine to read a few of them: gRPC did 0.25×
//! the spans of OTLP/HTTP with the same load. Here tonic still does the gRPC framing, gzip,
//! the message size limit and the status mapping exactly as for the generated server; the bytes
//! then go through the same reader as OTLP/HTTP protobuf (`normalize::otlp_fast`), which accepts
//! what prost accepts (differential tests and a fuzz target hold it to that).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};

use super::grpc::OtlpGrpc;

/// The one method of `TraceService`.
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Decodes a message to its bytes (a split of tonic's buffer, not a copy); encodes prost `Resp`.
pub struct RawCodec<Resp>(PhantomData<Resp>);

impl<Resp> Default for RawCodec<Resp> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

impl<Resp: prost::Message + Send + 'static> Codec for RawCodec<Resp> {
    type Encode = Resp;
    type Decode = Bytes;
    type Encoder = ProstResponse<Resp>;
    type Decoder = RawRequest;

    fn encoder(&mut self) -> Self::Encoder {
        ProstResponse(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawRequest
    }
}

/// The request's bytes, as tonic framed (and gunzipped) them.
pub struct RawRequest;

impl Decoder for RawRequest {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A prost response, encoded as the generated server would.
pub struct ProstResponse<Resp>(PhantomData<Resp>);

impl<Resp: prost::Message> Encoder for ProstResponse<Resp> {
    type Item = Resp;
    type Error = Status;

    fn encode(&mut self, item: Resp, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::new(Code::Internal, format!("encoding the response: {e}")))
    }
}

/// `TraceService` over [`RawCodec`]: gzip both ways and the decoding size limit, as configured
/// for the other services.
#[derive(Clone)]
pub struct RawTraceServer {
    service: OtlpGrpc,
    max_decoding_message_size: usize,
}

impl RawTraceServer {
    pub fn new(service: OtlpGrpc, max_decoding_message_size: usize) -> Self {
        RawTraceServer {
            service,
            max_decoding_message_size,
        }
    }
}

impl NamedService for RawTraceServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// One call of `Export`.
struct Export(OtlpGrpc);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.export_traces_protobuf(request).await })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for RawTraceServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let (service, max) = (self.service.clone(), self.max_decoding_message_size);
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec::<ExportTraceServiceResponse>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max);
            Ok(grpc.unary(Export(service), request).await)
        })
    }
}
