//! Cluster coordination of `scope = "global"` watches through Redis (or Redis Cluster).
//!
//! One atomic server-side script per (watch, instance) records each user with first/last seen,
//! latest interval and evidence, expires with the watch's retention, and answers whether the new
//! pair conflicts under the watch's policy; the first sidecar to see a conflict claims the
//! instance (`SET NX`) and alone raises the finding. Only pairs new to this sidecar reach Redis.
//! A conflict found on an instance another sidecar owns is forwarded to the owner ([`inbox`]),
//! which grows its finding with every user Redis recorded.
//!
//! Redis down: process-scoped detection is untouched; global checks wait in a bounded queue
//! (overflow counted) and `crosstalk_cluster_up` reads 0. A heartbeat notices outages and
//! restarts; on reconnect every global binding this sidecar published within its watch's
//! retention (at most [`MAX_KNOWN`]) is published again first, so a Redis that lost its data
//! (restart without persistence) still sees both sides. Verdicts this sidecar owns go to the
//! engine thread as their own message ([`crate::pipeline::Verdict`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script, ScriptInvocation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Cluster;
use crate::correlate::Received;
use crate::correlate::engine::{ClusterCheck, RemoteConflict, RemoteUse};
use crate::correlate::finding::Evidence;
use crate::pipeline::{ClusterLink, ClusterSink, VERDICT_CAPACITY, Verdict};
use crate::telemetry::metrics::{EvictLabels, Metrics};

mod inbox;

const HEARTBEAT: Duration = Duration::from_millis(500);
/// Published pairs remembered for replay at most; past it the least recently published go.
const MAX_KNOWN: usize = 100_000;

/// Records the user, judges the policy, claims the finding. Times travel as decimal strings:
/// Lua numbers are doubles and cjson prints 14 digits, which would blur nanoseconds.
const SCRIPT: &str = r#"
local users_key, claim_key = KEYS[1], KEYS[2]
local user, tenant, s, e = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local evidence, policy, boundary = ARGV[5], ARGV[6], ARGV[7]
local ttl, node = tonumber(ARGV[8]), ARGV[9]
local raw = redis.call('HGET', users_key, user)
local me
if raw then
  me = cjson.decode(raw)
  if tonumber(s) < tonumber(me.f) then me.f = s end
  if tonumber(e) > tonumber(me.l) then me.l = e end
  if tonumber(e) >= tonumber(me.e) then me.s = s; me.e = e end
  if me.t == '' and tenant ~= '' then me.t = tenant end
else
  me = {t = tenant, f = s, l = e, s = s, e = e, ev = evidence}
end
redis.call('HSET', users_key, user, cjson.encode(me))
redis.call('PEXPIRE', users_key, ttl)
local mine = user
if boundary == 'tenant' then mine = me.t end
local all = redis.call('HGETALL', users_key)
local conflict = false
local entries = {}
for i = 1, #all, 2 do
  local d = cjson.decode(all[i + 1])
  d.u = all[i]
  table.insert(entries, d)
  local theirs = d.u
  if boundary == 'tenant' then theirs = d.t end
  if d.u ~= user and mine ~= '' and theirs ~= '' and theirs ~= mine then
    if policy == 'exclusive' then
      conflict = true
    elseif policy == 'concurrent' and tonumber(d.s) <= tonumber(e) and tonumber(s) <= tonumber(d.e) then
      conflict = true
    end
  end
end
if not conflict then return cjson.encode({verdict = 'none'}) end
local owner = node
if not redis.call('SET', claim_key, node, 'NX', 'PX', ttl) then
  owner = redis.call('GET', claim_key)
end
return cjson.encode({verdict = 'conflict', owner = owner, users = entries})
"#;

#[derive(Deserialize)]
struct Answer {
    verdict: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    users: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    u: String,
    #[serde(default)]
    t: String,
    f: String,
    l: String,
    ev: String,
}

/// A connection to a single Redis or to a Redis Cluster.
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn open(urls: &[String], timeout: Duration) -> RedisResult<Conn> {
        if urls.len() == 1 {
            let client = redis::Client::open(urls[0].as_str())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            Ok(Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        } else {
            let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }

    async fn ping(&mut self) -> RedisResult<String> {
        let cmd = redis::cmd("PING");
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Claim `key` for `node` unless someone holds it (`SET NX PX`).
    async fn claim(&mut self, key: &str, node: &str, ttl_ms: u64) -> RedisResult<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(node)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1));
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        call: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            Conn::Single(c) => call.invoke_async(c).await,
            Conn::Cluster(c) => call.invoke_async(c).await,
        }
    }
}

