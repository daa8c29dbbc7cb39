//! The CI gate and forensics: `crosstalk check FILE...` runs exported telemetry through the same
//! engine as `serve`; `crosstalk run -- CMD` runs a command against a live engine on free
//! loopback ports. Both print the findings as text, JSON or JUnit XML. `crosstalk discover FILE...`
//! reads the same files into discovery and prints its candidates.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;

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

/// Where `check` and `discover` send what they read: the engine, and discovery when asked.
struct Target<'a> {
    extractor: &'a Extractor,
    engine: Engine,
    fx: Effects,
    feed: Option<&'a mut Feed>,
}

fn pseudonyms(config: &Config) -> Result<Option<Pseudonymizer>, InputError> {
    if config.privacy.user_ids != crate::config::UserIds::Hmac {
        return Ok(None);
    }
    crate::app::pseudonymizer(config)
        .map(Some)
        .map_err(|e| InputError {
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
        let obs = observe_event_value(&value, extractor, received.wall_ns).map_err(|r| {
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

/// Print the findings and the per-watch evidence in the chosen format; `unobserved`: the
/// `--expect`ed watches that saw nothing.
pub fn print_outcome(
    out: &mut dyn Write,
    outcome: &Outcome,
    unobserved: &[&str],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let body = serde_json::json!({
                "findings": outcome.findings,
                "watches": outcome.watches,
                "unobserved_expected": unobserved,
            });
            serde_json::to_writer_pretty(&mut *out, &body)?;
            writeln!(out)
        }
        Format::Junit => out.write_all(junit_report(outcome, unobserved).as_bytes()),
        Format::Text => {
            print_findings(out, &outcome.findings)?;
            print_watches(out, &outcome.watches, unobserved)
        }
    }
}

/// Findings as text.
fn print_findings(out: &mut dyn Write, findings: &[Finding]) -> std::io::Result<()> {
    if findings.is_empty() {
        return writeln!(out, "crosstalk: no cross-user leaks found");
    }
    writeln!(
        out,
        "crosstalk: {} cross-user leak(s) found",
        findings.len()
    )?;
    for f in findings {
        writeln!(out, "{}", describe(f))?;
        for e in &f.evidence {
            writeln!(
                out,
                "    {} at {} via {}{}{}{}",
                e.user,
                e.time,
                e.source,
                e.trace_id
                    .as_ref()
                    .map(|t| format!(" trace={t}"))
                    .unwrap_or_default(),
                e.connection_id
                    .as_ref()
                    .map(|c| format!(" connection={c}"))
                    .unwrap_or_default(),
                e.origin
                    .as_ref()
                    .map(|o| format!(" origin={o}"))
                    .unwrap_or_default(),
            )?;
        }
    }
    Ok(())
}

/// One line naming what leaked to whom.
pub fn describe(f: &Finding) -> String {
    let more = f.user_count as usize - f.users.len().min(f.user_count as usize);
    format!(
        "  [{}] {} watch={} instance={} service={} users={} ({}{}){} id={}",
        f.severity,
        f.kind.as_str(),
        f.watch,
        f.instance,
        f.service,
        f.user_count,
        f.users.join(", "),
        if more > 0 {
            format!(", +{more} more")
        } else {
            String::new()
        },
        if f.cross_tenant {
            format!(" tenants=({})", f.tenants.join(", "))
        } else {
            String::new()
        },
        f.id
    )
}

/// One failed test case per finding, one passing case when there is none.
fn junit_cases(findings: &[Finding]) -> String {
    let mut xml = String::new();
    if findings.is_empty() {
        xml.push_str("    <testcase classname=\"crosstalk\" name=\"no cross-user leaks\"/>\n");
    }
    for f in findings {
        let details: Vec<String> = f
            .evidence
            .iter()
            .map(|e| {
                format!(
                    "{} at {} trace={}",
                    e.user,
                    e.time,
                    e.trace_id.as_deref().unwrap_or("-")
                )
            })
            .collect();
        xml.push_str(&format!(
            "    <testcase classname=\"crosstalk.{}.{}\" name=\"{} {}\">\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>\n",
            escape(f.kind.as_str()),
            escape(&f.watch),
            escape(&f.watch),
            escape(&f.instance),
            escape(f.kind.as_str()),
            escape(describe(f).trim()),
            escape(&details.join("\n")),
        ));
    }
    xml
}

/// Escape text for XML, dropping characters XML 1.0 cannot hold at all.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The evidence per watch as text: one line per (watch, service) with its verdict and numbers.
fn print_watches(
    out: &mut dyn Write,
    watches: &[WatchEvidence],
    unobserved: &[&str],
) -> std::io::Result<()> {
    writeln!(out, "crosstalk: evidence per watch")?;
    for w in watches {
        writeln!(out, "{}", summarize(w))?;
    }
    for name in unobserved {
        writeln!(
            out,
            "crosstalk: expected watch `{name}` saw no observation (is the service still tagging it?)"
        )?;
    }
    Ok(())
}

/// One line: watch, service, verdict, the window's numbers and the reason.
pub fn summarize(w: &WatchEvidence) -> String {
    let c = &w.window;
    let approx = |exact: bool| if exact { "" } else { ">=" };
    format!(
        "  {} service={} {} observations={} instances={}{} users={}{} max_users_per_instance={} unattributed={:.0}% ({})",
        w.watch,
        w.service.as_deref().unwrap_or("-"),
        w.verdict.as_str(),
        c.observations,
        approx(c.instances_exact),
        c.instances,
        approx(c.users_exact),
        c.users,
        c.max_users_per_instance,
        c.unattributed_share * 100.0,
        w.reason,
    )
}

/// The whole JUnit report: one suite with a failed case per finding (one passing case when
/// there is none) and per `--expect`ed watch that saw nothing; the per-watch evidence is the
/// suite's `<system-out>`, so CI shows it without counting it as tests.
pub fn junit_report(outcome: &Outcome, unobserved: &[&str]) -> String {
    let findings = &outcome.findings;
    let tests = findings.len().max(1) + unobserved.len();
    let failures = findings.len() + unobserved.len();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"crosstalk\" tests=\"{tests}\" failures=\"{failures}\">\n  <testsuite name=\"crosstalk\" tests=\"{tests}\" failures=\"{failures}\">\n"
    );
    xml.push_str(&junit_cases(findings));
    for name in unobserved {
        xml.push_str(&format!(
            "    <testcase classname=\"crosstalk.expect\" name=\"{0}\">\n      <failure type=\"unobserved\" message=\"expected watch {0} saw no observation\"/>\n    </testcase>\n",
            escape(name)
        ));
    }
    let lines: Vec<String> = outcome.watches.iter().map(summarize).collect();
    xml.push_str(&format!(
        "    <system-out>evidence per watch\n{}\n    </system-out>\n  </testsuite>\n</testsuites>\n",
        escape(&lines.join("\n"))
    ));
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_handles_markup_and_control_characters() {
        assert_eq!(escape("a<b>&\"'\0c"), "a&lt;b&gt;&amp;&quot;&apos;c");
    }

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
