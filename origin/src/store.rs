//! Typed access to what the origin keeps in Redis (targets, plans, windows, registry).
//!
//! Handlers and loops speak in core types (`TargetsSpec`, `Plan`, `WindowStats`); the
//! key layout lives in [`allot_core::contract::keys`] and the encoding here. Writes that must not race
//! (targets with `If-Match`) are Lua scripts on a single key, so they are atomic on a
//! single node and on a cluster alike.

use std::collections::HashMap;

use allot_core::{ControlState, Decision, PlacementId, Plan, WindowStats};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::conn::RedisConn;

mod targets;

use allot_core::contract::keys::{self, PlacementKeys};
pub use targets::{AUDIT_PER_PLACEMENT, Cas, TargetsRecord, TargetsSummary, etag};

/// The plan in force for a placement, with the decision that made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub plan: Plan,
    /// `None` for the empty plan published when a placement is deleted, and for a
    /// stored decision that no longer parses (logged): the decision is a record of how
    /// the plan was made, and one that a bug or a hand edit broke (a NaN is stored as
    /// `null`) must not make the plan in force unreadable, which would fail every round
    /// of the placement and its status.
    #[serde(default, deserialize_with = "decision_or_none")]
    pub decision: Option<Decision>,
    /// The targets revision the plan was made from.
    pub targets_rev: u64,
    pub published_at_ms: u64,
}

fn decision_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decision>, D::Error> {
    let value = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    Ok(serde_json::from_value(value)
        .inspect_err(|e| tracing::warn!(error = %e, "stored decision unreadable; the plan in force is read without it"))
        .ok())
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

/// Allocates the next plan version for a lease epoch. An epoch older than one that
/// already allocated or saved here is refused (-1): its holder lost the lease. The
/// version is above every version allocated before and above `floor` (the stored
/// plan's), so two holders can never publish two plans under one version. None is
/// allocated above `plan::MAX_VERSION` (-2): the scripts' numbers are doubles, exact
/// only up to it.
const ALLOCATE_SCRIPT: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local epoch = tonumber(ARGV[1])
if epoch < seen then return -1 end
if epoch > seen then redis.call('HSET', KEYS[1], 'epoch', ARGV[1]) end
local last = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local v = math.max(last, tonumber(ARGV[2])) + 1
if v > 9007199254740991 then return -2 end
redis.call('HSET', KEYS[1], 'version', v)
return v
";

/// Records a plan about to be published in the placement's plan list (what ingest's
/// admission learns versions from), for a current epoch only: -1 fenced, 1 recorded.
const ISSUE_SCRIPT: &str = r"
if tonumber(ARGV[1]) < tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') then return -1 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
";

/// Stores a published plan only forward and only for a current epoch: -1 fenced (an
/// older epoch), 0 stale (a version at or below the stored one), 1 stored.
const SAVE_SCRIPT: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if tonumber(ARGV[1]) < seen then return -1 end
if tonumber(ARGV[2]) <= tonumber(redis.call('HGET', KEYS[1], 'saved') or '0') then return 0 end
redis.call('HSET', KEYS[1], 'saved', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4]) end
return 1
";

/// Stores the controller's state for a current epoch only (-1 fenced, 1 stored); a
/// newer epoch is recorded, so an older holder's writes are refused from then on.
const STATE_SCRIPT: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local epoch = tonumber(ARGV[1])
if epoch < seen then return -1 end
if epoch > seen then redis.call('HSET', KEYS[1], 'epoch', ARGV[1]) end
redis.call('SET', KEYS[2], ARGV[2])
return 1
";

/// Compare-and-delete of a registration (one key, so atomic on a cluster too).
const UNREGISTER_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
";

/// What became of a fenced control-loop write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced<T> {
    Done(T),
    /// A newer lease epoch has written this placement: this holder lost the lease.
    Epoch,
    /// The plan is not newer than the stored one.
    Stale,
}

