//! Typed access to what the origin keeps in Redis (targets, plans, windows, registry).
//!
//! Handlers and loops speak in core types (`TargetsSpec`, `Plan`, `WindowStats`); the
//! key layout lives in [`crate::keys`] and the encoding here. Writes that must not race
//! (targets with `If-Match`) are Lua scripts on a single key, so they are atomic on a
//! single node and on a cluster alike.

use std::collections::HashMap;

use allot_core::{ControlState, Decision, PlacementId, Plan, TargetsSpec, WindowStats};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::conn::RedisConn;
use allot_core::contract::keys::{self, PlacementKeys};

/// A placement's stored targets.
#[derive(Debug, Clone)]
pub struct TargetsRecord {
    /// `None` once deleted (the revision survives, so old ETags stay stale).
    pub spec: Option<TargetsSpec>,
    pub rev: u64,
    pub updated_at_ms: u64,
    pub updated_by: String,
}

impl TargetsRecord {
    pub fn etag(&self) -> String {
        etag(self.rev)
    }
}

/// The `ETag` of a revision.
pub fn etag(rev: u64) -> String {
    format!("\"{rev}\"")
}

/// The outcome of a conditional write.
#[derive(Debug, Clone)]
pub enum Cas {
    /// Written; `before` is the previous spec JSON (empty if none).
    Written { rev: u64, before: String },
    /// The precondition failed; the current revision.
    Conflict { rev: u64 },
    /// Nothing to delete.
    Missing,
}

/// The plan in force for a placement, with the decision that made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub plan: Plan,
    /// `None` for the empty plan published when a placement is deleted.
    pub decision: Option<Decision>,
    /// The targets revision the plan was made from.
    pub targets_rev: u64,
    pub published_at_ms: u64,
}

/// A stored value that does not decode: a bug or a hand edit, reported as 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("stored {what} is corrupt: {message}")]
    Corrupt { what: String, message: String },
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Redis(e) => Self::Unavailable(e),
            other => Self::Internal(other.to_string()),
        }
    }
}

fn corrupt(what: impl Into<String>, message: impl ToString) -> StoreError {
    StoreError::Corrupt { what: what.into(), message: message.to_string() }
}

const CAS_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'rev') or '0'
local old = redis.call('HGET', KEYS[1], 'spec') or ''
if ARGV[1] ~= '' and (old == '' or ARGV[1] ~= cur) then return {0, cur, old} end
if ARGV[2] == '' then
  if old == '' then return {2, cur, old} end
  redis.call('HDEL', KEYS[1], 'spec')
else
  redis.call('HSET', KEYS[1], 'spec', ARGV[2])
end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'updated_at_ms', ARGV[3], 'updated_by', ARGV[4])
return {1, tostring(rev), old}
";

