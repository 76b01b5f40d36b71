//! The aggregator: stream entries folded into per-placement window counts, exactly once.
//!
//! Every origin replica runs one consumer of the `aggregator` group. The entries of one
//! read are grouped by placement; a group's events are folded with core's `WindowStats`
//! into one delta per window and applied by a Lua script that, atomically, checks the
//! entries' dedupe markers, sets them, and adds the delta (`HINCRBYFLOAT`) — or, if any
//! marker already exists, writes nothing and names those entries so the delta is rebuilt
//! without them. Folding a whole group into one delta keeps the Redis work per event
//! small when single-event bodies arrive at high rates. Entries are acknowledged after
//! that. A crash between apply and `XACK` therefore leaves the entry pending; whoever
//! processes it again (this consumer after a restart, or another one that claims it
//! with `XAUTOCLAIM` once it has been idle long enough) finds the marker and only
//! acknowledges it. The marker and the windows share the placement's hash tag, so the
//! script runs on Redis Cluster too.
//!
//! Blocking reads use a connection of their own: a `BLOCK` on the shared multiplexed
//! connection would stall every ingest `XADD` queued behind it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_core::{EventBatch, WindowStats};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "failpoints")]
use crate::config::Failpoint;
use crate::conn::RedisConn;
use allot_core::contract::keys::PlacementKeys;
use allot_core::contract::stream;
use crate::startup::App;

/// Applies a group of entries of one placement once. KEYS: one dedupe marker per entry,
/// then window hashes. ARGV: marker count, marker TTL, window TTL, then per window a
/// field count followed by field/value pairs. If any marker already exists nothing is
/// written and the (1-based) indices of those entries are returned, so the caller can
/// drop them and retry with a delta of the rest; an empty reply means "applied".
const APPLY_SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local seen = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then seen[#seen + 1] = i end
end
if #seen > 0 then return seen end
for i = 1, n do redis.call('SET', KEYS[i], '1', 'EX', ARGV[2]) end
local a = 4
for k = n + 1, #KEYS do
  local m = tonumber(ARGV[a]); a = a + 1
  for j = 1, m do
    redis.call('HINCRBYFLOAT', KEYS[k], ARGV[a], ARGV[a + 1]); a = a + 2
  end
  redis.call('EXPIRE', KEYS[k], ARGV[3])
end
return seen
";

/// Entries per script call: bounds the time one script holds Redis.
const MAX_GROUP: usize = 256;

/// The default consumer name: host and process, unique per running replica.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "origin".to_string() } else { host };
    format!("{host}-{}", std::process::id())
}