/// Redis, seen through the origin's data model.
#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    cas: redis::Script,
    allocate: redis::Script,
    issue: redis::Script,
    save: redis::Script,
    state: redis::Script,
    unregister: redis::Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            cas: redis::Script::new(targets::CAS_SCRIPT),
            allocate: redis::Script::new(ALLOCATE_SCRIPT),
            issue: redis::Script::new(ISSUE_SCRIPT),
            save: redis::Script::new(SAVE_SCRIPT),
            state: redis::Script::new(STATE_SCRIPT),
            unregister: redis::Script::new(UNREGISTER_SCRIPT),
        }
    }

    /// The shared multiplexed connection: concurrent commands are pipelined on it.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut c = self.conn();
        redis::cmd("PING").query_async::<String>(&mut c).await.map(|_| ())
    }

    /// Asks the control loop for a round of `p` now (rather than at the next full round).
    pub async fn mark_dirty(&self, p: &PlacementId) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.sadd::<_, _, ()>(keys::DIRTY, p.as_str()).await?;
        Ok(())
    }

    /// Adds a placement to the registry (the control loop's rounds and ingest's
    /// admission both start from it), or renews its entry: every call gives it a new
    /// registration stamp, returned.
    pub async fn register(&self, p: &PlacementId) -> Result<u64, StoreError> {
        let mut c = self.conn();
        Ok(c.hincr(keys::REGISTRY, p.as_str(), 1).await?)
    }

    /// The placement's registration stamp (`None`: not registered).
    pub async fn registration(&self, p: &PlacementId) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn();
        Ok(c.hget(keys::REGISTRY, p.as_str()).await?)
    }

    pub async fn placements(&self) -> Result<Vec<PlacementId>, StoreError> {
        let mut c = self.conn();
        let ids: Vec<String> = c.hkeys(keys::REGISTRY).await?;
        let mut out: Vec<PlacementId> = ids.into_iter().filter_map(|s| PlacementId::parse(s).ok()).collect();
        out.sort();
        Ok(out)
    }

    /// Takes the placements marked for an immediate round that are `mine` (in this
    /// origin's control shards); the others' marks stay for the origins holding them.
    /// Entries that are not placement ids are dropped.
    pub async fn take_dirty(&self, mine: impl Fn(&PlacementId) -> bool) -> Result<Vec<PlacementId>, StoreError> {
        let mut c = self.conn();
        let ids: Vec<String> = c.smembers(keys::DIRTY).await?;
        let (mut taken, mut removed) = (Vec::new(), Vec::new());
        for id in ids {
            match PlacementId::parse(&id) {
                Ok(p) if mine(&p) => {
                    taken.push(p);
                    removed.push(id);
                }
                Ok(_) => {}
                Err(_) => removed.push(id),
            }
        }
        if !removed.is_empty() {
            c.srem::<_, _, ()>(keys::DIRTY, &removed).await?;
        }
        Ok(taken)
    }

    /// Takes a placement out of the registry only if its registration is still
    /// `stamp`, the one read before deciding it has no targets: a `PUT` that registered
    /// it since (a new stamp) keeps it in. Whether it was removed.
    pub async fn unregister(&self, p: &PlacementId, stamp: u64) -> Result<bool, StoreError> {
        let mut c = self.conn();
        let removed: i64 = self.unregister.key(keys::REGISTRY).arg(p.as_str()).arg(stamp).invoke_async(&mut c).await?;
        Ok(removed == 1)
    }

    pub async fn plan_record(&self, p: &PlacementId) -> Result<Option<PlanRecord>, StoreError> {
        let mut c = self.conn();
        let s: Option<String> = c.get(PlacementKeys::new(p).plan()).await?;
        s.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(format!("plan of {p}"), e))).transpose()
    }

    /// The controller's state of `p` (fresh when there is none); `Corrupt` for a value
    /// that is not a state core accepts, whatever its bytes or its Redis type.
    pub async fn control_state(&self, p: &PlacementId) -> Result<ControlState, StoreError> {
        let mut c = self.conn();
        let what = || format!("state of {p}");
        let s: Option<Vec<u8>> = match c.get(PlacementKeys::new(p).state()).await {
            Err(e) if e.code() == Some("WRONGTYPE") => return Err(corrupt(what(), e)),
            other => other?,
        };
        Ok(s.map(|s| serde_json::from_slice(&s).map_err(|e| corrupt(what(), e))).transpose()?.unwrap_or_default())
    }

    /// The lease epoch `p`'s fence holds: the highest that allocated or stored for it (0
    /// for none, or for a value that is not a number: the scripts would refuse it).
    pub async fn fence_epoch(&self, p: &PlacementId) -> Result<u64, StoreError> {
        let mut c = self.conn();
        let e: Option<String> = c.hget(PlacementKeys::new(p).fence(), "epoch").await?;
        Ok(e.and_then(|e| e.parse().ok()).unwrap_or(0))
    }

    /// The next plan version for `p` under lease `epoch`, above `floor` (the stored
    /// plan's version) and every version allocated before.
    pub async fn allocate_version(&self, p: &PlacementId, epoch: u64, floor: u64) -> Result<Fenced<u64>, StoreError> {
        let mut c = self.conn();
        let v: i64 =
            self.allocate.key(PlacementKeys::new(p).fence()).arg(epoch).arg(floor).invoke_async(&mut c).await?;
        match v {
            -2 => Err(corrupt(format!("version of {p}"), "every version up to 2^53 - 1 is used")),
            v => Ok(u64::try_from(v).map_or(Fenced::Epoch, Fenced::Done)),
        }
    }

    /// Records `plan` in the placement's plan list before it is published, under lease
    /// `epoch`: from the moment the edge may serve it, ingest knows its version, even
    /// if the plan is never stored as current (a publish that outlived its lease).
    pub async fn issue_plan(
        &self,
        p: &PlacementId,
        plan: &Plan,
        history_len: usize,
        epoch: u64,
    ) -> Result<Fenced<()>, StoreError> {
        let k = PlacementKeys::new(p);
        let mut c = self.conn();
        let issued: i64 = self
            .issue
            .key(k.fence())
            .key(k.plans())
            .arg(epoch)
            .arg(plan.to_json())
            .arg(history_len.max(1))
            .invoke_async(&mut c)
            .await?;
        Ok(if issued == 1 { Fenced::Done(()) } else { Fenced::Epoch })
    }

    /// Stores a published plan under lease `epoch` as current, with the controller's
    /// state; refused for an older epoch or a version that is not newer than the
    /// stored one, so the stored plan only moves forward.
    pub async fn save_plan(&self, p: &PlacementId, record: &PlanRecord, epoch: u64) -> Result<Fenced<()>, StoreError> {
        let k = PlacementKeys::new(p);
        let json = serde_json::to_string(record).map_err(|e| corrupt("plan", e))?;
        let state = match &record.decision {
            Some(d) => serde_json::to_string(&d.state).map_err(|e| corrupt("state", e))?,
            None => String::new(),
        };
        let mut c = self.conn();
        let saved: i64 = self
            .save
            .key(k.fence())
            .key(k.plan())
            .key(k.state())
            .arg(epoch)
            .arg(record.plan.version)
            .arg(json)
            .arg(state)
            .invoke_async(&mut c)
            .await?;
        Ok(match saved {
            1 => Fenced::Done(()),
            0 => Fenced::Stale,
            _ => Fenced::Epoch,
        })
    }

    /// Stores the controller's state of `p` under lease `epoch` (one `SET`, so a
    /// failure leaves the previous state whole); refused for an older epoch.
    pub async fn save_state(
        &self,
        p: &PlacementId,
        state: &ControlState,
        epoch: u64,
    ) -> Result<Fenced<()>, StoreError> {
        let k = PlacementKeys::new(p);
        let json = serde_json::to_string(state).map_err(|e| corrupt("state", e))?;
        let mut c = self.conn();
        let saved: i64 = self.state.key(k.fence()).key(k.state()).arg(epoch).arg(json).invoke_async(&mut c).await?;
        Ok(if saved == 1 { Fenced::Done(()) } else { Fenced::Epoch })
    }

    /// Plans issued for publishing, newest first: entries `first..=last` of the list.
    pub async fn plan_history(&self, p: &PlacementId, first: usize, last: usize) -> Result<Vec<Plan>, StoreError> {
        let mut c = self.conn();
        let raw: Vec<String> = c.lrange(PlacementKeys::new(p).plans(), first as isize, last as isize).await?;
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
            .map(|fields| {
                let (stats, skipped) =
                    WindowStats::read_fields(fields).map_err(|e| corrupt(format!("window of {p}"), e))?;
                if !skipped.is_empty() {
                    skipped_fields(p, &skipped);
                }
                Ok(stats)
            })
            .collect()
    }
}

/// Window fields this build does not know were skipped: a newer replica wrote them (a
/// rolling upgrade, or a rollback). Said once per process as a warning, then at debug
/// level: every read of such a window skips them again.
fn skipped_fields(p: &PlacementId, skipped: &[String]) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let first: Vec<&str> = skipped.iter().take(5).map(String::as_str).collect();
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(placement = %p, fields = skipped.len(), ?first, "window fields of unknown kinds skipped");
    } else {
        tracing::warn!(
            placement = %p,
            fields = skipped.len(),
            ?first,
            "window fields of kinds this version does not know were skipped (written by a newer replica?)"
        );
    }
}
