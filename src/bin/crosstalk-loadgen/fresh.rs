//! Never-reused instance ids for `--fresh-instances`: the healthy per-request service, where
//! every span uses an object made for its request.
//!
//! Bodies are encoded once up front, as in the other modes, so the sender still spends its time
//! sending: each watched id is written with a fixed-width placeholder, and before every send the
//! sender stamps its own connection and round number over the placeholders in place. An id is
//! then unique over (connection, round, span), and stamping costs a few hundred bytes of writes
//! per 512-span body instead of an encode.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// The watched attribute the generator writes (see `payload`).
const WATCHED: &str = "agent_factory.instance_id";
/// Sixteen bytes that cannot occur elsewhere in a generated body; overwritten by a hex stamp.
const PLACEHOLDER: &[u8; 16] = b"@@@@@@@@@@@@@@@@";

/// Rewrites every watched id of `batch` as `fx-<placeholder>-<n>` with `n` counting up from
/// `*next` across batches, so no two spans of the generated set share an id.
pub fn mark(batch: &mut ExportTraceServiceRequest, next: &mut u64) {
    let placeholder = std::str::from_utf8(PLACEHOLDER).unwrap_or_default();
    let spans = batch
        .resource_spans
        .iter_mut()
        .flat_map(|r| r.scope_spans.iter_mut())
        .flat_map(|s| s.spans.iter_mut());
    for attribute in spans.flat_map(|s| s.attributes.iter_mut()) {
        if attribute.key != WATCHED {
            continue;
        }
        if let Some(value) = attribute.value.as_mut() {
            value.value = Some(Value::StringValue(format!("fx-{placeholder}-{next:08}")));
            *next += 1;
        }
    }
}

/// An encoded body and where its placeholders are.
pub struct Stampable {
    pub body: Vec<u8>,
    offsets: Vec<usize>,
}

impl Stampable {
    pub fn new(body: Vec<u8>) -> Self {
        let offsets = body
            .windows(PLACEHOLDER.len())
            .enumerate()
            .filter(|(_, w)| *w == PLACEHOLDER)
            .map(|(i, _)| i)
            .collect();
        Stampable { body, offsets }
    }

    /// Writes `tag` as 16 hex digits over every placeholder (or over the previous stamp).
    pub fn stamp(&mut self, tag: u64) {
        let hex = format!("{tag:016x}");
        for &at in &self.offsets {
            self.body[at..at + PLACEHOLDER.len()].copy_from_slice(hex.as_bytes());
        }
    }

    /// How many ids one send of this body carries.
    #[cfg(test)]
    pub fn ids(&self) -> usize {
        self.offsets.len()
    }
}

/// The stamp of `round` on `connection`: unique while there are fewer than 65,536 connections.
pub fn tag(connection: usize, round: u64) -> u64 {
    ((connection as u64) << 48) | (round & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Generator, Shape};
    use prost::Message;

    #[test]
    fn stamped_bodies_carry_distinct_ids_per_round_and_connection() {
        let mut generator = Generator::new(Shape::default(), 7);
        let mut next = 0;
        let mut batch = generator.batch(crate::payload::now_ns());
        mark(&mut batch, &mut next);
        let mut body = Stampable::new(batch.encode_to_vec());
        assert_eq!(
            body.ids(),
            512,
            "every span of the default shape is watched"
        );
        let ids = |body: &Stampable| -> Vec<String> {
            let decoded = ExportTraceServiceRequest::decode(body.body.as_slice()).unwrap();
            decoded.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .flat_map(|s| s.attributes.iter())
                .filter(|a| a.key == WATCHED)
                .map(|a| format!("{:?}", a.value))
                .collect()
        };
        body.stamp(tag(0, 1));
        let first = ids(&body);
        body.stamp(tag(1, 1));
        let second = ids(&body);
        let mut all: Vec<_> = first.iter().chain(&second).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1024, "ids repeat across stamps or within a body");
    }
}
