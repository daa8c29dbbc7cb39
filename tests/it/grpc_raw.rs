//! OTLP/gRPC traces on the zero-copy reader: the same answers as OTLP/HTTP protobuf for the same
//! request, and what prost's codec did for bodies it refuses.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::util::*;

/// A request whose second span carries a watched id over the 256-byte limit: one rejected span.
fn one_good_one_overlong()
-> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let mut request = factory_use("alice", "f-1", 1);
    let mut long = factory_use("bob", "f-2", 2).resource_spans[0].scope_spans[0].spans[0].clone();
    for a in &mut long.attributes {
        if a.key == "agent_factory.instance_id" {
            a.value.as_mut().unwrap().value = Some(Value::StringValue("x".repeat(300)));
        }
    }
    request.resource_spans[0].scope_spans[0].spans.push(long);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_answer_one_request_alike() {
    let s = Server::start(FACTORY_WATCH);
    let request = one_good_one_overlong();
    let mut client = TraceServiceClient::connect(format!("http://{}", s.grpc))
        .await
        .unwrap();
    let over_grpc = client.export(request.clone()).await.unwrap().into_inner();
    let body = request.encode_to_vec();
    let over_http = tokio::task::spawn_blocking(move || {
        let reply = s.post("/v1/traces", "application/x-protobuf", &body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        ExportTraceServiceResponse::decode(&reply.body[..]).unwrap()
    })
    .await
    .unwrap();
    let partial = over_grpc
        .partial_success
        .as_ref()
        .expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert_eq!(over_grpc, over_http);
}

/// Sends raw bytes as the request message, as a broken or hostile client would.
#[derive(Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_traces_are_internal_and_the_server_keeps_serving() {
    let s = Server::start(FACTORY_WATCH);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let refused = raw
        .unary(
            tonic::Request::new(b"\xff\xff\xff\xff garbage".to_vec()),
            path,
            RawBytes,
        )
        .await
        .expect_err("garbage is refused");
    // What prost's codec answered for a body it cannot decode.
    assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
    assert!(refused.message().contains("protobuf"), "{refused:?}");

    let mut client = TraceServiceClient::new(channel);
    client.export(factory_use("alice", "g", 1)).await.unwrap();
    client.export(factory_use("bob", "g", 2)).await.unwrap();
    let findings = tokio::task::spawn_blocking(move || s.findings())
        .await
        .unwrap();
    assert_eq!(findings.len(), 1);
}
