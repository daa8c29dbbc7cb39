//! What discovery tells a person: one candidate per (service, key) with its verdict, the numbers,
//! examples and the `[[watch]]` block to paste — as the `candidates` JSON of
//! `GET /api/v1/discovery` and `crosstalk discover --format json`, or as a text table.

use std::fmt::Write as _;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Discovery;
use super::known::{self, Known};
use super::shape::Shape;
use super::stats::KeyStats;
use super::verdict::{Summary, Verdict, judge};
use crate::privacy::Pseudonymizer;

/// One value seen with two or more users.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub value: String,
    pub shape: Shape,
    /// Distinct users the value served (an estimate past a few dozen).
    pub user_count: u64,
    /// A few of those users (pseudonymised in `hmac` mode).
    pub users: Vec<String>,
    pub trace_ids: Vec<String>,
    pub first_shared: String,
    pub last_seen: String,
}

/// One (service, attribute key) and the verdict on it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub attribute: String,
    pub service: String,
    pub verdict: Verdict,
    pub reason: String,
    pub shape: Shape,
    pub distinct_values: u64,
    pub distinct_values_exact: bool,
    pub distinct_users: u64,
    pub distinct_users_exact: bool,
    pub requests: u64,
    pub requests_per_value: f64,
    pub shared_values: u64,
    pub max_users_per_value: u64,
    /// Values the key had no room to track users for (its table was full).
    pub untracked_requests: u64,
    pub examples: Vec<Example>,
    pub first_seen: String,
    pub last_seen: String,
    /// The `[[watch]]` block to paste into the config (suspects only).
    pub suggested_watch: Option<String>,
}

/// The `GET /api/v1/discovery` body.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub candidates: Vec<Candidate>,
    pub keys: usize,
    pub evicted_keys: u64,
    pub unattributed_records: u64,
    /// Exports not inspected (sampled out, or the discovery queue was full): live only.
    pub skipped_exports: u64,
}

