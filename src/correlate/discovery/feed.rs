//! Feeding discovery from decoded OTLP exports (spans and log records): the same input for the
//! live sidecar (a sampled copy of each export batch, decoded off the hot path) and for
//! `crosstalk discover` over exported files.
//!
//! A record's user is its own user attribute (first configured key present), else its resource's,
//! else its trace's once known ([`Discovery`] holds records waiting for it). `sample` < 1 inspects
//! that share of batches, evenly spread, so the cost falls with it.

use std::borrow::Cow;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{Discovery, Record};
use crate::config::Config;
use crate::normalize::TraceId;
use crate::normalize::otlp::value_as_id;

/// Attributes read per record at most (the rest are ignored, as normalization does).
pub const MAX_ATTRIBUTES: usize = 128;

/// Discovery plus what it needs to read exports: the user keys, the sampling credit.
pub struct Feed {
    pub discovery: Discovery,
    user_keys: Vec<String>,
    credit: f64,
    /// Batches skipped by sampling.
    pub skipped_batches: u64,
}

impl Feed {
    /// From config: the user, tenant and watched keys are never discovery candidates.
    pub fn new(config: &Config) -> Self {
        let skip = (config.identity.user_attributes.iter())
            .chain(&config.identity.tenant_attributes)
            .cloned()
            .chain(config.watches.iter().map(|w| w.attribute.clone()));
        Feed {
            discovery: Discovery::new(config.discovery.clone(), skip),
            user_keys: config.identity.user_attributes.clone(),
            credit: 0.0,
            skipped_batches: 0,
        }
    }

    /// Whether this batch is inspected (`sample` share of batches, evenly spread).
    pub fn take_batch(&mut self) -> bool {
        self.credit += self.discovery.settings().sample;
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            true
        } else {
            self.skipped_batches += 1;
            false
        }
    }

    fn user_of<'a>(&self, attrs: &'a [(&'a str, Cow<'a, str>)]) -> Option<&'a str> {
        self.user_keys.iter().find_map(|k| {
            attrs
                .iter()
                .find(|(key, v)| key == k && !v.is_empty())
                .map(|(_, v)| v.as_ref())
        })
    }

    fn resource_facts<'a>(&self, resource: Option<&'a Resource>) -> (Cow<'a, str>, Option<String>) {
        let attrs = collect(resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]));
        let service = attrs
            .iter()
            .find(|(k, _)| *k == "service.name")
            .map(|(_, v)| Cow::Owned(v.to_string()))
            .unwrap_or(Cow::Borrowed("unknown_service"));
        (service, self.user_of(&attrs).map(str::to_owned))
    }

    /// Count every span of an export.
    pub fn traces(&mut self, request: &ExportTraceServiceRequest, received_ns: u64) {
        for rs in &request.resource_spans {
            let (service, resource_user) = self.resource_facts(rs.resource.as_ref());
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                let attrs = collect(&span.attributes);
                let time_ns = nonzero(span.start_time_unix_nano, received_ns);
                self.record(
                    &service,
                    TraceId::from_bytes(&span.trace_id),
                    &attrs,
                    resource_user.as_deref(),
                    time_ns,
                );
            }
        }
    }

    /// Count every log record of an export.
    pub fn logs(&mut self, request: &ExportLogsServiceRequest, received_ns: u64) {
        for rl in &request.resource_logs {
            let (service, resource_user) = self.resource_facts(rl.resource.as_ref());
            for record in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                let attrs = collect(&record.attributes);
                let time_ns = nonzero(
                    record.time_unix_nano,
                    nonzero(record.observed_time_unix_nano, received_ns),
                );
                self.record(
                    &service,
                    TraceId::from_bytes(&record.trace_id),
                    &attrs,
                    resource_user.as_deref(),
                    time_ns,
                );
            }
        }
    }

    fn record(
        &mut self,
        service: &str,
        trace: Option<TraceId>,
        attrs: &[(&str, Cow<'_, str>)],
        resource_user: Option<&str>,
        time_ns: u64,
    ) {
        let user = self.user_of(attrs).or(resource_user);
        let pairs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        self.discovery.observe(&Record {
            service,
            trace,
            user,
            time_ns,
            attributes: &pairs,
        });
    }
}

fn nonzero(t: u64, fallback: u64) -> u64 {
    if t == 0 { fallback } else { t }
}

/// Attributes as strings (ints in decimal, bytes in hex; other types are no identities).
fn collect(attrs: &[KeyValue]) -> Vec<(&str, Cow<'_, str>)> {
    attrs
        .iter()
        .take(MAX_ATTRIBUTES)
        .filter_map(|kv| value_as_id(&kv.value).map(|v| (kv.key.as_str(), v)))
        .collect()
}
