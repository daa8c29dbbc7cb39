//! Realistic OTLP trace payloads, shared by the load generator and the criterion benches (which
//! include this file by path).
//!
//! A batch is one resource (an `agent-backend` pod) with `spans` server spans of about 420
//! encoded bytes and 10 attributes each: HTTP semantic conventions, a user agent, `user.id`,
//! and (for `watched_share` of the spans) an `agent_factory.instance_id`. Each user owns
//! `factories_per_user` factories; a `conflict_share` of the watched spans use another user's
//! factory, which is the leak crosstalk exists to find. Deterministic for a given seed.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// What the generated traffic looks like.
#[derive(Debug, Clone)]
pub struct Shape {
    pub spans: usize,
    pub users: u64,
    pub factories_per_user: u64,
    /// Share of watched spans that use a factory of another user.
    pub conflict_share: f64,
    /// Share of spans carrying the watched attribute.
    pub watched_share: f64,
    /// Consecutive spans of one user that share a trace (a request and its inner spans).
    pub spans_per_trace: usize,
    /// The `service.instance.id` of the resource.
    pub pod: String,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            spans: 512,
            users: 10_000,
            factories_per_user: 4,
            conflict_share: 0.001,
            watched_share: 1.0,
            spans_per_trace: 4,
            pod: "pod-1".into(),
        }
    }
}

/// xorshift64*: enough randomness for traffic, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn string(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

const ROUTES: [&str; 4] = [
    "/v1/agents/{id}/runs",
    "/v1/agents/{id}/messages",
    "/v1/factories/{id}/tools",
    "/v1/sessions/{id}/events",
];

const USER_AGENT: &str = "python-httpx/0.27.0";

/// Makes batches of a [`Shape`].
pub struct Generator {
    pub shape: Shape,
    rng: Rng,
    trace_seq: u128,
    /// The trace being filled and whose it is, with the spans it still takes.
    trace: (u128, u64, usize),
}

impl Generator {
    pub fn new(shape: Shape, seed: u64) -> Self {
        Generator {
            shape,
            rng: Rng::new(seed),
            trace_seq: u128::from(seed) << 64,
            trace: (0, 0, 0),
        }
    }

    /// A user's name as it appears in `user.id`.
    pub fn user(n: u64) -> String {
        format!("user-{n:07}")
    }

    /// The `agent_factory.instance_id` of a user's `k`-th factory.
    pub fn factory(user: u64, k: u64) -> String {
        format!("factory-{user:07}-{k}")
    }

    pub fn resource(&self) -> Resource {
        Resource {
            attributes: vec![
                kv("service.name", string("agent-backend")),
                kv("service.namespace", string("agents")),
                kv("service.instance.id", string(self.shape.pod.clone())),
                kv("service.version", string("2.14.1")),
                kv("host.name", string("node-a17.internal")),
                kv("telemetry.sdk.language", string("python")),
            ],
            ..Default::default()
        }
    }

    /// A fresh trace id.
    pub fn trace_id(&mut self) -> u128 {
        self.trace_seq += 1;
        self.trace_seq ^ (u128::from(self.rng.next()) << 64)
    }

    /// One server span of `user` in `trace`, using `factory` if any.
    pub fn span(&mut self, trace: u128, user: u64, factory: Option<String>, now_ns: u64) -> Span {
        let route = ROUTES[self.rng.below(ROUTES.len() as u64) as usize];
        let id = self.rng.below(1_000_000);
        let path = route
            .split('/')
            .map(|p| {
                if p.starts_with('{') {
                    id.to_string()
                } else {
                    p.into()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut attributes = vec![
            kv("http.request.method", string("POST")),
            kv("http.route", string(route)),
            kv("url.path", string(path)),
            kv("http.response.status_code", Value::IntValue(200)),
            kv("server.address", string("api.internal")),
            kv(
                "client.address",
                string(format!("10.1.{}.{}", id % 250, id % 199)),
            ),
            kv("user_agent.original", string(USER_AGENT)),
            kv("thread.id", Value::IntValue((id % 64) as i64)),
            kv("user.id", string(Self::user(user))),
        ];
        if let Some(f) = factory {
            attributes.push(kv("agent_factory.instance_id", string(f)));
        } else {
            attributes.push(kv("code.function.name", string("handle_request_run")));
        }
        let start = now_ns - 5_000_000 - self.rng.below(1_000_000);
        Span {
            trace_id: trace.to_be_bytes().to_vec(),
            span_id: (self.rng.next() | 1).to_be_bytes().to_vec(),
            parent_span_id: (self.rng.next() | 1).to_be_bytes().to_vec(),
            name: format!("POST {route}"),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 3_000_000,
            attributes,
            status: Some(Status {
                code: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// One batch of `shape.spans` spans.
    pub fn batch(&mut self, now_ns: u64) -> ExportTraceServiceRequest {
        let mut spans = Vec::with_capacity(self.shape.spans);
        for _ in 0..self.shape.spans {
            if self.trace.2 == 0 {
                let user = self.rng.below(self.shape.users);
                self.trace = (self.trace_id(), user, self.shape.spans_per_trace.max(1));
            }
            self.trace.2 -= 1;
            let (trace, user) = (self.trace.0, self.trace.1);
            let factory = self.rng.chance(self.shape.watched_share).then(|| {
                let owner = if self.rng.chance(self.shape.conflict_share) {
                    (user + 1 + self.rng.below(self.shape.users - 1)) % self.shape.users
                } else {
                    user
                };
                Self::factory(owner, self.rng.below(self.shape.factories_per_user))
            });
            spans.push(self.span(trace, user, factory, now_ns));
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource()),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
