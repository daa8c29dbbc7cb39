//! What normalizing one payload found besides observations: items rejected (by reason),
//! attribute values that could not be used (the item is kept without them), and span times
//! clamped to sane bounds. The sources turn a [`Tally`] into counters and `partial_success`.

use std::collections::BTreeMap;

/// Why an item was rejected; the `reason` label of `crosstalk_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    IdTooLong,
    InvalidJson,
    NotAnObject,
    MissingUser,
    BadTime,
    LineTooLong,
    InvalidUtf8,
    BadField,
    ControlChars,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::IdTooLong,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingUser,
        RejectReason::BadTime,
        RejectReason::LineTooLong,
        RejectReason::InvalidUtf8,
        RejectReason::BadField,
        RejectReason::ControlChars,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::IdTooLong => "id_too_long",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingUser => "missing_user",
            RejectReason::BadTime => "bad_time",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::BadField => "bad_field",
            RejectReason::ControlChars => "control_chars_in_id",
        }
    }
}

/// A user, tenant or watched attribute whose value could not be used: the item is kept without
/// it (so it may go unattributed, or its instance unjudged), and this is the `reason` label of
/// `crosstalk_rejected_total` that says so instead of staying silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnusableValue {
    UserEmpty,
    /// A bool, double, array or map (or no value at all): none names a user.
    UserNotString,
    TenantEmpty,
    TenantNotString,
    InstanceEmpty,
    InstanceNotString,
}

impl UnusableValue {
    pub const ALL: [UnusableValue; 6] = [
        UnusableValue::UserEmpty,
        UnusableValue::UserNotString,
        UnusableValue::TenantEmpty,
        UnusableValue::TenantNotString,
        UnusableValue::InstanceEmpty,
        UnusableValue::InstanceNotString,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UnusableValue::UserEmpty => "user_empty",
            UnusableValue::UserNotString => "user_not_string",
            UnusableValue::TenantEmpty => "tenant_empty",
            UnusableValue::TenantNotString => "tenant_not_string",
            UnusableValue::InstanceEmpty => "instance_empty",
            UnusableValue::InstanceNotString => "instance_not_string",
        }
    }
}

/// Why a span's time was not taken as given; the `reason` label of `crosstalk_clamped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClampReason {
    /// The end precedes the start: the span is taken as a point at its start.
    EndBeforeStart,
    /// The end lies past the receipt time (+ skew): a span is exported only after it ended.
    EndInFuture,
    /// The start lies past the receipt time (+ skew): the receipt time is used instead.
    StartInFuture,
}

impl ClampReason {
    pub const ALL: [ClampReason; 3] = [
        ClampReason::EndBeforeStart,
        ClampReason::EndInFuture,
        ClampReason::StartInFuture,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClampReason::EndBeforeStart => "end_before_start",
            ClampReason::EndInFuture => "end_in_future",
            ClampReason::StartInFuture => "start_in_future",
        }
    }
}

/// How far ahead of the receipt time a span's clock may run (host clock skew) before its times
/// are called impossible: an exported span has ended, so it cannot end after it arrived.
pub const MAX_CLOCK_SKEW_NS: u64 = 15 * 60 * 1_000_000_000;

/// A span's event time within sane bounds: a missing start is the receipt time (a missing end
/// the start), a start in the
/// future is the receipt time, and a bad end (before the start, or in the future) is the start —
/// an overlap is then judged on the one instant the span is known to have been alive, instead of
/// on centuries it never lived. Returns `(start, end)` and counts each correction in `tally`.
pub fn clamp_span_times(start: u64, end: u64, received_ns: u64, tally: &mut Tally) -> (u64, u64) {
    let horizon = received_ns.saturating_add(MAX_CLOCK_SKEW_NS);
    let start = match start {
        0 => received_ns,
        s if s > horizon => {
            tally.clamp(ClampReason::StartInFuture);
            received_ns
        }
        s => s,
    };
    let end = if end == 0 {
        start // not set: a point, as for a missing start
    } else if end > horizon {
        tally.clamp(ClampReason::EndInFuture);
        start
    } else if end < start {
        tally.clamp(ClampReason::EndBeforeStart);
        start
    } else {
        end
    };
    (start, end)
}

