//! OTLP/JSON never panics normalization, and whatever JSON decodes to reads the same through
//! the zero-copy reader once encoded as protobuf.
#![no_main]

use crosstalk::config::Config;
use crosstalk::normalize::otlp::{observe_logs, observe_traces};
use crosstalk::normalize::otlp_fast::{FastDecodeError, observe_traces_protobuf};
use crosstalk::normalize::{Extractor, Tally};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let ex = Extractor::new(&Config::default_config());
    if let Ok(request) = serde_json::from_slice::<ExportTraceServiceRequest>(data) {
        let mut tally = Tally::default();
        let obs = observe_traces(&request, &ex, 1, &mut tally);
        let mut fast_tally = Tally::default();
        let fast = observe_traces_protobuf(&request.encode_to_vec(), &ex, 1, &mut fast_tally);
        // JSON nests deeper than prost's protobuf limit allows; prost would refuse those too.
        if fast != Err(FastDecodeError::RecursionLimit) {
            assert_eq!(fast, Ok(obs));
            assert_eq!(fast_tally, tally);
        }
    }
    if let Ok(request) = serde_json::from_slice::<ExportLogsServiceRequest>(data) {
        observe_logs(&request, &ex, 1, &mut Tally::default());
    }
});
