//! Growing a finding another sidecar owns. A sidecar whose check finds a conflict on an instance
//! claimed by another node forwards the check to that node's inbox in Redis; the owner drains
//! its inbox on every heartbeat, reads the instance's users again (with the judging script's
//! answer format) and grows its finding. So a third user seen anywhere joins the one finding.
//!
//! Bounded: an inbox keeps its newest [`MAX_INBOX`] checks and expires with the retention of the
//! last check forwarded. The owner reads the users from Redis, not from the forward, so one
//! forward handled late or twice grows the finding to the same users.

use redis::{RedisResult, Script};

use super::Conn;
use crate::correlate::engine::ClusterCheck;

/// Checks an inbox holds at most; older ones go first.
const MAX_INBOX: usize = 10_000;
/// Checks taken per drain.
const TAKE_AT_ONCE: usize = 100;

const PUSH: &str = r#"
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

const PEEK: &str = r#"return redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)"#;

/// Drop the first `ARGV[1]` checks, once they are handled (new ones are pushed at the end).
const TRIM: &str = r#"redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1) return 1"#;

/// Read only: the instance's users and owner, as the judging script answers a conflict.
const READ: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local owner = redis.call('GET', KEYS[2])
if #all == 0 or not owner then return cjson.encode({verdict = 'none'}) end
local entries = {}
for i = 1, #all, 2 do
  local d = cjson.decode(all[i + 1])
  d.u = all[i]
  table.insert(entries, d)
end
return cjson.encode({verdict = 'conflict', owner = owner, users = entries})
"#;

pub(super) struct Inbox {
    push: Script,
    peek: Script,
    trim: Script,
    read: Script,
}

/// A node's inbox; the node id is the hash tag, so the key has one Redis Cluster slot.
fn inbox_key(node: &str) -> String {
    format!("crosstalk:inbox:{{{node}}}")
}

impl Inbox {
    pub fn new() -> Self {
        Inbox {
            push: Script::new(PUSH),
            peek: Script::new(PEEK),
            trim: Script::new(TRIM),
            read: Script::new(READ),
        }
    }

    /// Tell `owner` that `check` found a conflict on an instance it owns.
    pub async fn forward(
        &self,
        conn: &mut Conn,
        owner: &str,
        check: &ClusterCheck,
    ) -> RedisResult<()> {
        let Ok(json) = serde_json::to_string(check) else {
            return Ok(());
        };
        let mut call = self.push.prepare_invoke();
        call.key(inbox_key(owner))
            .arg(json)
            .arg(MAX_INBOX)
            .arg(check.retention_ms.max(1));
        conn.invoke::<i64>(&call).await.map(|_| ())
    }

    /// Up to [`TAKE_AT_ONCE`] checks forwarded to `node`, each with the instance's state now
    /// (the judging script's answer format). They leave the inbox only with [`Inbox::done`],
    /// so a Redis error half-way loses none.
    pub async fn peek(
        &self,
        conn: &mut Conn,
        node: &str,
    ) -> RedisResult<(usize, Vec<(ClusterCheck, String)>)> {
        let mut call = self.peek.prepare_invoke();
        call.key(inbox_key(node)).arg(TAKE_AT_ONCE);
        let items: Vec<String> = conn.invoke(&call).await?;
        let taken = items.len();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Ok(check) = serde_json::from_str::<ClusterCheck>(&item) else {
                tracing::warn!("unreadable check in this node's Redis inbox; skipped");
                continue;
            };
            let (users_key, claim_key) = super::keys(&check);
            let mut call = self.read.prepare_invoke();
            call.key(users_key).key(claim_key);
            let answer: String = conn.invoke(&call).await?;
            out.push((check, answer));
        }
        Ok((taken, out))
    }

    /// Drop the `taken` checks [`Inbox::peek`] returned.
    pub async fn done(&self, conn: &mut Conn, node: &str, taken: usize) -> RedisResult<()> {
        if taken == 0 {
            return Ok(());
        }
        let mut call = self.trim.prepare_invoke();
        call.key(inbox_key(node)).arg(taken);
        conn.invoke::<i64>(&call).await.map(|_| ())
    }
}