/// The items a payload held, and those that could not be used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Items (spans, log records, event lines) in the payload.
    pub items: u64,
    /// Items rejected, by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// The first message of each rejection reason: bounded by the fixed set of reasons.
    pub errors: BTreeMap<RejectReason, String>,
    /// Span times corrected (the span is still used), by reason.
    pub clamped: BTreeMap<ClampReason, u64>,
    /// Attribute values that could not be used (the item is still used), by kind, with the
    /// first attribute key of each kind for the debug log.
    pub unusable: BTreeMap<UnusableValue, (u64, Box<str>)>,
}

impl Tally {
    pub fn reject(&mut self, reason: RejectReason, message: impl FnOnce() -> String) {
        *self.rejected.entry(reason).or_default() += 1;
        self.errors.entry(reason).or_insert_with(message);
    }

    /// Every reason with its count and first message, for `partial_success.error_message`
    /// (an exporter logs it; one reason hiding another sends the operator the wrong way).
    pub fn error_message(&self) -> Option<String> {
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(reason, message)| {
                let n = self.rejected.get(reason).copied().unwrap_or(0);
                format!("{n} {}: {message}", reason.as_str())
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn clamp(&mut self, reason: ClampReason) {
        *self.clamped.entry(reason).or_default() += 1;
    }

    pub fn unusable(&mut self, kind: UnusableValue, key: &str) {
        self.unusable
            .entry(kind)
            .or_insert_with(|| (0, key.into()))
            .0 += 1;
    }

    /// Add another payload part's counts to this one.
    pub fn absorb(&mut self, other: Tally) {
        self.items += other.items;
        for (kind, (n, key)) in other.unusable {
            self.unusable.entry(kind).or_insert((0, key)).0 += n;
        }
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        for (reason, n) in other.clamped {
            *self.clamped.entry(reason).or_default() += n;
        }
        for (reason, message) in other.errors {
            self.errors.entry(reason).or_insert(message);
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn accepted(&self) -> u64 {
        self.items - self.rejected_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_times_are_clamped_to_sane_bounds_and_counted() {
        const S: u64 = 1_000_000_000;
        let now = 1_700_000_000 * S;
        let century = 100 * 365 * 24 * 3600 * S;
        use ClampReason::*;
        #[rustfmt::skip]
        type Row = (u64, u64, (u64, u64), &'static [ClampReason]);
        let table: &[Row] = &[
            // start          end                 → (start, end)                     counted
            (now - 5 * S, now - S, (now - 5 * S, now - S), &[]),
            (0, 0, (now, now), &[]),
            (now - 5 * S, 0, (now - 5 * S, now - 5 * S), &[]),
            (now - S, now - 5 * S, (now - S, now - S), &[EndBeforeStart]),
            (now - S, now + century, (now - S, now - S), &[EndInFuture]),
            (
                now + century,
                now + century + S,
                (now, now),
                &[StartInFuture, EndInFuture],
            ),
            (
                now + century,
                now - S,
                (now, now),
                &[StartInFuture, EndBeforeStart],
            ),
            // Within the allowed clock skew: taken as given.
            (
                now + 60 * S,
                now + 61 * S,
                (now + 60 * S, now + 61 * S),
                &[],
            ),
        ];
        for &(start, end, want, counted) in table {
            let mut tally = Tally::default();
            assert_eq!(
                clamp_span_times(start, end, now, &mut tally),
                want,
                "{start} {end}"
            );
            let mut got: Vec<_> = tally.clamped.keys().copied().collect();
            let mut counted = counted.to_vec();
            got.sort();
            counted.sort();
            assert_eq!(got, counted, "{start} {end}");
        }
    }
}
