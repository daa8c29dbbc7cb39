//! The verdict per watch and service: is it verifiably isolated, leaking, blind, or unjudgeable?
//!
//! Pure: the numbers of one (watch, service) over the window in, a verdict and the sentence
//! behind it out. Precedence: a leak seen in the window beats everything (a fixed leak turns
//! back to `isolated` once a whole window passes without it); no observation in the window is
//! `blind`; an `allow` watch is `allowed`; more than half of the window's observations without a
//! user is `unattributed`; otherwise `isolated`.

use serde::Serialize;

/// What the evidence says about one watch in one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Observed, attributed, and no finding in the window.
    Isolated,
    /// Observed; the watch's policy is `allow`, so sharing is by design.
    Allowed,
    /// A finding of the watch was last seen inside the window.
    Leaking,
    /// No observation in the window (or none ever), although the watch is configured.
    Blind,
    /// More than half of the window's observations had no user: isolation cannot be judged.
    Unattributed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Isolated => "isolated",
            Verdict::Allowed => "allowed",
            Verdict::Leaking => "leaking",
            Verdict::Blind => "blind",
            Verdict::Unattributed => "unattributed",
        }
    }
}

/// The numbers a verdict is judged from. Times are wall-clock seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub now_s: u64,
    pub window_s: u64,
    /// The watch's policy is `allow`.
    pub allow: bool,
    /// Last observation ever (survives restarts); `None` if never observed.
    pub last_seen_s: Option<u64>,
    /// When a finding of this watch and service was last raised or grown.
    pub last_finding_s: Option<u64>,
    /// Observations in the window (counted since this process started).
    pub observations: u64,
    /// Of those, observations without a user (or tenant, for tenant-boundary watches).
    pub unattributed: u64,
}

/// Judge one (watch, service); the verdict and why, in one sentence with the numbers.
pub fn judge(i: &Inputs) -> (Verdict, String) {
    let since = i.now_s.saturating_sub(i.window_s);
    let within = |t: Option<u64>| t.is_some_and(|t| t >= since);
    if within(i.last_finding_s) {
        let ago = i.now_s.saturating_sub(i.last_finding_s.unwrap_or(i.now_s));
        return (
            Verdict::Leaking,
            format!("a finding was last seen {ago}s ago, inside the window"),
        );
    }
    match i.last_seen_s {
        None => return (Verdict::Blind, "never observed".to_owned()),
        Some(t) if t < since => {
            let ago = i.now_s.saturating_sub(t);
            return (
                Verdict::Blind,
                format!("no observation in the window; the last one was {ago}s ago"),
            );
        }
        Some(_) => {}
    }
    if i.allow {
        return (
            Verdict::Allowed,
            "observed; the watch's policy allows sharing".to_owned(),
        );
    }
    if i.observations == 0 {
        // Seen inside the window, but before this process started: counts restart at zero.
        return (
            Verdict::Isolated,
            "observed in the window before a restart, no finding since; counts restart at zero"
                .to_owned(),
        );
    }
    if i.unattributed.saturating_mul(2) > i.observations {
        return (
            Verdict::Unattributed,
            format!(
                "{} of {} observations in the window had no user",
                i.unattributed, i.observations
            ),
        );
    }
    (
        Verdict::Isolated,
        format!(
            "{} observations in the window, {} without a user, no finding",
            i.observations, i.unattributed
        ),
    )
}