/// Creates the consumer group (from the start of the stream) unless it exists.
pub async fn ensure_group(conn: &mut RedisConn) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream::EVENTS)
        .arg(stream::AGGREGATOR_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

struct Aggregator {
    app: Arc<App>,
    conn: RedisConn,
    consumer: String,
    sha: String,
}

/// Runs the consumer until `cancel`; finishes (applies and acknowledges) the batch in
/// hand before returning.
pub async fn run(app: Arc<App>, mut conn: RedisConn, cancel: CancellationToken) {
    let consumer = app.config.aggregate.consumer.clone().unwrap_or_else(default_consumer);
    let sha = loop {
        let ready = async {
            ensure_group(&mut conn).await?;
            redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_SCRIPT).query_async::<String>(&mut conn).await
        };
        match ready.await {
            Ok(sha) => break sha,
            Err(e) => tracing::warn!(error = %e, "aggregator cannot start yet; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    tracing::info!(consumer = %consumer, "aggregator started");
    let mut agg = Aggregator { app, conn, consumer, sha };
    let claim_every = Duration::from_millis((agg.app.config.aggregate.claim_min_idle_ms / 2).clamp(100, 10_000));
    let mut next_claim = Instant::now();
    let mut own_pending = true;
    while !cancel.is_cancelled() {
        let step = async {
            if own_pending {
                // After a restart under the same name, our own pending entries first. If
                // that history cannot be read (e.g. entries trimmed while pending), the
                // claim below still recovers them.
                own_pending = match agg.read("0", false).await {
                    Ok(n) => n > 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-read own pending entries; leaving them to XAUTOCLAIM");
                        false
                    }
                };
            }
            if Instant::now() >= next_claim {
                agg.claim().await?;
                next_claim = Instant::now() + claim_every;
            }
            agg.read(">", true).await
        };
        if let Err(e) = step.await {
            tracing::warn!(error = %e, "aggregator step failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    tracing::info!("aggregator stopped");
}

impl Aggregator {
    /// The script call applying `list` (entries of placement `p`) once.
    fn apply_command(&self, p: &str, list: &[(String, EventBatch)]) -> redis::Cmd {
        let period = self.app.config.control.period_ms;
        let windows = WindowStats::fold_windows(list.iter().flat_map(|(_, batch)| &batch.events), period);
        let k = PlacementKeys::of_raw(p);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(list.len() + windows.len());
        for (id, _) in list {
            cmd.arg(k.applied(id));
        }
        for index in windows.keys() {
            cmd.arg(k.window(*index));
        }
        cmd.arg(list.len())
            .arg(self.app.config.aggregate.dedupe_ttl_secs.max(1))
            .arg(self.app.config.control.window_ttl_secs());
        for stats in windows.values() {
            let fields = stats.to_fields();
            cmd.arg(fields.len());
            for (f, v) in fields {
                cmd.arg(f).arg(v);
            }
        }
        cmd
    }

    /// Reads and processes one batch; returns how many entries it had.
    async fn read(&mut self, id: &str, block: bool) -> redis::RedisResult<usize> {
        let app = self.app.clone();
        let cfg = &app.config.aggregate;
        let mut opts = StreamReadOptions::default().group(stream::AGGREGATOR_GROUP, &self.consumer).count(cfg.batch);
        if block {
            opts = opts.block(cfg.block_ms as usize);
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg(&opts)
            .arg("STREAMS")
            .arg(stream::EVENTS)
            .arg(id)
            .query_async(&mut self.conn)
            .await?;
        let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        let n = entries.len();
        self.process(entries, &[]).await?;
        Ok(n)
    }

    /// Claims entries left pending by consumers idle for `claim_min_idle_ms`.
    async fn claim(&mut self) -> redis::RedisResult<()> {
        let app = self.app.clone();
        let cfg = &app.config.aggregate;
        let mut cursor = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream::EVENTS)
                .arg(stream::AGGREGATOR_GROUP)
                .arg(&self.consumer)
                .arg(cfg.claim_min_idle_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(cfg.batch)
                .query_async(&mut self.conn)
                .await?;
            if !reply.claimed.is_empty() {
                self.app.metrics.aggregate_claimed.inc_by(reply.claimed.len() as u64);
                tracing::info!(entries = reply.claimed.len(), "claimed pending entries from idle consumers");
            }
            self.process(reply.claimed, &reply.deleted_ids).await?;
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            cursor = reply.next_stream_id;
        }
    }

    /// Applies every entry (once) and acknowledges them all, plus `gone` (entries
    /// trimmed from the stream while pending).
    async fn process(&mut self, entries: Vec<StreamId>, gone: &[String]) -> redis::RedisResult<()> {
        if entries.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let mut invalid = 0;
        let mut groups: BTreeMap<String, Vec<(String, EventBatch)>> = BTreeMap::new();
        for entry in &entries {
            let (Some(p), Some(body)) = (entry.get::<String>(stream::PLACEMENT), entry.get::<Vec<u8>>(stream::BATCH)) else {
                invalid += 1;
                tracing::warn!(id = %entry.id, "stream entry without p/e fields; skipped");
                continue;
            };
            match EventBatch::parse(&body) {
                Ok(b) => groups.entry(p).or_default().push((entry.id.clone(), b)),
                Err(e) => {
                    invalid += 1;
                    tracing::warn!(id = %entry.id, error = %e, "stream entry with invalid events; skipped");
                }
            }
        }
        let mut pending: Vec<(String, Vec<(String, EventBatch)>)> = Vec::new();
        for (p, mut list) in groups {
            while list.len() > MAX_GROUP {
                let rest = list.split_off(MAX_GROUP);
                pending.push((p.clone(), list));
                list = rest;
            }
            pending.push((p, list));
        }
        #[cfg(feature = "failpoints")]
        let had_work = !pending.is_empty();
        let (mut applied, mut duplicates) = (0u64, 0u64);
        while !pending.is_empty() {
            // One script call per placement group, sent concurrently: pipelined on one
            // node, spread over the right nodes on a cluster.
            let calls = pending.iter().map(|(p, list)| {
                let cmd = self.apply_command(p, list);
                let mut conn = self.conn.clone();
                async move { cmd.query_async::<Vec<usize>>(&mut conn).await }
            });
            let replies: Vec<Vec<usize>> = match futures_util::future::try_join_all(calls).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // Redis restarted and lost its script cache: load it and redo (the
                    // markers make the retry safe).
                    self.sha = redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_SCRIPT).query_async(&mut self.conn).await?;
                    continue;
                }
                other => other?,
            };
            let mut retry = Vec::new();
            for ((p, list), seen) in pending.into_iter().zip(replies) {
                if seen.is_empty() {
                    applied += list.len() as u64;
                    continue;
                }
                // Some entries were applied before (redelivery): retry without them.
                duplicates += seen.len() as u64;
                let rest: Vec<_> =
                    list.into_iter().enumerate().filter(|(i, _)| !seen.contains(&(i + 1))).map(|(_, x)| x).collect();
                if !rest.is_empty() {
                    retry.push((p, rest));
                }
            }
            pending = retry;
        }
        let m = &self.app.metrics.aggregate_entries;
        m.with_label_values(&["applied"]).inc_by(applied);
        m.with_label_values(&["duplicate"]).inc_by(duplicates);
        self.app.metrics.aggregate_entries.with_label_values(&["invalid"]).inc_by(invalid);
        #[cfg(feature = "failpoints")]
        if self.app.config.aggregate.failpoint == Some(Failpoint::ExitAfterApply) && had_work {
            tracing::error!("failpoint exit_after_apply: exiting before XACK");
            std::process::exit(3);
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(stream::EVENTS).arg(stream::AGGREGATOR_GROUP);
        for e in &entries {
            ack.arg(&e.id);
        }
        for id in gone {
            ack.arg(id);
        }
        ack.query_async::<i64>(&mut self.conn).await?;
        Ok(())
    }
}
