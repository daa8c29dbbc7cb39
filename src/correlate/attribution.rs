//! Trace-level user attribution: which user (and tenant) each recent trace served, and the
//! bounded buffer of observations waiting for their trace's user to arrive.
//!
//! Services often put `user.id` only on the root server span while the span that touches the
//! shared object is a child, exported earlier or later in another batch. Both structures are
//! bounded; what falls out is settled early (resource user, else unattributed), never lost.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::correlate::FastMap;
use crate::normalize::{Observation, TraceId};

/// Who a trace served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceIdentity {
    pub user: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
}

/// Recently seen traces and their user, first one seen wins. Expires by age and by count.
pub struct TraceUsers {
    map: FastMap<TraceId, TraceIdentity>,
    order: VecDeque<(u64, TraceId)>,
    capacity: usize,
    ttl_ns: u64,
}

impl TraceUsers {
    pub fn new(capacity: usize, ttl_ns: u64) -> Self {
        TraceUsers {
            map: FastMap::default(),
            order: VecDeque::new(),
            capacity,
            ttl_ns,
        }
    }

    pub fn get(&self, trace: &TraceId) -> Option<&TraceIdentity> {
        self.map.get(trace)
    }

    /// Learn from one observation; true when this taught the trace's user for the first time.
    pub fn learn(
        &mut self,
        trace: TraceId,
        user: Option<&str>,
        tenant: Option<&str>,
        now_ns: u64,
    ) -> bool {
        if user.is_none() && tenant.is_none() {
            return false;
        }
        let entry = self.map.entry(trace).or_insert_with(|| {
            self.order.push_back((now_ns, trace));
            TraceIdentity::default()
        });
        let mut new_user = false;
        if entry.user.is_none() {
            if let Some(u) = user {
                entry.user = Some(u.into());
                new_user = true;
            }
        }
        if entry.tenant.is_none() {
            entry.tenant = tenant.map(Arc::from);
        }
        if self.map.len() > self.capacity {
            self.expire(u64::MAX);
        }
        new_user
    }

    /// Forget traces older than the TTL; past the capacity, forget the oldest regardless.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(t, trace)) = self.order.front() {
            let too_old = now_ns.saturating_sub(t) > self.ttl_ns;
            if !too_old && self.map.len() <= self.capacity {
                break;
            }
            self.order.pop_front();
            self.map.remove(&trace);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// When and how an observation was received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Wall clock, Unix nanoseconds.
    pub wall_ns: u64,
    /// Monotonic, for the detection delay.
    pub at: std::time::Instant,
}

impl Received {
    pub fn now() -> Self {
        Received {
            wall_ns: crate::correlate::finding::now_ns(),
            at: std::time::Instant::now(),
        }
    }
}

/// An observation waiting for its trace's user.
#[derive(Debug, Clone)]
pub struct Parked {
    pub obs: Observation,
    pub received: Received,
    /// Its row in the store's `pending` table, so that a restart does not lose it.
    pub seq: u64,
}

/// Observations without a user, keyed by trace, released when the trace's user is learned or
/// when their wait runs out.
pub struct Pending {
    by_trace: FastMap<TraceId, Vec<Parked>>,
    order: VecDeque<(u64, TraceId)>,
    len: usize,
    capacity: usize,
}

impl Pending {
    pub fn new(capacity: usize) -> Self {
        Pending {
            by_trace: FastMap::default(),
            order: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Park an observation until `deadline_ns`. When the buffer is over capacity, the oldest
    /// trace's observations are returned to be settled now.
    pub fn park(&mut self, trace: TraceId, parked: Parked, deadline_ns: u64) -> Vec<Parked> {
        let list = self.by_trace.entry(trace).or_default();
        if list.is_empty() {
            self.order.push_back((deadline_ns, trace));
        }
        list.push(parked);
        self.len += 1;
        let mut overflow = Vec::new();
        while self.len > self.capacity {
            match self.pop_oldest() {
                Some(mut list) => overflow.append(&mut list),
                None => break,
            }
        }
        overflow
    }

    /// Forget the observation `seq` waiting on `trace` (its batch was undone).
    pub fn unpark(&mut self, trace: &TraceId, seq: u64) {
        let Some(list) = self.by_trace.get_mut(trace) else {
            return;
        };
        let before = list.len();
        list.retain(|p| p.seq != seq);
        self.len -= before - list.len();
        if list.is_empty() {
            // Its entry in `order` goes stale, which `pop_oldest` skips.
            self.by_trace.remove(trace);
        }
    }

    /// Everything waiting on `trace`.
    pub fn take(&mut self, trace: &TraceId) -> Vec<Parked> {
        let list = self.by_trace.remove(trace).unwrap_or_default();
        self.len -= list.len();
        list
    }

    /// Everything whose wait ended at or before `now_ns`.
    pub fn expired(&mut self, now_ns: u64) -> Vec<Parked> {
        let mut out = Vec::new();
        while let Some(&(deadline, _)) = self.order.front() {
            if deadline > now_ns {
                break;
            }
            if let Some(mut list) = self.pop_oldest() {
                out.append(&mut list);
            }
        }
        out
    }

    /// Everything, oldest first (shutdown, end of a `check` run).
    pub fn drain(&mut self) -> Vec<Parked> {
        let mut out = Vec::new();
        while !self.order.is_empty() {
            if let Some(mut list) = self.pop_oldest() {
                out.append(&mut list);
            }
        }
        out
    }

    fn pop_oldest(&mut self) -> Option<Vec<Parked>> {
        while let Some((_, trace)) = self.order.pop_front() {
            // A trace taken early leaves a stale entry behind; skip it.
            if let Some(list) = self.by_trace.remove(&trace) {
                self.len -= list.len();
                return Some(list);
            }
        }
        None
    }
}
