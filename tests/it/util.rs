//! Shared helpers: start the real `crosstalk` binary on port 0, talk to it over HTTP, build
//! OTLP payloads, read metrics and findings.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value as Json;

pub const BIN: &str = env!("CARGO_BIN_EXE_crosstalk");

/// A running `crosstalk serve`.
pub struct Server {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub stderr_log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A config with every listener on port 0 and storage in `dir`, plus `extra` TOML.
pub fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "[listen]\notlp_grpc = \"127.0.0.1:0\"\notlp_http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [storage]\ndir = \"{}\"\n{extra}",
        dir.join("data").display()
    )
}

/// The watch most tests use.
pub const FACTORY_WATCH: &str = "[[watch]]\nname = \"agent_factory\"\nattribute = \"agent_factory.instance_id\"\npolicy = \"exclusive\"\nscope = \"process\"\n";

impl Server {
    /// Start with `extra` config in a fresh temporary directory.
    pub fn start(extra: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(tmp.path(), extra);
        s._tmp = Some(tmp);
        s
    }

    /// Start (or restart) with state in `dir`.
    pub fn start_in(dir: &Path, extra: &str) -> Server {
        let config = dir.join("crosstalk.toml");
        std::fs::write(&config, config_text(dir, extra)).unwrap();
        Server::start_with_config(dir, &config, &[])
    }

    pub fn start_with_config(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with_args(dir, config, env, &[])
    }

    /// Start with extra `serve` flags (`--repair`).
    pub fn start_with_args(
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let stderr_log = dir.join(format!("stderr-{}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting crosstalk");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let ready: Json = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "crosstalk did not report ready ({e}): {line:?}\n{}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            )
        });
        let addr = |k: &str| ready[k].as_str().unwrap().parse().unwrap();
        Server {
            grpc: addr("otlp_grpc"),
            http: addr("otlp_http"),
            admin: addr("admin"),
            child: Some(child),
            dir: dir.to_owned(),
            stderr_log,
            _tmp: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status with how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let started = Instant::now();
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        let status = c.wait().unwrap();
        (status, started.elapsed())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POST to the OTLP/HTTP listener.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        post(
            &self.http_url(path),
            &[("content-type", content_type)],
            body,
        )
    }

    pub fn post_traces(&self, req: &ExportTraceServiceRequest) -> Reply {
        use prost::Message;
        self.post("/v1/traces", "application/x-protobuf", &req.encode_to_vec())
    }

    /// Every finding (the API's default limit is enough for tests).
    pub fn findings(&self) -> Vec<Json> {
        self.findings_query("")
    }

    pub fn findings_query(&self, query: &str) -> Vec<Json> {
        let r = get(&self.admin_url(&format!("/api/v1/findings{query}")));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["findings"].as_array().unwrap().clone()
    }

    pub fn metrics(&self) -> String {
        get(&self.admin_url("/metrics")).text()
    }

    /// The value of one sample, e.g. `crosstalk_received_total{signal="traces",transport="http"}`.
    /// Absent samples read as 0.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// Poll until `check` passes or `timeout` runs out.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Server) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of the samples matching `sample` exactly (name and full label set), or 0.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, rest) = l.rsplit_once(' ')?;
            (name == sample).then(|| rest.parse::<f64>().ok())?
        })
        .sum()
}

/// An HTTP reply.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn reply(mut r: ureq::http::Response<ureq::Body>) -> Reply {
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = Vec::new();
    r.body_mut()
        .with_config()
        .limit(64 << 20)
        .reader()
        .read_to_end(&mut body)
        .unwrap();
    Reply {
        status: r.status().as_u16(),
        headers,
        body,
    }
}

pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call().unwrap())
}

pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.call().unwrap())
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send(body).unwrap())
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// OTLP payloads

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Run `crosstalk serve` expecting it to refuse to start: its exit code and stderr.
pub fn serve_refused(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("crosstalk started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A span in a fresh trace: `attrs` plus ids and times.
pub fn span(trace: u128, span: u64, attrs: &[(&str, &str)]) -> Span {
    let start = now_ns();
    Span {
        trace_id: trace.to_be_bytes().to_vec(),
        span_id: span.to_be_bytes().to_vec(),
        name: "op".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

/// One resource (service + instance) with spans.
pub fn traces(service: &str, instance: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", service),
                    kv("service.instance.id", instance),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One span of `user` using factory `factory`, in its own trace.
pub fn factory_use(user: &str, factory: &str, trace: u128) -> ExportTraceServiceRequest {
    instance_use("agent_factory.instance_id", user, factory, trace)
}

/// One span of `user` using the instance `id` named by `attribute`, in its own trace.
pub fn instance_use(
    attribute: &str,
    user: &str,
    id: &str,
    trace: u128,
) -> ExportTraceServiceRequest {
    traces(
        "agent-backend",
        "pod-1",
        vec![span(
            trace,
            trace as u64 | 1,
            &[("user.id", user), (attribute, id)],
        )],
    )
}

// ---------------------------------------------------------------------------------------------
// Python

/// The repo's virtualenv Python (made by scripts/test), or `CROSSTALK_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CROSSTALK_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python virtualenv at {}: run scripts/test (it installs the test dependencies)",
        venv.display()
    );
    venv
}

pub fn e2e_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(name)
}

/// POST over a raw socket, for bodies the server may refuse before reading them: write errors
/// (the server closed early) are ignored and the status line is read back anyway.
pub fn raw_post_status(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