/// Both keys of an instance share one hash tag, so they live in one Redis Cluster slot.
fn keys(check: &ClusterCheck) -> (String, String) {
    let mut h = Sha256::new();
    h.update(check.watch.as_bytes());
    h.update([0]);
    h.update(check.instance.as_bytes());
    let tag = hex::encode(&h.finalize()[..12]);
    (
        format!("crosstalk:{{{tag}}}:users"),
        format!("crosstalk:{{{tag}}}:claim"),
    )
}

/// The coordinator task.
pub struct Coordinator {
    pub config: Cluster,
    /// Stable across restarts, so that a sidecar recognises its own claims.
    pub node_id: String,
    pub checks: mpsc::Receiver<ClusterCheck>,
    /// Verdicts this sidecar owns, to the engine thread (see [`crate::pipeline::Verdict`]).
    pub verdicts: mpsc::Sender<Verdict>,
    /// Bindings known at start-up (restored from the store), published on first connect.
    pub initial: Vec<ClusterCheck>,
    pub metrics: Arc<Metrics>,
}

struct ClusterMetrics {
    up: Gauge,
    pending: Gauge,
    dropped: Counter,
    round_trips: Counter,
}

impl Coordinator {
    fn register(metrics: &Metrics) -> ClusterMetrics {
        ClusterMetrics {
            up: metrics.cluster_up.clone(),
            pending: metrics.cluster_pending.clone(),
            dropped: metrics.cluster_dropped.clone(),
            round_trips: metrics.cluster_round_trips.clone(),
        }
    }

