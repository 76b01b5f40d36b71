//! The streams' trimmer: below what every consumer group has read and acknowledged, and
//! by length only as a memory guard that counts what it loses.
//!
//! Two streams are trimmed so: the event stream, and the plan log (the archiver's plans
//! lane reads it; an S3 outage must not cost the snapshots it has not read yet). The
//! decisions are `allot_stream::trim`'s pure functions; this is the thin Redis part,
//! run every `redis.trim_every_ms` by every replica. Several replicas trimming at once is
//! safe: a trim by id only removes entries every group is done with, whoever sends it,
//! and a second cut by length finds nothing left above the cap.
//!
//! The group states and the trims are separate commands, not one script: group states
//! only move forward (ids are delivered in order and acknowledged once), so a trim
//! computed from slightly older states removes less, never more.

use std::sync::Arc;
use std::time::Duration;

use allot_core::contract::stream;
use allot_stream::trim::{self, Hold};
use allot_stream::{EntryId, GroupState};
use redis::AsyncTypedCommands;
use redis::streams::StreamPendingReply;
use tokio_util::sync::CancellationToken;

use crate::conn::RedisConn;
use crate::startup::App;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Entries every group was done with, removed.
    pub trimmed: u64,
    /// Entries some group had not read or acknowledged, cut by the memory guard.
    pub lost: u64,
    /// Why nothing was trimmed by id, if so.
    pub held: Option<Hold>,
}

/// A stream this replica trims: what it is called in the metrics, the consumer groups
/// this replica expects on it (nothing is trimmed by id until they exist), its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub key: String,
    /// The `stream` label of the trimming metrics.
    pub label: &'static str,
    pub required: Vec<String>,
    pub cap: u64,
}

/// The streams this replica trims, each with the groups it expects there.
pub fn trimmed(app: &App) -> [Trimmed; 2] {
    let redis = &app.config.redis;
    let archive = app.config.archive.as_ref();
    // The aggregator's group always: a replica that runs no aggregator (an ingest-only
    // role) must not trim what the aggregators elsewhere have not created their group
    // to read yet.
    let mut events = vec![stream::AGGREGATOR_GROUP.to_string()];
    // The archive reads the streams by their contract names (`Config` refuses others).
    events.extend(archive.map(|a| a.group.clone()));
    let plans = archive.map(|a| a.group.clone());
    [
        Trimmed { key: stream::EVENTS.into(), label: "events", required: events, cap: redis.stream_max_len },
        Trimmed {
            key: stream::PLAN_LOG.into(),
            label: "plans",
            required: plans.into_iter().collect(),
            cap: redis.plan_log_max_len,
        },
    ]
}

/// Trims every `trim_every_ms` until `cancel`.
pub async fn run(app: Arc<App>, mut conn: RedisConn, cancel: CancellationToken) {
    let every = Duration::from_millis(app.config.redis.trim_every_ms.max(10));
    let streams = trimmed(&app);
    for t in &streams {
        // Exported at 0 from the start: the alert on losses needs a series to rise from.
        app.metrics.stream_trimmed.with_label_values(&[t.label]);
        app.metrics.stream_trimmed_unread.with_label_values(&[t.label]);
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        for t in &streams {
            let required: Vec<&str> = t.required.iter().map(String::as_str).collect();
            let limits = Limits {
                cap: t.cap,
                retain_ms: app.config.redis.stream_retain_secs.saturating_mul(1000),
                now_ms: crate::now_ms(),
            };
            match pass(&mut conn, &t.key, &required, limits).await {
                Ok(p) => {
                    app.metrics.stream_trimmed.with_label_values(&[t.label]).inc_by(p.trimmed);
                    if p.lost > 0 {
                        app.metrics.stream_trimmed_unread.with_label_values(&[t.label]).inc_by(p.lost);
                        tracing::error!(
                            stream = %t.key,
                            entries = p.lost,
                            cap = t.cap,
                            "stream over its cap: cut entries a consumer group had not read or acknowledged"
                        );
                    }
                }
                Err(e) => tracing::warn!(stream = %t.key, error = %e, "trimming a stream failed; trying again later"),
            }
        }
    }
}

/// What bounds one pass.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The memory guard: at most this many entries.
    pub cap: u64,
    /// Acknowledged entries younger than this are kept while within the cap.
    pub retain_ms: u64,
    pub now_ms: u64,
}

/// One trim of `key`: by id below every group's acknowledged entries (keeping the
/// retention), then, over the cap, the retained ones too, then by length to the cap.
pub async fn pass(conn: &mut RedisConn, key: &str, required: &[&str], limits: Limits) -> redis::RedisResult<Pass> {
    let groups = match group_states(conn, key).await {
        Ok(g) => g,
        // No stream yet: nothing to trim.
        Err(e) if e.to_string().contains("no such key") => return Ok(Pass::default()),
        Err(e) => return Err(e),
    };
    let mut pass = Pass::default();
    let safe = match trim::safe_min_id(&groups, required) {
        Ok(safe) => Some(safe),
        Err(hold) => {
            pass.held = Some(hold);
            None
        }
    };
    let floor = trim::retention_floor(limits.now_ms, limits.retain_ms);
    if let Some(safe) = safe {
        pass.trimmed += min_id(conn, key, trim::retained_min_id(safe, floor)).await?;
    }
    let mut len: u64 = conn.xlen(key).await? as u64;
    if let Some(safe) = safe
        && trim::over_cap(len, limits.cap).is_some()
        && safe > floor
    {
        // Over the cap: the retained (acknowledged) entries go before any unread one.
        pass.trimmed += min_id(conn, key, safe).await?;
        len = conn.xlen(key).await? as u64;
    }
    if let Some(cut) = trim::over_cap(len, limits.cap) {
        let cut: u64 =
            redis::cmd("XTRIM").arg(key).arg("MAXLEN").arg("=").arg(cut.max_len).query_async(&mut *conn).await?;
        // With no group on the stream and none expected, nothing reads it (the plan log
        // of an origin without an archive): the cap is then all its trimming.
        if pass.held == Some(Hold::NoGroups) {
            pass.trimmed += cut;
        } else {
            pass.lost = cut;
        }
    }
    Ok(pass)
}

async fn min_id(conn: &mut RedisConn, key: &str, id: EntryId) -> redis::RedisResult<u64> {
    redis::cmd("XTRIM").arg(key).arg("MINID").arg("=").arg(id.to_string()).query_async(&mut *conn).await
}

/// Every group's last delivered id and oldest pending entry.
async fn group_states(conn: &mut RedisConn, key: &str) -> redis::RedisResult<Vec<GroupState>> {
    let info = conn.xinfo_groups(key).await?;
    let mut states = Vec::with_capacity(info.groups.len());
    for g in info.groups {
        let parse = |id: &str| {
            id.parse::<EntryId>().map_err(|e| redis::RedisError::from((redis::ErrorKind::Parse, "stream id", e.0)))
        };
        let last_delivered = parse(&g.last_delivered_id)?;
        let oldest_pending = match conn.xpending(key, &g.name).await? {
            StreamPendingReply::Data(d) => Some(parse(&d.start_id)?),
            _ => None,
        };
        states.push(GroupState { name: g.name, last_delivered, oldest_pending });
    }
    Ok(states)
}
