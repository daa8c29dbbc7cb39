//! How `check` and `run` print what they found: findings and per-watch evidence as text, JSON
//! or JUnit XML (one test case per watch, a failure per finding).

use std::io::Write;

use super::{Format, Outcome};
use crate::correlate::Finding;
use crate::correlate::evidence::WatchEvidence;

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
}