    /// Run until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let m = Self::register(&self.metrics);
        let script = Script::new(SCRIPT);
        let inbox = inbox::Inbox::new();
        let mut inbox_due = false;
        let mut conn: Option<Conn> = None;
        let mut pending: VecDeque<ClusterCheck> = std::mem::take(&mut self.initial).into();
        let mut known = Known::new(MAX_KNOWN);
        // The findings this sidecar owns (claim key -> retention): claimed again first after a
        // reconnect, so that a Redis that restarted empty gives each finding back to its owner
        // instead of to whichever sidecar's replay happens to conflict first.
        let mut claims: BTreeMap<String, u64> = BTreeMap::new();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = self.checks.recv() => match got {
                    Some(c) => self.enqueue(&mut pending, c, &m),
                    None => return,
                },
                _ = heartbeat.tick() => {
                    inbox_due = true;
                    if let Some(c) = conn.as_mut() {
                        if c.ping().await.is_err() {
                            tracing::warn!("Redis unreachable; global checks are queued");
                            conn = None;
                            m.up.set(0);
                        }
                    }
                }
            }
            while let Ok(c) = self.checks.try_recv() {
                self.enqueue(&mut pending, c, &m);
            }
            if conn.is_none() {
                match Conn::open(&self.config.redis_urls, self.config.timeout).await {
                    Ok(c) => {
                        m.up.set(1);
                        let c = conn.insert(c);
                        if let Err(e) = self.reclaim(c, &claims).await {
                            tracing::warn!(error = %e, "Redis reclaim failed; retried");
                            conn = None;
                            m.up.set(0);
                            continue;
                        }
                        // Publish everything again first: Redis may have restarted empty.
                        let again = known.replay(Instant::now());
                        for c in again.into_iter().rev() {
                            pending.push_front(c);
                        }
                        tracing::info!(replay = pending.len(), "connected to Redis");
                    }
                    Err(e) => {
                        m.up.set(0);
                        tracing::debug!(error = %e, "Redis connect failed");
                        m.pending.set(pending.len() as i64);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            while let Some(check) = pending.pop_front() {
                match self.judge(&script, &inbox, c, &check).await {
                    Ok(verdict) => {
                        m.round_trips.inc();
                        known.insert(check.clone(), Instant::now(), &self.metrics);
                        if let Some(rc) = verdict {
                            if claims.len() >= MAX_KNOWN {
                                claims.pop_first();
                            }
                            claims.insert(keys(&rc.check).1, rc.check.retention_ms);
                            self.deliver(rc).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis check failed; queued for replay");
                        pending.push_front(check);
                        conn = None;
                        m.up.set(0);
                        break;
                    }
                }
            }
            if conn.is_some() && std::mem::take(&mut inbox_due) {
                let Some(c) = conn.as_mut() else { continue };
                if let Err(e) = self.drain_inbox(&inbox, c).await {
                    tracing::warn!(error = %e, "Redis inbox read failed; retried");
                    conn = None;
                    m.up.set(0);
                }
            }
            m.pending.set(pending.len() as i64);
        }
    }

    /// Claim again the findings this sidecar owned before the connection was lost.
    async fn reclaim(&self, conn: &mut Conn, claims: &BTreeMap<String, u64>) -> RedisResult<()> {
        for (key, ttl_ms) in claims {
            conn.claim(key, &self.node_id, *ttl_ms).await?;
        }
        Ok(())
    }

    /// Grow the findings this sidecar owns with the users other sidecars found since.
    async fn drain_inbox(&self, inbox: &inbox::Inbox, conn: &mut Conn) -> RedisResult<()> {
        let (taken, answers) = inbox.peek(conn, &self.node_id).await?;
        for (check, answer) in answers {
            if let Some(rc) = self.conflict_of(check, &answer) {
                self.deliver(rc).await;
            }
        }
        inbox.done(conn, &self.node_id, taken).await
    }

    fn enqueue(&self, pending: &mut VecDeque<ClusterCheck>, c: ClusterCheck, m: &ClusterMetrics) {
        if pending.len() >= self.config.max_pending {
            pending.pop_front();
            m.dropped.inc();
        }
        pending.push_back(c);
    }

    /// Run the script; `Some` when a conflict is found and this sidecar owns the finding. A
    /// conflict on an instance another sidecar owns is forwarded to it.
    async fn judge(
        &self,
        script: &Script,
        inbox: &inbox::Inbox,
        conn: &mut Conn,
        check: &ClusterCheck,
    ) -> RedisResult<Option<RemoteConflict>> {
        let (users_key, claim_key) = keys(check);
        let evidence = serde_json::to_string(&check.evidence).unwrap_or_default();
        let mut call = script.prepare_invoke();
        call.key(users_key)
            .key(claim_key)
            .arg(&check.user)
            .arg(check.tenant.as_deref().unwrap_or(""))
            .arg(check.start_ns.to_string())
            .arg(check.end_ns.to_string())
            .arg(evidence)
            .arg(&check.policy)
            .arg(&check.boundary)
            .arg(check.retention_ms.max(1))
            .arg(&self.node_id);
        let answer: String = conn.invoke(&call).await?;
        let owner = match serde_json::from_str::<Answer>(&answer) {
            Ok(v) if v.verdict == "conflict" => v.owner,
            _ => String::new(),
        };
        if !owner.is_empty() && owner != self.node_id {
            inbox.forward(conn, &owner, check).await?;
            return Ok(None);
        }
        Ok(self.conflict_of(check.clone(), &answer))
    }

    /// The conflict in a script's `answer` on `check`'s instance, if this sidecar owns it.
    fn conflict_of(&self, check: ClusterCheck, answer: &str) -> Option<RemoteConflict> {
        let verdict: Answer = match serde_json::from_str(answer) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable verdict from Redis");
                return None;
            }
        };
        if verdict.verdict != "conflict" || verdict.owner != self.node_id {
            return None;
        }
        let uses = verdict
            .users
            .into_iter()
            .filter_map(|e| {
                Some(RemoteUse {
                    evidence: serde_json::from_str::<Evidence>(&e.ev).ok()?,
                    user: e.u,
                    tenant: (!e.t.is_empty()).then_some(e.t),
                    first_ns: e.f.parse().ok()?,
                    last_ns: e.l.parse().ok()?,
                })
            })
            .collect();
        Some(RemoteConflict { check, uses })
    }

    /// Hand a verdict to the engine, waiting for room (the path's full-policy); an engine
    /// that has stopped takes no more.
    async fn deliver(&self, conflict: RemoteConflict) {
        let verdict = Verdict {
            conflict,
            received: Received::now(),
        };
        let _ = self.verdicts.send(verdict).await;
    }
}

/// Every pair this sidecar published, to publish again after an outage (Redis may have lost
/// it). Bounded: a pair goes once its watch's retention has passed since it was published
/// (Redis has expired it by then too), and past `cap` pairs the least recently published go,
/// counted in `crosstalk_evicted_total{reason="cluster_replay"}`.
struct Known {
    cap: usize,
    pairs: HashMap<(String, String, String), (ClusterCheck, Instant)>,
}

impl Known {
    fn new(cap: usize) -> Self {
        Known {
            cap: cap.max(1),
            pairs: HashMap::new(),
        }
    }

