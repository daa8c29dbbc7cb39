//! One tracked instance packed into 80 bytes: its key and its first user's use, the one use
//! most instances ever have. The instance id, the user and the tenant share one allocation.
//! Users after the first, a `concurrent` watch's intervals and the finding link are kept aside
//! by the table (`table.rs`), only for the instances that have them.
//!
//! Invariant: the text is `[user length][tenant length + 1, or 0 for none][id][user][tenant]`,
//! lengths as LEB128, every part valid UTF-8 (it is written from `&str`s only).

use std::sync::Arc;

use super::{InstanceRef, Seed, Use};
use crate::normalize::{Signal, SpanId, TraceId};

/// A use borrowed from where it is stored: the first from its record, later ones from their
/// [`Use`].
#[derive(Debug, Clone, Copy)]
pub(super) struct UseRef<'a> {
    pub user: &'a str,
    pub tenant: Option<&'a str>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Merged recent intervals, kept only for `concurrent` watches.
    pub intervals: &'a [(u64, u64)],
    pub first: Seed,
}

impl UseRef<'_> {
    pub fn to_use(self) -> Use {
        Use {
            user: self.user.into(),
            tenant: self.tenant.map(Arc::from),
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            intervals: self.intervals.to_vec(),
            first: self.first,
        }
    }
}

impl Use {
    pub(super) fn as_ref(&self) -> UseRef<'_> {
        UseRef {
            user: &self.user,
            tenant: self.tenant.as_deref(),
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            intervals: &self.intervals,
            first: self.first,
        }
    }
}

const HAS_TRACE: u8 = 1;
const HAS_SPAN: u8 = 2;
/// The table keeps more of this instance aside.
const HAS_EXTRA: u8 = 4;
/// A free slot of the table.
const VACANT: u8 = 8;

/// See the module doc.
#[derive(Debug)]
pub(super) struct Record {
    text: Box<[u8]>,
    first_ns: u64,
    last_ns: u64,
    /// The first use's first observation (its evidence), which `first_ns` may precede.
    seed_time_ns: u64,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    scope: u32,
    seed_scope: u32,
    /// Wall clock of the last observation, seconds (saturating in 2106).
    touched_s: u32,
    watch: u16,
    signal: u8,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Record>() == 80);

impl Record {
    pub fn new(key: InstanceRef<'_>, first: UseRef<'_>, touched_s: u64) -> Record {
        let mut r = Record {
            text: pack(key.id, first.user, first.tenant),
            scope: key.scope,
            watch: key.watch,
            flags: 0,
            ..Record::vacant()
        };
        r.set_first_fields(first);
        r.set_touched_s(touched_s);
        r
    }

    /// A free slot.
    pub fn vacant() -> Record {
        Record {
            text: Box::default(),
            first_ns: 0,
            last_ns: 0,
            seed_time_ns: 0,
            trace_id: [0; 16],
            span_id: [0; 8],
            scope: 0,
            seed_scope: 0,
            touched_s: 0,
            watch: 0,
            signal: 0,
            flags: VACANT,
        }
    }

    #[inline]
    pub fn is_vacant(&self) -> bool {
        self.flags & VACANT != 0
    }

    #[inline]
    pub fn has_extra(&self) -> bool {
        self.flags & HAS_EXTRA != 0
    }

    pub fn set_has_extra(&mut self, on: bool) {
        self.flags = if on {
            self.flags | HAS_EXTRA
        } else {
            self.flags & !HAS_EXTRA
        };
    }

    #[inline]
    pub fn watch(&self) -> u16 {
        self.watch
    }

    #[inline]
    pub fn scope(&self) -> u32 {
        self.scope
    }

    #[inline]
    pub fn id_bytes(&self) -> &[u8] {
        self.parts().0
    }

