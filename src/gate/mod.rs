//! The CI gate and forensics: `crosstalk check FILE...` runs exported telemetry through the same
//! engine as `serve`; `crosstalk run -- CMD` ([`run`]) runs a command against a live engine on
//! free loopback ports. Both print the findings as text, JSON or JUnit XML ([`output`]) and exit
//! 1 on findings, else 3 when an `--expect`ed watch saw nothing. `crosstalk discover FILE...`
//! reads the same files into discovery and prints its candidates.

pub mod output;
pub mod run;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;

use crate::cli::{EXIT_FINDINGS, EXIT_OK, EXIT_SUSPECT, EXIT_UNOBSERVED, EXIT_USAGE};
use crate::config::Config;
use crate::correlate::discovery::feed::Feed;
use crate::correlate::discovery::report::Report;
use crate::correlate::evidence::WatchEvidence;
use crate::correlate::{Effects, Engine, Finding, Received};
use crate::normalize::events::observe_event_value;
use crate::normalize::{Extractor, Tally, otlp};
use crate::privacy::Pseudonymizer;
use crate::telemetry::metrics::Metrics;

/// How findings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Junit,
}

/// How `discover` prints its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoverFormat {
    Text,
    Json,
}

/// An input that cannot be used: `file:line: message`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct InputError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// What a gate run found: the findings, newest first, and the evidence per watch.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    pub watches: Vec<WatchEvidence>,
}

impl Outcome {
    /// What the engine holds at the end of a run.
    pub fn of(engine: &Engine) -> Self {
        let now_s = crate::correlate::finding::now_ns() / 1_000_000_000;
        Outcome {
            findings: engine.findings().into_iter().cloned().collect(),
            watches: engine.watch_evidence().lock().report(now_s),
        }
    }

    /// Of the `expected` watches, those that saw no observation at all, in the order given.
    pub fn unobserved<'a>(&self, expected: &'a [String]) -> Vec<&'a str> {
        expected
            .iter()
            .filter(|w| {
                !self
                    .watches
                    .iter()
                    .any(|e| &e.watch == *w && e.lifetime.observations > 0)
            })
            .map(String::as_str)
            .collect()
    }
}

/// Run every file through one engine; the findings, newest first.
#[cfg(test)]
pub fn check_files(config: &Config, files: &[String]) -> Result<Vec<Finding>, InputError> {
    check(config, files).map(|o| o.findings)
}

/// Run every file through one engine; the findings and the evidence per watch.
pub fn check(config: &Config, files: &[String]) -> Result<Outcome, InputError> {
    let extractor = Extractor::new(config);
    let engine = read_files(config, files, &extractor, None)?;
    Ok(Outcome::of(&engine))
}

/// `crosstalk discover`: discovery over every file (the same readers as `check`).
pub fn discover_files(config: &Config, files: &[String]) -> Result<Report, InputError> {
    let extractor = Extractor::new(config);
    let mut feed = Feed::new(config);
    read_files(config, files, &extractor, Some(&mut feed))?;
    feed.discovery.finish();
    let pseudo = pseudonyms(config)?;
    Ok(feed.discovery.report(pseudo.as_ref()))
}