fn rfc3339(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The numbers of one key, as the verdict function reads them.
pub fn summarize(key: &str, s: &KeyStats) -> Summary {
    let known = known::lookup(key);
    let total: u32 = s.shapes.iter().sum();
    let identity: u32 = Shape::ALL
        .iter()
        .filter(|sh| sh.is_identity())
        .map(|sh| s.shapes[sh.index()])
        .sum();
    let shape = Shape::ALL
        .iter()
        .copied()
        .max_by_key(|sh| s.shapes[sh.index()])
        .unwrap_or(Shape::Text);
    let any_shape = matches!(known, Known::Identity(_));
    let counted = |sh: Shape| any_shape || sh.is_identity();
    let shared_values = if any_shape {
        s.shared_identity + s.shared_other
    } else {
        s.shared_identity
    };
    let max_users_per_value = s
        .shared
        .iter()
        .filter(|v| counted(v.shape))
        .map(|v| v.users.count())
        .max()
        .unwrap_or(0);
    Summary {
        known,
        shape,
        identity_share: f64::from(identity) / f64::from(total.max(1)),
        distinct_values: s.values.count(),
        distinct_users: s.users.count(),
        requests: s.requests,
        tracked_values: s.tracked,
        shared_values,
        max_users_per_value,
    }
}

/// The `[[watch]]` block for a suspect key: addresses and handles live in one process.
pub fn suggested_watch(attribute: &str, shape: Shape) -> String {
    let mut name: String = attribute
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(48);
    let scope = match shape {
        Shape::Hex | Shape::LargeInt | Shape::PrefixedId => "process",
        _ => "global",
    };
    format!(
        "[[watch]]\nname      = \"{name}\"\nattribute = \"{attribute}\"\npolicy    = \"exclusive\"\nscope     = \"{scope}\"\n"
    )
}

impl Discovery {
    /// Every key's candidate, suspects first; user names pseudonymised when `pseudo` is given.
    pub fn report(&self, pseudo: Option<&Pseudonymizer>) -> Report {
        let mut candidates = Vec::with_capacity(self.key_count());
        for (service, keys) in &self.services {
            for (key, stats) in keys {
                candidates.push(self.candidate(service, key, stats, pseudo));
            }
        }
        // Suspects first, the widest-shared first among them.
        candidates.sort_by(|a, b| {
            let rank = |c: &Candidate| {
                (
                    c.verdict,
                    std::cmp::Reverse(c.max_users_per_value),
                    std::cmp::Reverse(c.distinct_users),
                )
            };
            (rank(a), &a.service, &a.attribute).cmp(&(rank(b), &b.service, &b.attribute))
        });
        Report {
            candidates,
            keys: self.key_count(),
            evicted_keys: self.evicted,
            unattributed_records: self.pending_dropped,
            skipped_exports: 0,
        }
    }

    fn candidate(
        &self,
        service: &str,
        key: &str,
        s: &KeyStats,
        pseudo: Option<&Pseudonymizer>,
    ) -> Candidate {
        let summary = summarize(key, s);
        let (verdict, reason) = judge(&summary, self.settings.min_users);
        let name = |fp: &u32| match (self.user_names.get(fp), pseudo) {
            (Some(n), Some(p)) => p.pseudonym(n),
            (Some(n), None) => n.to_string(),
            (None, _) => format!("user#{fp:06x}"),
        };
        let mut examples: Vec<Example> = s
            .shared
            .iter()
            .map(|v| Example {
                value: v.value.to_string(),
                shape: v.shape,
                user_count: v.users.count(),
                users: v.example_users.iter().map(name).collect(),
                trace_ids: v.traces.iter().map(|t| t.to_string()).collect(),
                first_shared: rfc3339(v.first_shared_ns),
                last_seen: rfc3339(v.last_seen_ns),
            })
            .collect();
        examples.sort_by_key(|e| std::cmp::Reverse(e.user_count));
        let suggested_watch =
            (verdict == Verdict::LeakSuspect).then(|| suggested_watch(key, summary.shape));
        Candidate {
            attribute: key.to_owned(),
            service: service.to_owned(),
            verdict,
            reason,
            shape: summary.shape,
            distinct_values: summary.distinct_values,
            distinct_values_exact: s.values.is_exact(),
            distinct_users: summary.distinct_users,
            distinct_users_exact: s.users.is_exact(),
            requests: s.requests,
            requests_per_value: (summary.requests_per_value() * 100.0).round() / 100.0,
            shared_values: summary.shared_values,
            max_users_per_value: summary.max_users_per_value,
            untracked_requests: s.untracked,
            examples,
            first_seen: rfc3339(s.first_seen_ns),
            last_seen: rfc3339(s.last_seen_ns),
            suggested_watch,
        }
    }
}

/// The text table a person reads in an incident: suspects first, each with the watch to paste.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let suspects = report
        .candidates
        .iter()
        .filter(|c| c.verdict == Verdict::LeakSuspect)
        .count();
    let _ = writeln!(
        out,
        "{} attribute keys, {} leak suspect(s){}",
        report.candidates.len(),
        suspects,
        if report.unattributed_records > 0 {
            format!(
                "; {} record(s) never learned their user",
                report.unattributed_records
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "\n{:<18} {:<20} {:<36} {:>8} {:>6} {:>6}  REASON",
        "VERDICT", "SERVICE", "ATTRIBUTE", "VALUES", "USERS", "SHARED"
    );
    for c in &report.candidates {
        let approx = |exact: bool| if exact { "" } else { "~" };
        let _ = writeln!(
            out,
            "{:<18} {:<20} {:<36} {:>8} {:>6} {:>6}  {}",
            c.verdict.as_str(),
            c.service,
            c.attribute,
            format!("{}{}", approx(c.distinct_values_exact), c.distinct_values),
            format!("{}{}", approx(c.distinct_users_exact), c.distinct_users),
            c.shared_values,
            c.reason
        );
    }
    for c in report
        .candidates
        .iter()
        .filter(|c| c.verdict == Verdict::LeakSuspect)
    {
        let _ = writeln!(
            out,
            "\nSUSPECT {} on {}: {}",
            c.attribute, c.service, c.reason
        );
        for e in &c.examples {
            let _ = writeln!(
                out,
                "  value {} served {} users (e.g. {}), traces {}, {} .. {}",
                e.value,
                e.user_count,
                e.users.join(", "),
                e.trace_ids.join(" "),
                e.first_shared,
                e.last_seen
            );
        }
        if let Some(w) = &c.suggested_watch {
            let _ = writeln!(out, "  watch to paste:");
            for line in w.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}
