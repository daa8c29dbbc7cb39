//! `crosstalk-loadgen`: drives a running crosstalk with realistic OTLP traffic and prints what it
//! achieved.
//!
//! Batches (see [`payload`]) are generated and encoded up front, so the generator spends its
//! time sending. OTLP/HTTP uses plain keep-alive connections over `std::net::TcpStream`, one
//! thread each; OTLP/gRPC uses tonic clients on a tokio runtime. With `--admin`, a probe thread
//! measures detection latency: it binds a fresh factory to one user, then times from sending a
//! second user's span on it until `GET /api/v1/findings/{id}` answers 200.
#![forbid(unsafe_code)]

mod fresh;
mod grpc_bytes;
mod payload;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crosstalk::config::Config;
use crosstalk::correlate::FindingKind;
use crosstalk::correlate::finding::finding_id;
use crosstalk::normalize::otlp::resource_of;
use crosstalk::normalize::{Extractor, Tally};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use payload::{Generator, Shape};

#[derive(Debug, Parser)]
#[command(
    name = "crosstalk-loadgen",
    about = "Send realistic OTLP traces to crosstalk"
)]
struct Args {
    /// OTLP/HTTP address to send protobuf to.
    #[arg(long, conflicts_with = "grpc", required_unless_present = "grpc")]
    http: Option<SocketAddr>,
    /// OTLP/gRPC address.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Concurrent connections (each keeps one request in flight).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Target spans per second over all connections; 0 sends flat out.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Spans per export request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    #[arg(long, default_value_t = 4)]
    factories_per_user: u64,
    /// Share of watched spans that use another user's factory.
    #[arg(long, default_value_t = 0.001)]
    conflict_share: f64,
    /// Share of spans carrying the watched attribute.
    #[arg(long, default_value_t = 1.0)]
    watched_share: f64,
    /// Consecutive spans of one user sharing a trace.
    #[arg(long, default_value_t = 4)]
    spans_per_trace: usize,
    /// Distinct batches generated up front and sent in turn (128 x 512 spans cover the
    /// default 40,000 factories).
    #[arg(long, default_value_t = 128)]
    distinct_batches: usize,
    /// Admin address: also measure detection latency with probe conflicts.
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    probe_every: Duration,
    /// Print one JSON line of results last.
    #[arg(long)]
    json: bool,
    /// A never-reused instance id on every watched span (the healthy per-request service);
    /// OTLP/HTTP only.
    #[arg(long, conflicts_with = "grpc")]
    fresh_instances: bool,
    /// Stop after about this many spans (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    total_spans: u64,
    /// Write --total-spans spans as OTLP JSON lines (one export request per line) to this file
    /// instead of sending them.
    #[arg(long, value_name = "FILE")]
    write_jsonl: Option<std::path::PathBuf>,
}

/// Counters shared by the sender threads.
#[derive(Default)]
struct Totals {
    spans: AtomicU64,
    requests: AtomicU64,
    shed: AtomicU64,
    errors: AtomicU64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let shape = Shape {
        spans: args.batch,
        users: args.users.max(2),
        factories_per_user: args.factories_per_user.max(1),
        conflict_share: args.conflict_share,
        watched_share: args.watched_share,
        spans_per_trace: args.spans_per_trace,
        pod: "pod-1".into(),
    };
    let now = payload::now_ns();
    let mut generator = Generator::new(shape.clone(), 1);
    if let Some(path) = &args.write_jsonl {
        return write_jsonl(path, &mut generator, args.total_spans, now);
    }
    let mut fresh_ids = 0;
    let batches: Vec<ExportTraceServiceRequest> = (0..args.distinct_batches.max(1))
        .map(|_| generator.batch(now))
        .map(|mut batch| {
            if args.fresh_instances {
                fresh::mark(&mut batch, &mut fresh_ids);
            }
            batch
        })
        .collect();
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let probe = args.admin.zip(args.http.or(args.grpc)).map(|(admin, _)| {
        let (stop, http) = (stop.clone(), args.http);
        let every = args.probe_every;
        std::thread::spawn(move || probe_detection(http, admin, every, &stop))
    });
    let started = Instant::now();
    let latencies = if let Some(addr) = args.http {
        let bodies: Arc<Vec<Vec<u8>>> =
            Arc::new(batches.iter().map(|b| b.encode_to_vec()).collect());
        run_http(addr, &args, bodies, &totals, &stop)
    } else if let Some(addr) = args.grpc {
        let bodies = batches
            .iter()
            .map(|b| bytes::Bytes::from(b.encode_to_vec()))
            .collect();
        run_grpc(addr, &args, bodies, &totals, &stop)
    } else {
        Vec::new()
    };
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let detections = probe.and_then(|p| p.join().ok()).unwrap_or_default();
    report(&args, &totals, elapsed, latencies, detections)
}