/// Redis, seen through the origin's data model.
#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    cas: redis::Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    pub fn new(conn: RedisConn) -> Self {
        Self { conn, cas: redis::Script::new(CAS_SCRIPT) }
    }

    /// The shared multiplexed connection: concurrent commands are pipelined on it.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut c = self.conn();
        redis::cmd("PING").query_async::<String>(&mut c).await.map(|_| ())
    }

    pub async fn targets(&self, p: &PlacementId) -> Result<Option<TargetsRecord>, StoreError> {
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(PlacementKeys::new(p).targets()).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let spec = match h.get("spec") {
            Some(s) => Some(serde_json::from_str(s).map_err(|e| corrupt(format!("targets of {p}"), e))?),
            None => None,
        };
        let num = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(TargetsRecord {
            spec,
            rev: num("rev"),
            updated_at_ms: num("updated_at_ms"),
            updated_by: h.get("updated_by").cloned().unwrap_or_default(),
        }))
    }

    /// Writes (`spec = Some`) or deletes targets if the revision is still `if_match`
    /// (or unconditionally when `None`).
    pub async fn write_targets(
        &self,
        p: &PlacementId,
        if_match: Option<u64>,
        spec: Option<&TargetsSpec>,
        who: &str,
        now_ms: u64,
    ) -> Result<Cas, StoreError> {
        let json = match spec {
            Some(s) => serde_json::to_string(s).map_err(|e| corrupt("targets", e))?,
            None => String::new(),
        };
        let mut c = self.conn();
        let (status, rev, before): (i64, String, String) = self
            .cas
            .key(PlacementKeys::new(p).targets())
            .arg(if_match.map(|r| r.to_string()).unwrap_or_default())
            .arg(json)
            .arg(now_ms)
            .arg(who)
            .invoke_async(&mut c)
            .await?;
        let rev = rev.parse().map_err(|e| corrupt("targets revision", e))?;
        Ok(match status {
            1 => Cas::Written { rev, before },
            0 => Cas::Conflict { rev },
            _ => Cas::Missing,
        })
    }

    /// Registers a placement and asks the control loop for a round now.
    pub async fn mark_changed(&self, p: &PlacementId, registered: bool) -> Result<(), StoreError> {
        // Two keys in two slots: two commands, not a pipeline (cluster-safe).
        if registered {
            self.register(p).await?;
        }
        let mut c = self.conn();
        c.sadd::<_, _, ()>(keys::DIRTY, p.as_str()).await?;
        Ok(())
    }

    /// Adds a placement to the registry: the control loop's rounds and ingest's
    /// admission both start from it.
    pub async fn register(&self, p: &PlacementId) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.sadd::<_, _, ()>(keys::PLACEMENTS, p.as_str()).await?;
        Ok(())
    }

    pub async fn placements(&self) -> Result<Vec<PlacementId>, StoreError> {
        let mut c = self.conn();
        let ids: Vec<String> = c.smembers(keys::PLACEMENTS).await?;
        let mut out: Vec<PlacementId> = ids.into_iter().filter_map(|s| PlacementId::parse(s).ok()).collect();
        out.sort();
        Ok(out)
    }

    /// Takes the placements marked for an immediate round.
    pub async fn take_dirty(&self) -> Result<Vec<PlacementId>, StoreError> {
        let mut c = self.conn();
        let ids: Vec<String> = redis::cmd("SPOP").arg(keys::DIRTY).arg(1000).query_async(&mut c).await?;
        Ok(ids.into_iter().filter_map(|s| PlacementId::parse(s).ok()).collect())
    }

    pub async fn unregister(&self, p: &PlacementId) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.srem::<_, _, ()>(keys::PLACEMENTS, p.as_str()).await?;
        Ok(())
    }

    pub async fn plan_record(&self, p: &PlacementId) -> Result<Option<PlanRecord>, StoreError> {
        let mut c = self.conn();
        let s: Option<String> = c.get(PlacementKeys::new(p).plan()).await?;
        s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(format!("plan of {p}"), e))).transpose()
    }

    pub async fn control_state(&self, p: &PlacementId) -> Result<ControlState, StoreError> {
        let mut c = self.conn();
        let s: Option<String> = c.get(PlacementKeys::new(p).state()).await?;
        Ok(s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(format!("state of {p}"), e)))
            .transpose()?
            .unwrap_or_default())
    }

    /// Stores a published plan: current record, history (newest first, trimmed), state.
    pub async fn save_plan(&self, p: &PlacementId, record: &PlanRecord, history_len: usize) -> Result<(), StoreError> {
        let k = PlacementKeys::new(p);
        let json = serde_json::to_string(record).map_err(|e| corrupt("plan", e))?;
        let mut pipe = redis::pipe();
        pipe.atomic().set(k.plan(), &json).ignore().lpush(k.plans(), record.plan.to_json()).ignore();
        pipe.ltrim(k.plans(), 0, history_len.max(1) as isize - 1).ignore();
        if let Some(d) = &record.decision {
            let state = serde_json::to_string(&d.state).map_err(|e| corrupt("state", e))?;
            pipe.set(k.state(), state).ignore();
        }
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// Published plans, newest first.
    pub async fn plan_history(&self, p: &PlacementId, limit: usize) -> Result<Vec<Plan>, StoreError> {
        let mut c = self.conn();
        let raw: Vec<String> = c.lrange(PlacementKeys::new(p).plans(), 0, limit.max(1) as isize - 1).await?;
        raw.iter().map(|s| Plan::parse(s.as_bytes()).map_err(|e| corrupt(format!("plan history of {p}"), e))).collect()
    }

    /// The counts of windows `indices` (missing windows are empty).
    pub async fn windows(&self, p: &PlacementId, indices: &[u64]) -> Result<Vec<WindowStats>, StoreError> {
        let k = PlacementKeys::new(p);
        let mut pipe = redis::pipe();
        for i in indices {
            pipe.hgetall(k.window(*i));
        }
        let mut c = self.conn();
        let raw: Vec<HashMap<String, f64>> = pipe.query_async(&mut c).await?;
        raw.into_iter()
            .map(|fields| WindowStats::from_fields(fields).map_err(|e| corrupt(format!("window of {p}"), e)))
            .collect()
    }
}