    fn insert(&mut self, check: ClusterCheck, now: Instant, metrics: &Metrics) {
        let key = (
            check.watch.clone(),
            check.instance.clone(),
            check.user.clone(),
        );
        if self.pairs.len() >= self.cap && !self.pairs.contains_key(&key) {
            self.expire(now);
        }
        if self.pairs.len() >= self.cap && !self.pairs.contains_key(&key) {
            // A tenth at once, so the scan is paid once per many inserts.
            let n = (self.cap / 10).max(1);
            let mut ages: Vec<(Instant, (String, String, String))> = self
                .pairs
                .iter()
                .map(|(k, (_, t))| (*t, k.clone()))
                .collect();
            ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
            for (_, k) in ages.into_iter().take(n) {
                self.pairs.remove(&k);
                metrics
                    .evicted
                    .get_or_create(&EvictLabels {
                        watch: k.0,
                        reason: "cluster_replay".into(),
                    })
                    .inc();
            }
        }
        self.pairs.insert(key, (check, now));
    }

    /// Drop pairs whose retention has passed since they were published.
    fn expire(&mut self, now: Instant) {
        self.pairs.retain(|_, (c, at)| {
            now.saturating_duration_since(*at) <= Duration::from_millis(c.retention_ms)
        });
    }

    /// The pairs still worth publishing again, oldest first.
    fn replay(&mut self, now: Instant) -> Vec<ClusterCheck> {
        self.expire(now);
        let mut all: Vec<&(ClusterCheck, Instant)> = self.pairs.values().collect();
        all.sort_by_key(|(_, at)| *at);
        all.into_iter().map(|(c, _)| c.clone()).collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pairs.len()
    }
}

/// Both ends of cluster coordination, made together so neither can be left unconnected: the
/// engine's [`ClusterLink`] and the coordinator task that serves it.
pub fn link(
    config: &Cluster,
    node_id: String,
    initial: Vec<ClusterCheck>,
    metrics: Arc<Metrics>,
) -> (ClusterLink, Coordinator) {
    let (tx, checks) = mpsc::channel(config.max_pending);
    let dropped = metrics.cluster_dropped.clone();
    // Full-policy: drop and count; the coordinator's own queue is the bounded buffer.
    let sink: ClusterSink = Box::new(move |new| {
        for check in new {
            if tx.try_send(check).is_err() {
                dropped.inc();
            }
        }
    });
    let (verdict_tx, verdicts) = mpsc::channel(VERDICT_CAPACITY);
    let coordinator = Coordinator {
        config: config.clone(),
        node_id,
        checks,
        verdicts: verdict_tx,
        initial,
        metrics,
    };
    (
        ClusterLink {
            checks: sink,
            verdicts,
        },
        coordinator,
    )
}

/// This sidecar's node id: `<storage>/node.id`, created once.
pub fn node_id(storage_dir: &std::path::Path) -> std::io::Result<String> {
    let path = storage_dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let mut raw = [0u8; 12];
            getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
            let id = hex::encode(raw);
            std::fs::create_dir_all(storage_dir)?;
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::engine::tests::growth::{remote_use, verdict};

    fn check(instance: &str, user: &str, retention_ms: u64) -> ClusterCheck {
        let mut check = verdict(vec![remote_use(user, "acme", 1, 2)]).check;
        check.instance = instance.into();
        check.retention_ms = retention_ms;
        check
    }

    #[test]
    fn replay_set_forgets_pairs_past_their_retention() {
        let metrics = Metrics::new();
        let mut known = Known::new(MAX_KNOWN);
        let t0 = Instant::now();
        known.insert(check("a", "alice", 1_000), t0, &metrics);
        known.insert(check("b", "bob", 60_000), t0, &metrics);
        let later = t0 + Duration::from_secs(2);
        let replay = known.replay(later);
        assert_eq!(replay.len(), 1, "Redis has expired the first pair too");
        assert_eq!(replay[0].instance, "b");
        assert_eq!(known.len(), 1);
    }

    #[test]
    fn replay_set_is_capped_and_counts_what_it_drops() {
        let metrics = Metrics::new();
        let mut known = Known::new(10);
        let t0 = Instant::now();
        for i in 0..25u64 {
            let at = t0 + Duration::from_millis(i);
            known.insert(check(&format!("i{i}"), "alice", 3_600_000), at, &metrics);
        }
        assert!(known.len() <= 10);
        let replay = known.replay(t0 + Duration::from_millis(30));
        assert_eq!(
            replay.last().map(|c| c.instance.as_str()),
            Some("i24"),
            "the most recently published are kept"
        );
        let text = metrics.encode_prometheus_text();
        assert!(
            text.contains(r#"crosstalk_evicted_total{watch="w",reason="cluster_replay"} 15"#),
            "{text}"
        );
    }
}