fn report(
    args: &Args,
    totals: &Totals,
    elapsed: f64,
    mut latencies: Vec<f64>,
    mut detections: Vec<f64>,
) -> std::process::ExitCode {
    let spans = totals.spans.load(Ordering::Relaxed);
    let requests = totals.requests.load(Ordering::Relaxed);
    let (shed, errors) = (
        totals.shed.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
    );
    let spans_per_s = spans as f64 / elapsed;
    let (lat50, lat99) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    );
    let (det50, det99) = (
        percentile(&mut detections, 0.5),
        percentile(&mut detections, 0.99),
    );
    println!(
        "sent {spans} spans in {requests} requests over {elapsed:.1}s: {spans_per_s:.0} spans/s \
         ({shed} shed, {errors} errors); request latency p50 {lat50:.2} ms, p99 {lat99:.2} ms"
    );
    if !detections.is_empty() {
        println!(
            "detection over {} probes: p50 {det50:.2} ms, p99 {det99:.2} ms",
            detections.len()
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "spans_per_s": spans_per_s.round(),
                "spans": spans,
                "requests": requests,
                "shed": shed,
                "errors": errors,
                "latency_p50_ms": lat50,
                "latency_p99_ms": lat99,
                "probes": detections.len(),
                "detect_p50_ms": det50,
                "detect_p99_ms": det99,
            })
        );
    }
    if errors > 0 || spans == 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// `crosstalk check` input: OTLP JSON lines, one export request per line, about `total` spans.
fn write_jsonl(
    path: &std::path::Path,
    generator: &mut Generator,
    total: u64,
    now: u64,
) -> std::process::ExitCode {
    let mut write = || -> std::io::Result<u64> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut spans = 0;
        while spans < total.max(1) {
            let batch = generator.batch(now);
            serde_json::to_writer(&mut out, &batch)?;
            out.write_all(b"\n")?;
            spans += generator.shape.spans as u64;
        }
        out.flush()?;
        Ok(spans)
    };
    match write() {
        Ok(spans) => {
            println!("wrote {spans} spans to {}", path.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crosstalk-loadgen: writing {}: {e}", path.display());
            std::process::ExitCode::from(1)
        }
    }
}

/// The `q` quantile in milliseconds (NaN when empty).
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// Per-connection pacing: the gap between requests that meets `rate` over all connections.
fn pacing(args: &Args) -> Option<Duration> {
    (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / args.rate as f64)
    })
}

/// Where connection `c` starts within the first gap: exporters are not synchronized, and paced
/// connections that all fire at once would measure their own bursts.
fn stagger(gap: Option<Duration>, c: usize, connections: usize) -> Duration {
    gap.map_or(Duration::ZERO, |g| g.mul_f64(c as f64 / connections as f64))
}