    pub fn key(&self) -> InstanceRef<'_> {
        InstanceRef {
            watch: self.watch,
            scope: self.scope,
            id: text(self.parts().0),
        }
    }

    #[inline]
    pub fn matches(&self, key: InstanceRef<'_>) -> bool {
        self.watch == key.watch && self.scope == key.scope && self.id_bytes() == key.id.as_bytes()
    }

    #[inline]
    pub fn touched_s(&self) -> u64 {
        u64::from(self.touched_s)
    }

    #[inline]
    pub fn set_touched_s(&mut self, s: u64) {
        self.touched_s = u32::try_from(s).unwrap_or(u32::MAX);
    }

    /// Whether the first use is `user`'s (compared as bytes: nothing decoded).
    #[inline]
    pub fn first_user_is(&self, user: &str) -> bool {
        self.parts().1 == user.as_bytes()
    }

    #[inline]
    pub fn first_last_ns(&self) -> u64 {
        self.last_ns
    }

    #[inline]
    pub fn first_tenant_is_none(&self) -> bool {
        self.parts().2.is_none()
    }

    /// The first use's principal under a boundary: its user, or its tenant.
    #[inline]
    pub fn first_principal(&self, tenant: bool) -> Option<&[u8]> {
        let (_, user, t) = self.parts();
        if tenant { t } else { Some(user) }
    }

    /// The first use, with its intervals (kept aside).
    pub fn first_use<'a>(&'a self, intervals: &'a [(u64, u64)]) -> UseRef<'a> {
        let (_, user, tenant) = self.parts();
        UseRef {
            user: text(user),
            tenant: tenant.map(text),
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            intervals,
            first: Seed {
                time_ns: self.seed_time_ns,
                trace_id: (self.flags & HAS_TRACE != 0).then_some(TraceId(self.trace_id)),
                span_id: (self.flags & HAS_SPAN != 0).then_some(SpanId(self.span_id)),
                signal: signal_of(self.signal),
                scope: self.seed_scope,
            },
        }
    }

    /// Another use becomes the first (the first was dropped or replaced); intervals are the
    /// table's to move.
    pub fn set_first_use(&mut self, first: UseRef<'_>) {
        self.text = pack(text(self.parts().0), first.user, first.tenant);
        self.set_first_fields(first);
    }

    /// The first use seen again over [start, end].
    #[inline]
    pub fn widen_first(&mut self, start: u64, end: u64) {
        self.first_ns = self.first_ns.min(start);
        self.last_ns = self.last_ns.max(end);
    }

    /// The first use learns its tenant.
    pub fn set_first_tenant(&mut self, tenant: &str) {
        let (id, user, _) = self.parts();
        self.text = pack(text(id), text(user), Some(tenant));
    }

    fn set_first_fields(&mut self, u: UseRef<'_>) {
        self.first_ns = u.first_ns;
        self.last_ns = u.last_ns;
        self.seed_time_ns = u.first.time_ns;
        self.trace_id = u.first.trace_id.map_or([0; 16], |t| t.0);
        self.span_id = u.first.span_id.map_or([0; 8], |s| s.0);
        self.seed_scope = u.first.scope;
        self.signal = u.first.signal as u8;
        let mut flags = self.flags & (HAS_EXTRA | VACANT);
        if u.first.trace_id.is_some() {
            flags |= HAS_TRACE;
        }
        if u.first.span_id.is_some() {
            flags |= HAS_SPAN;
        }
        self.flags = flags;
    }

    /// Instance id, first user, first tenant.
    #[inline]
    fn parts(&self) -> (&[u8], &[u8], Option<&[u8]>) {
        let (user_len, tenant_tag, rest) = match &*self.text {
            // Both lengths under 128, as users and tenants nearly always are.
            [u, t, rest @ ..] if (u | t) & 0x80 == 0 => (usize::from(*u), usize::from(*t), rest),
            text => {
                let (user_len, rest) = read_len(text);
                let (tenant_tag, rest) = read_len(rest);
                (user_len, tenant_tag, rest)
            }
        };
        let tenant_len = tenant_tag.saturating_sub(1);
        let id_len = rest.len().saturating_sub(user_len + tenant_len);
        let (id, rest) = rest.split_at(id_len);
        let (user, tenant) = rest.split_at(user_len.min(rest.len()));
        (id, user, (tenant_tag > 0).then_some(tenant))
    }
}

fn signal_of(b: u8) -> Signal {
    match b {
        b if b == Signal::Log as u8 => Signal::Log,
        b if b == Signal::Event as u8 => Signal::Event,
        _ => Signal::Span,
    }
}

/// Text written from a `&str` (see the module doc); never fails in practice, and an empty
/// string rather than a panic if it ever did.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn pack(id: &str, user: &str, tenant: Option<&str>) -> Box<[u8]> {
    let tenant_tag = tenant.map_or(0, |t| t.len() + 1);
    let size = len_size(user.len()) + len_size(tenant_tag) + id.len() + user.len() + tenant_tag;
    let mut out = Vec::with_capacity(size);
    write_len(&mut out, user.len());
    write_len(&mut out, tenant_tag);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(tenant.unwrap_or_default().as_bytes());
    out.into_boxed_slice()
}

fn len_size(mut n: usize) -> usize {
    let mut size = 1;
    while n >= 0x80 {
        n >>= 7;
        size += 1;
    }
    size
}

fn write_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length and what follows it; a cut-off length reads as what it has.
fn read_len(bytes: &[u8]) -> (usize, &[u8]) {
    let mut n = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        n |= usize::from(b & 0x7f) << (7 * i.min(9));
        if b & 0x80 == 0 {
            return (n, &bytes[i + 1..]);
        }
    }
    (n, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            time_ns: 7,
            trace_id: TraceId::from_bytes(&[1; 16]),
            span_id: None,
            signal: Signal::Event,
            scope: 3,
        }
    }

    #[test]
    fn a_record_gives_back_what_it_was_made_of() {
        let long = "u".repeat(300);
        for (id, user, tenant) in [
            ("f1", "alice", None),
            ("", "", Some("")),
            ("factory-0000001-0", long.as_str(), Some("acme")),
        ] {
            let key = InstanceRef {
                watch: 2,
                scope: 9,
                id,
            };
            let first = UseRef {
                user,
                tenant,
                first_ns: 5,
                last_ns: 6,
                intervals: &[],
                first: seed(),
            };
            let mut r = Record::new(key, first, 1_000);
            assert!(r.matches(key) && r.key() == key);
            assert!(r.first_user_is(user));
            let got = r.first_use(&[]);
            assert_eq!((got.user, got.tenant), (user, tenant));
            assert_eq!((got.first_ns, got.last_ns, got.first.time_ns), (5, 6, 7));
            assert_eq!(got.first.trace_id, seed().trace_id);
            assert!(got.first.span_id.is_none());
            assert_eq!((got.first.signal, got.first.scope), (Signal::Event, 3));
            assert_eq!(r.touched_s(), 1_000);
            r.set_first_tenant("globex");
            assert_eq!(r.first_use(&[]).tenant, Some("globex"));
            assert!(r.matches(key) && r.first_user_is(user));
        }
    }
}
