//! The aggregator: stream entries folded into per-placement window counts, exactly once.
//!
//! Every origin replica runs one consumer of the `aggregator` group. An entry's events
//! are folded with core's `WindowStats` into one delta per window and applied by a Lua
//! script that, atomically, sets the entry's dedupe marker (`SET NX EX`) and adds the
//! delta (`HINCRBYFLOAT`) only if the marker was new. The entry is acknowledged after
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
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;

use crate::config::Failpoint;
use crate::keys::{self, PlacementKeys};
use crate::startup::App;

/// Applies one entry's deltas once. KEYS: marker, then window hashes. ARGV: marker TTL,
/// window TTL, then per window a field count followed by field/value pairs.
const APPLY_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local a = 3
for k = 2, #KEYS do
  local n = tonumber(ARGV[a]); a = a + 1
  for j = 1, n do
    redis.call('HINCRBYFLOAT', KEYS[k], ARGV[a], ARGV[a + 1]); a = a + 2
  end
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return 1
";

/// The default consumer name: host and process, unique per running replica.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "origin".to_string() } else { host };
    format!("{host}-{}", std::process::id())
}

/// Creates the consumer group (from the start of the stream) unless it exists.
pub async fn ensure_group(conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys::EVENTS)
        .arg(keys::AGGREGATOR_GROUP)
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
    conn: MultiplexedConnection,
    consumer: String,
    sha: String,
}

/// Runs the consumer until `cancel`; finishes (applies and acknowledges) the batch in
/// hand before returning.
pub async fn run(app: Arc<App>, mut conn: MultiplexedConnection, cancel: CancellationToken) {
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
                // After a restart under the same name, our own pending entries first.
                own_pending = agg.read("0", false).await? > 0;
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
    /// Reads and processes one batch; returns how many entries it had.
    async fn read(&mut self, id: &str, block: bool) -> redis::RedisResult<usize> {
        let app = self.app.clone();
        let cfg = &app.config.aggregate;
        let mut opts = StreamReadOptions::default().group(keys::AGGREGATOR_GROUP, &self.consumer).count(cfg.batch);
        if block {
            opts = opts.block(cfg.block_ms as usize);
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg(&opts)
            .arg("STREAMS")
            .arg(keys::EVENTS)
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
                .arg(keys::EVENTS)
                .arg(keys::AGGREGATOR_GROUP)
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
        let period = self.app.config.control.period_ms;
        let marker_ttl = self.app.config.aggregate.dedupe_ttl_secs.max(1);
        let window_ttl = self.app.config.control.window_ttl_secs();
        let mut pipe = redis::pipe();
        let mut applied_slots = 0;
        let mut invalid = 0;
        for entry in &entries {
            let (Some(p), Some(body)) = (entry.get::<String>("p"), entry.get::<Vec<u8>>("e")) else {
                invalid += 1;
                tracing::warn!(id = %entry.id, "stream entry without p/e fields; skipped");
                continue;
            };
            let batch = match EventBatch::parse(&body) {
                Ok(b) => b,
                Err(e) => {
                    invalid += 1;
                    tracing::warn!(id = %entry.id, error = %e, "stream entry with invalid events; skipped");
                    continue;
                }
            };
            let mut windows: BTreeMap<u64, WindowStats> = BTreeMap::new();
            for e in &batch.events {
                windows.entry(WindowStats::window_index(e.event_time_ms, period)).or_default().fold(e);
            }
            let k = PlacementKeys::of_raw(&p);
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.sha).arg(1 + windows.len()).arg(k.applied(&entry.id));
            for index in windows.keys() {
                cmd.arg(k.window(*index));
            }
            cmd.arg(marker_ttl).arg(window_ttl);
            for stats in windows.values() {
                let fields = stats.to_fields();
                cmd.arg(fields.len());
                for (f, v) in fields {
                    cmd.arg(f).arg(v);
                }
            }
            pipe.add_command(cmd);
            applied_slots += 1;
        }
        if applied_slots > 0 {
            let results: Vec<i64> = match pipe.query_async(&mut self.conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // Redis restarted and lost the script cache: load it and redo (the
                    // markers make the retry safe).
                    self.sha = redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_SCRIPT).query_async(&mut self.conn).await?;
                    return Box::pin(self.process(entries, gone)).await;
                }
                other => other?,
            };
            let fresh = results.iter().filter(|r| **r == 1).count() as u64;
            let m = &self.app.metrics.aggregate_entries;
            m.with_label_values(&["applied"]).inc_by(fresh);
            m.with_label_values(&["duplicate"]).inc_by(results.len() as u64 - fresh);
        }
        self.app.metrics.aggregate_entries.with_label_values(&["invalid"]).inc_by(invalid);
        if self.app.config.aggregate.failpoint == Some(Failpoint::ExitAfterApply) && applied_slots > 0 {
            tracing::error!("failpoint exit_after_apply: exiting before XACK");
            std::process::exit(3);
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(keys::EVENTS).arg(keys::AGGREGATOR_GROUP);
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