fn run_http(
    addr: SocketAddr,
    args: &Args,
    bodies: Arc<Vec<Vec<u8>>>,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
) -> Vec<f64> {
    let deadline = Instant::now() + args.duration;
    let gap = pacing(args);
    let connections = args.connections;
    let batch = args.batch as u64;
    let (fresh_instances, total_spans) = (args.fresh_instances, args.total_spans);
    let threads: Vec<_> = (0..args.connections)
        .map(|c| {
            let (bodies, totals, stop) = (bodies.clone(), totals.clone(), stop.clone());
            std::thread::spawn(move || {
                // Fresh ids are stamped per send, so each connection owns its copies.
                let mut owned: Vec<fresh::Stampable> = if fresh_instances {
                    bodies.iter().cloned().map(fresh::Stampable::new).collect()
                } else {
                    Vec::new()
                };
                let mut round = 0u64;
                let mut latencies = Vec::new();
                let mut conn = match HttpConn::open(addr) {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("crosstalk-loadgen: connecting to {addr}: {e}");
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        return latencies;
                    }
                };
                let mut next = Instant::now() + stagger(gap, c, connections);
                let mut i = c;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    if total_spans > 0 && totals.spans.load(Ordering::Relaxed) >= total_spans {
                        break;
                    }
                    if let Some(gap) = gap {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        next += gap;
                    }
                    let body = if owned.is_empty() {
                        &bodies[i % bodies.len()]
                    } else {
                        let n = owned.len();
                        let stampable = &mut owned[i % n];
                        round += 1;
                        stampable.stamp(fresh::tag(c, round));
                        &stampable.body
                    };
                    i += 1;
                    let sent = Instant::now();
                    match conn.post("/v1/traces", "application/x-protobuf", body) {
                        Ok((200, _)) => {
                            totals.spans.fetch_add(batch, Ordering::Relaxed);
                            totals.requests.fetch_add(1, Ordering::Relaxed);
                            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok((503 | 429, _)) => {
                            totals.shed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => {
                            eprintln!(
                                "crosstalk-loadgen: HTTP {status}: {}",
                                String::from_utf8_lossy(&body)
                            );
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                            return latencies;
                        }
                        Err(e) => {
                            eprintln!("crosstalk-loadgen: {e}");
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                            return latencies;
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect()
}

fn run_grpc(
    addr: SocketAddr,
    args: &Args,
    bodies: Vec<bytes::Bytes>,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
) -> Vec<f64> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crosstalk-loadgen: starting tokio: {e}");
            totals.errors.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
    };
    let bodies = Arc::new(bodies);
    let deadline = Instant::now() + args.duration;
    let gap = pacing(args);
    let connections = args.connections;
    let batch = args.batch as u64;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..args.connections {
            let (bodies, totals, stop) = (bodies.clone(), totals.clone(), stop.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let endpoint = format!("http://{addr}");
                let channel = match tonic::transport::Endpoint::from_shared(endpoint) {
                    Ok(e) => e.connect().await,
                    Err(e) => Err(e),
                };
                let mut client = match channel {
                    Ok(channel) => tonic::client::Grpc::new(channel),
                    Err(e) => {
                        eprintln!("crosstalk-loadgen: connecting to {addr}: {e}");
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        return latencies;
                    }
                };
                let mut next = tokio::time::Instant::now() + stagger(gap, c, connections);
                let mut i = c;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    if let Some(gap) = gap {
                        tokio::time::sleep_until(next).await;
                        next += gap;
                    }
                    let body = bodies[i % bodies.len()].clone();
                    i += 1;
                    let sent = Instant::now();
                    let path = http::uri::PathAndQuery::from_static(grpc_bytes::EXPORT);
                    let answer = match client.ready().await {
                        Ok(()) => {
                            let request = tonic::Request::new(body);
                            client.unary(request, path, grpc_bytes::Encoded).await
                        }
                        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                    };
                    match answer {
                        Ok(_) => {
                            totals.spans.fetch_add(batch, Ordering::Relaxed);
                            totals.requests.fetch_add(1, Ordering::Relaxed);
                            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            totals.shed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            eprintln!("crosstalk-loadgen: gRPC {s}");
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                            return latencies;
                        }
                    }
                }
                latencies
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.unwrap_or_default());
        }
        all
    })
}

/// One keep-alive HTTP/1.1 connection; just enough HTTP for crosstalk's answers.
struct HttpConn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpConn {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(HttpConn {
            addr,
            reader: BufReader::with_capacity(64 << 10, stream.try_clone()?),
            writer: stream,
        })
    }

    fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.send(head.as_bytes(), body)
    }

    fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.addr);
        self.send(head.as_bytes(), &[])
    }

    fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head);
        request.extend_from_slice(body);
        self.writer.write_all(&request)?;
        self.read_response()
    }

    fn read_response(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value
                        .trim()
                        .parse()
                        .map_err(|_| bad("bad content-length"))?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

/// Conflicts on fresh factories every `every`, timed from sending the second user's span to the
/// finding being served by the admin API. Milliseconds, one per probe.
fn probe_detection(
    http: Option<SocketAddr>,
    admin: SocketAddr,
    every: Duration,
    stop: &AtomicBool,
) -> Vec<f64> {
    let mut samples = Vec::new();
    let Some(http) = http else {
        eprintln!("crosstalk-loadgen: detection probes need --http");
        return samples;
    };
    let (Ok(mut otlp), Ok(mut api)) = (HttpConn::open(http), HttpConn::open(admin)) else {
        eprintln!("crosstalk-loadgen: probe could not connect");
        return samples;
    };
    let mut generator = Generator::new(
        Shape {
            spans: 1,
            pod: "probe-pod".into(),
            ..Shape::default()
        },
        99,
    );
    let ex = Extractor::new(&Config::default_config());
    let scope_key = resource_of(Some(&generator.resource()), &ex, &mut Tally::default())
        .scope_key
        .clone();
    let send = |generator: &mut Generator, otlp: &mut HttpConn, user: u64, factory: &str| {
        let trace = generator.trace_id();
        let span = generator.span(trace, user, Some(factory.to_owned()), payload::now_ns());
        let mut request = generator.batch(payload::now_ns());
        request.resource_spans[0].scope_spans[0].spans = vec![span];
        otlp.post(
            "/v1/traces",
            "application/x-protobuf",
            &request.encode_to_vec(),
        )
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        n += 1;
        let factory = format!("probe-{}-{n}", std::process::id());
        let id = finding_id(
            FindingKind::SharedInstance,
            "agent_factory",
            &scope_key,
            &factory,
        );
        if !matches!(send(&mut generator, &mut otlp, 1, &factory), Ok((200, _))) {
            continue;
        }
        let sent = Instant::now();
        if !matches!(send(&mut generator, &mut otlp, 2, &factory), Ok((200, _))) {
            continue;
        }
        let path = format!("/api/v1/findings/{id}");
        let visible = loop {
            match api.get(&path) {
                Ok((200, _)) => break true,
                Ok((404, _)) if sent.elapsed() < Duration::from_secs(5) => {}
                _ => break false,
            }
        };
        if visible {
            samples.push(sent.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples
}