/// `crosstalk check`: print what the files hold; the exit code says whether it passes.
pub fn check_command(
    config: &Config,
    format: Format,
    expect: &[String],
    files: &[String],
) -> ExitCode {
    if let Err(code) = known_watches(config, expect) {
        return code;
    }
    match check(config, files) {
        Ok(outcome) => finish(&outcome, format, expect),
        Err(e) => {
            eprintln!("crosstalk: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `--expect` must name configured watches: a typo would otherwise pass forever.
pub fn known_watches(config: &Config, expect: &[String]) -> Result<(), ExitCode> {
    match expect
        .iter()
        .find(|e| !config.watches.iter().any(|w| &w.name == *e))
    {
        Some(unknown) => {
            eprintln!("crosstalk: --expect {unknown}: no watch of that name is configured");
            Err(ExitCode::from(EXIT_USAGE))
        }
        None => Ok(()),
    }
}

/// Print the outcome; exit 1 on findings, else 3 if an expected watch saw nothing, else 0.
pub fn finish(outcome: &Outcome, format: Format, expect: &[String]) -> ExitCode {
    let unobserved = outcome.unobserved(expect);
    let mut out = std::io::stdout().lock();
    if let Err(e) =
        output::print_outcome(&mut out, outcome, &unobserved, format).and_then(|_| out.flush())
    {
        eprintln!("crosstalk: cannot write findings: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Text already says so on stdout; other formats are for machines, so tell the human too.
    if format != Format::Text {
        for name in &unobserved {
            eprintln!("crosstalk: expected watch `{name}` saw no observation");
        }
    }
    ExitCode::from(if !outcome.findings.is_empty() {
        EXIT_FINDINGS
    } else if !unobserved.is_empty() {
        EXIT_UNOBSERVED
    } else {
        EXIT_OK
    })
}

/// `crosstalk discover`: print the candidates; exit 4 on a leak suspect when asked to.
pub fn discover_command(
    config: &Config,
    format: DiscoverFormat,
    fail_on_suspect: bool,
    files: &[String],
) -> ExitCode {
    let report = match discover_files(config, files) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crosstalk: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let text = match format {
        DiscoverFormat::Text => crate::correlate::discovery::report::render_text(&report),
        DiscoverFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("crosstalk: cannot write the report: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        eprintln!("crosstalk: cannot write the report: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let suspect = report
        .candidates
        .iter()
        .any(|c| c.verdict == crate::correlate::discovery::Verdict::LeakSuspect);
    ExitCode::from(if fail_on_suspect && suspect {
        EXIT_SUSPECT
    } else {
        EXIT_OK
    })
}

/// Where `check` and `discover` send what they read: the engine, and discovery when asked.
struct Target<'a> {
    extractor: &'a Extractor,
    engine: Engine,
    fx: Effects,
    feed: Option<&'a mut Feed>,
}

/// The ids key in `user_ids = "hmac"` mode, so findings name users as `serve` would.
fn pseudonyms(config: &Config) -> Result<Option<Pseudonymizer>, InputError> {
    Pseudonymizer::for_ids(config).map_err(|e| InputError {
        file: config.storage_dir.display().to_string(),
        line: 0,
        message: e.to_string(),
    })
}

fn read_files(
    config: &Config,
    files: &[String],
    extractor: &Extractor,
    discovery: Option<&mut Feed>,
) -> Result<Engine, InputError> {
    let metrics = Arc::new(Metrics::new());
    let mut engine = Engine::new(config, metrics);
    if let Some(key) = pseudonyms(config)? {
        engine = engine.with_pseudonyms(key);
    }
    let mut t = Target {
        extractor,
        engine,
        fx: Effects::default(),
        feed: discovery,
    };
    for name in files {
        let progress = Progress::of(name);
        let reader = open_input(name, &progress).map_err(|e| InputError {
            file: name.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        let fed = feed(reader, name, &mut t);
        progress.finish();
        fed?;
        t.fx = Effects::default();
    }
    t.engine.settle_all(Received::now(), &mut t.fx);
    Ok(t.engine)
}

/// A progress bar over the bytes of one input, on a terminal only: `check` over a large file
/// takes a while, and output that is not a terminal (CI logs, pipes) stays exactly the report.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn of(name: &str) -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let size = std::fs::metadata(name).ok().filter(|_| name != "-");
        let bar = match size {
            Some(m) => indicatif::ProgressBar::new(m.len()).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            ),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let bar = bar.with_message(name.to_owned());
        // Drawn at once: a file read in less than the redraw interval still shows what it was.
        bar.tick();
        Progress(Some(bar))
    }

    /// `raw`, counted into the bar as it is read (before any gunzip: the file's own bytes).
    fn wrap(&self, raw: Box<dyn Read>) -> Box<dyn Read> {
        match &self.0 {
            Some(bar) => Box::new(bar.wrap_read(raw)),
            None => raw,
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// A file (`-` for stdin), transparently gunzipped when it starts with the gzip magic.
fn open_input(name: &str, progress: &Progress) -> std::io::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if name == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(Path::new(name))?)
    };
    let raw = progress.wrap(raw);
    let mut buffered = BufReader::with_capacity(64 * 1024, raw);
    let is_gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if is_gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(
            buffered,
        )))
    } else {
        Box::new(buffered)
    })
}

/// What `check` reads, for the message when input is neither.
const EXPECTED: &str = "expected OTLP JSON (`resourceSpans` / `resourceLogs`: one export per line, \
     or whole documents like opentelemetry-proto's examples/trace.json) or WebSocket events \
     (one JSON object per line)";

/// The input is JSON lines (one OTLP JSON export, as the Collector's file exporter writes them,
/// or one WebSocket event per line) or whole, possibly pretty-printed, JSON documents. Which one
/// is told by the first non-blank line: if it ends in the middle of a value, documents.
fn feed(reader: Box<dyn BufRead>, name: &str, t: &mut Target<'_>) -> Result<(), InputError> {
    let err = |line: usize, message: String| InputError {
        file: name.to_owned(),
        line,
        message,
    };
    let mut lines = reader.split(b'\n').enumerate();
    while let Some((i, line)) = lines.next() {
        let n = i + 1;
        let line = line.map_err(|e| err(n, format!("cannot read: {e}")))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) if e.is_eof() => {
                let mut doc = line;
                for (j, rest) in lines {
                    doc.push(b'\n');
                    doc.extend(rest.map_err(|e| err(j + 1, format!("cannot read: {e}")))?);
                }
                return feed_documents(&doc, n, &err, t);
            }
            Err(e) => return Err(err(n, format!("invalid JSON: {e}; {EXPECTED}"))),
        };
        feed_value(value, t).map_err(|m| err(n, m))?;
    }
    Ok(())
}

/// One or more whole JSON documents starting at line `first` of the input.
fn feed_documents(
    doc: &[u8],
    first: usize,
    err: &dyn Fn(usize, String) -> InputError,
    t: &mut Target<'_>,
) -> Result<(), InputError> {
    let mut stream = serde_json::Deserializer::from_slice(doc).into_iter::<Value>();
    loop {
        let start = stream.byte_offset();
        let Some(value) = stream.next() else {
            return Ok(());
        };
        let line = first + doc[..start].iter().filter(|&&b| b == b'\n').count();
        let value = value.map_err(|e| {
            err(
                first + e.line().saturating_sub(1),
                format!("invalid JSON: {e}; {EXPECTED}"),
            )
        })?;
        feed_value(value, t).map_err(|m| err(line, m))?;
    }
}

/// One OTLP export or event into the engine; metrics exports carry nothing to check.
fn feed_value(value: Value, t: &mut Target<'_>) -> Result<(), String> {
    let extractor = t.extractor;
    let received = Received::now();
    let mut tally = Tally::default();
    let observations = if value.get("resourceSpans").is_some() {
        let req: ExportTraceServiceRequest =
            serde_json::from_value(value).map_err(|e| format!("invalid OTLP traces JSON: {e}"))?;
        if let Some(feed) = t.feed.as_deref_mut() {
            feed.traces(&req, received.wall_ns);
        }
        otlp::observe_traces(&req, extractor, received.wall_ns, &mut tally)
    } else if value.get("resourceLogs").is_some() {
        let req: ExportLogsServiceRequest =
            serde_json::from_value(value).map_err(|e| format!("invalid OTLP logs JSON: {e}"))?;
        if let Some(feed) = t.feed.as_deref_mut() {
            feed.logs(&req, received.wall_ns);
        }
        otlp::observe_logs(&req, extractor, received.wall_ns, &mut tally)
    } else if value.get("resourceMetrics").is_some() {
        return Ok(());
    } else {
        let obs =
            observe_event_value(&value, extractor, received.wall_ns, &mut tally).map_err(|r| {
                format!(
                    "unusable event ({}): {}; {EXPECTED}",
                    r.reason.as_str(),
                    r.message
                )
            })?;
        vec![obs]
    };
    if let Some(message) = tally.error_message() {
        return Err(message);
    }
    t.engine.ingest(observations, received, &mut t.fx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_with_a_shared_emitter_are_found() {
        let cfg = Config::from_toml(
            "[[watch]]\nname=\"emitter\"\nattribute=\"emitter_id\"\npolicy=\"exclusive\"\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            "{\"user_id\":\"a\",\"emitter_id\":\"e\",\"time\":1}\n{\"user_id\":\"b\",\"emitter_id\":\"e\",\"time\":2}\n",
        )
        .unwrap();
        let findings = check_files(&cfg, &[path.to_string_lossy().into_owned()]).unwrap();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].users, ["a", "b"]);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"user_id\":\"a\"}\n\n{oops\n").unwrap();
        let name = path.to_string_lossy().into_owned();
        let err = check_files(&Config::default_config(), std::slice::from_ref(&name)).unwrap_err();
        assert_eq!((err.file.as_str(), err.line), (name.as_str(), 3));
    }
}
