//! The zero-copy trace reader and prost + `observe_traces` agree on any bytes: the same
//! observations and tally, or both reject.
#![no_main]

use crosstalk::config::Config;
use crosstalk::normalize::otlp::observe_traces;
use crosstalk::normalize::otlp_fast::observe_traces_protobuf;
use crosstalk::normalize::{Extractor, Tally};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn extractor() -> Extractor {
    // Small limits, so that over-long ids and the attribute cap are reachable.
    let mut config = Config::default_config();
    config.limits.max_id_bytes = 12;
    config.limits.max_attributes_per_span = 6;
    Extractor::new(&config)
}

fuzz_target!(|data: &[u8]| {
    let ex = extractor();
    let reference = ExportTraceServiceRequest::decode(data).ok().map(|request| {
        let mut tally = Tally::default();
        (observe_traces(&request, &ex, 1, &mut tally), tally)
    });
    let mut tally = Tally::default();
    let fast = observe_traces_protobuf(data, &ex, 1, &mut tally)
        .ok()
        .map(|obs| (obs, tally));
    assert_eq!(fast, reference);
});
