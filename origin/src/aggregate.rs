//! The aggregator: stream entries folded into per-placement window counts, exactly once.
//!
//! Every origin replica runs one consumer of the `aggregator` group, the consumer-group
//! cycle of `allot-stream` (shared with the archiver): this consumer's own pending
//! entries first, then new ones, and now and then all the entries of a consumer silent
//! for `claim_min_idle_ms` (a replica that died), claimed. The entries of one batch are
//! grouped by placement; a group's events are folded with core's `WindowStats` into one
//! delta per window and applied by a Lua script that, atomically, checks the entries'
//! dedupe markers, sets them, and adds the delta (`HINCRBYFLOAT`) — or, if any marker
//! already exists, writes nothing and names those entries so the delta is rebuilt
//! without them. An impression is counted only if it is the first of its decision (its
//! request id, time and ad; an app may repeat a request id): the same script sets a
//! per-decision marker with `SET NX` and adds the impression's delta only when it was new. Folding a whole group into one delta keeps the Redis work per event
//! small when single-event bodies arrive at high rates. Entries are acknowledged after
//! that. A crash between apply and `XACK` therefore leaves the entries pending; whoever
//! processes them again (this consumer after a restart, or another one that claims
//! them) finds the markers and only acknowledges them. The markers and the windows share
//! the placement's hash tag, so the script runs on Redis Cluster too.
//!
//! Failed Redis calls are retried under the core's retry policy (with jitter); a batch
//! whose apply failed is applied again, never skipped (the markers make that safe).
//!
//! Blocking reads use a connection of their own: a `BLOCK` on the shared multiplexed
//! connection would stall every ingest `XADD` queued behind it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use allot_core::contract::keys::PlacementKeys;
use allot_core::contract::stream;
use allot_core::retry::RetryPolicy;
use allot_core::token;
use allot_core::{Event, EventBatch, EventKind, WindowStats};
use allot_stream::{Batch, ConsumerConfig, Entry, EntryId, Retry, Source, Stopped, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::config::AggregateConfig;
#[cfg(feature = "failpoints")]
use crate::config::Failpoint;
use crate::conn::RedisConn;
use crate::startup::App;

/// Applies a group of entries of one placement once. KEYS: one dedupe marker per entry,
/// then window hashes, then one marker per impression. ARGV: marker count, the markers'
/// expiry (unix ms), window count, then per window its expiry (unix ms), a field count
/// and field/value pairs (allocations), then per impression the (1-based) window it
/// counts in, its marker's expiry (unix ms), `1` if it came late for its window (`0` if
/// not), a field count and field/value pairs. If any entry marker already exists nothing
/// is written and the (1-based) indices of those entries are returned, so the caller can
/// drop them and retry with a delta of the rest; `{0, late}` means "applied", `late`
/// being how many late impressions were counted. An impression adds its fields only if
/// it is the first of its decision (`SET NX` on its marker): a second impression of a
/// decision — a retry, a replay at another edge, a second beacon — is not counted.
///
/// Expiries are absolute ([`window_expires_at_ms`]): a window expires at a fixed time
/// after its end, however late it is written, and the markers expire with the latest of
/// the windows they protect. So a window can never outlive the markers of the entries
/// counted in it, and a late redelivery (a claim after a long outage) cannot count an
/// entry twice, whatever the period.
const APPLY_SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local w = tonumber(ARGV[3])
local seen = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then seen[#seen + 1] = i end
end
if #seen > 0 then return seen end
for i = 1, n do redis.call('SET', KEYS[i], '1', 'PXAT', ARGV[2]) end
local a = 4
local at = {}
for k = n + 1, n + w do
  at[k] = ARGV[a]; a = a + 1
  local m = tonumber(ARGV[a]); a = a + 1
  for j = 1, m do
    redis.call('HINCRBYFLOAT', KEYS[k], ARGV[a], ARGV[a + 1]); a = a + 2
  end
  redis.call('PEXPIREAT', KEYS[k], at[k])
end
local late = 0
for k = n + w + 1, #KEYS do
  local pos = n + tonumber(ARGV[a]); a = a + 1
  local exp = ARGV[a]; a = a + 1
  local is_late = tonumber(ARGV[a]); a = a + 1
  local m = tonumber(ARGV[a]); a = a + 1
  if redis.call('SET', KEYS[k], '1', 'NX', 'PXAT', exp) then
    late = late + is_late
    for j = 1, m do
      redis.call('HINCRBYFLOAT', KEYS[pos], ARGV[a + 2 * j - 2], ARGV[a + 2 * j - 1])
    end
    redis.call('PEXPIREAT', KEYS[pos], at[pos])
  end
  a = a + 2 * m
end
return {0, late}
";

/// When window `index` expires (unix ms): `ttl_secs` after its end. Fixed per window, so
/// later writes never extend it, and the dedupe markers of its entries can be given an
/// expiry no earlier. A window written after that time (an entry redelivered hours later)
/// is deleted at once: no one reads a window that old (the controller and the status
/// page read the last `recent_windows`, within `window_ttl_secs`).
pub fn window_expires_at_ms(index: u64, period_ms: u64, ttl_secs: u64) -> u64 {
    index.saturating_add(1).saturating_mul(period_ms.max(1)).saturating_add(ttl_secs.saturating_mul(1000))
}

/// The expiry of the dedupe markers of entries counted in windows expiring at
/// `window_expiries`: the latest of them, and at least a second from `now_ms` (Redis
/// refuses no past expiry, but a marker that expires at once protects nothing while the
/// script's reply is on its way).
pub fn marker_expires_at_ms(window_expiries: impl IntoIterator<Item = u64>, now_ms: u64) -> u64 {
    window_expiries.into_iter().max().unwrap_or(0).max(now_ms + 1000)
}

/// How long a request's impression marker lives: as long as a token can be presented
/// (its age limit and the edges' clock skew) and then as long as the window it counted
/// in is kept, so no replay or redelivery within either can count a second time.
pub fn impression_marker_ttl_secs(window_ttl_secs: u64) -> u64 {
    window_ttl_secs + token::PRESENTABLE_MS.div_ceil(1000)
}

/// The shortest idle time after which an empty consumer is deleted from the group.
const FORGET_IDLE_MIN_MS: u64 = 300_000;

/// When a request's impression marker expires (unix ms): as long after the window its
/// impression counted in as a token can be presented (its age limit and the edges'
/// clock skew), so no replay or redelivery within either can count a second time.
pub fn impression_marker_expires_at_ms(window_expires_at_ms: u64) -> u64 {
    window_expires_at_ms + token::PRESENTABLE_MS
}

/// Entries per script call: bounds the time one script holds Redis.
const MAX_GROUP: usize = 256;

/// How failed Redis calls are retried: from 100 ms, doubling to 5 s, with jitter.
const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// The default consumer name: host, process and a random suffix, so no two processes
/// ever share one (a restarted process on the same pid, a container whose hostname and
/// pid repeat). What a dead consumer left pending is claimed by the others; the consumer
/// itself, once idle and empty, is deleted by them (`forget_idle`).
pub fn default_consumer() -> String {
    format!("{}-{:08x}", process_name(), allot_stream::Jitter::new().word())
}

/// Host and process id.
pub fn process_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "origin".to_string() } else { host };
    format!("{host}-{}", std::process::id())
}

/// The consumer cycle of the aggregator's configuration.
fn consumer_config(consumer: String, cfg: &AggregateConfig) -> ConsumerConfig {
    ConsumerConfig {
        consumer,
        read_count: cfg.batch,
        pending_count: cfg.batch,
        max_block: Duration::from_millis(cfg.block_ms),
        claim_idle: Some(Duration::from_millis(cfg.claim_min_idle_ms)),
        check_every: Duration::from_millis((cfg.claim_min_idle_ms / 2).clamp(100, 10_000)),
        // A consumer idle this long with nothing pending is a replica that is gone.
        forget_idle: Some(Duration::from_millis(cfg.claim_min_idle_ms.saturating_mul(4).max(FORGET_IDLE_MIN_MS))),
        retry: RETRY,
    }
}

struct Aggregator {
    app: Arc<App>,
    sha: String,
}

/// Runs the consumer until `cancel`; finishes (applies and acknowledges) the batch in
/// hand before returning.
pub async fn run(app: Arc<App>, conn: RedisConn, cancel: CancellationToken) {
    let name = app.config.aggregate.consumer.clone().unwrap_or_else(default_consumer);
    let cfg = consumer_config(name.clone(), &app.config.aggregate);
    let failed =
        |what: &'static str, e: &redis::RedisError| tracing::warn!(error = %e, "aggregator: {what} failed; retrying");
    let mut consumer = StreamConsumer::new(conn, stream::EVENTS, stream::AGGREGATOR_GROUP, cfg, failed);
    let mut retry = Retry::new(RETRY);
    let sha = loop {
        match redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_SCRIPT).query_async::<String>(consumer.conn()).await {
            Ok(sha) => break sha,
            Err(e) => tracing::warn!(error = %e, "aggregator cannot start yet; retrying"),
        }
        if retry.wait(&cancel).await.is_err() {
            return;
        }
    };
    tracing::info!(consumer = %name, "aggregator started");
    let mut agg = Aggregator { app, sha };
    // Stops between batches: `next` and `ack` give way to `cancel`, `apply` only when a
    // retry is due.
    while let Ok(batch) = consumer.next(&cancel).await {
        if batch.entries.is_empty() {
            continue;
        }
        let lost = batch.entries.iter().filter(|e| e.is_trimmed()).count();
        if lost > 0 {
            // Delivered, never applied, and gone from the stream: acknowledged uncounted.
            agg.app.metrics.stream_lost.with_label_values(&[stream::AGGREGATOR_GROUP]).inc_by(lost as u64);
            tracing::error!(entries = lost, "pending entries were trimmed from the stream before they were counted");
        }
        if let Source::Claimed { from } = &batch.source {
            let claimed = batch.entries.iter().filter(|e| !e.is_trimmed()).count();
            agg.app.metrics.aggregate_claimed.inc_by(claimed as u64);
            tracing::info!(consumer = %from, entries = claimed, "claimed pending entries from an idle consumer");
        }
        if agg.apply(consumer.conn(), &batch, &cancel).await.is_err() {
            // Stopped before the batch was applied: it stays pending for the next start.
            break;
        }
        if consumer.ack(batch.ids(), &cancel).await.is_err() {
            break;
        }
    }
    tracing::info!("aggregator stopped");
}

/// An event and when the ingest received it.
type Received<'a> = (&'a Event, u64);

/// A stream entry's events, its id, and when the ingest received it.
struct Stored {
    id: String,
    received_ms: u64,
    batch: EventBatch,
}

impl Stored {
    /// The receive time is the earlier of the origin's stamp on the entry and the
    /// entry id's time (Redis's clock): both come after the real receipt, so neither
    /// clock running ahead can make an on-time report look late. An entry with neither
    /// readable counts as received when it is applied.
    fn of(entry: &Entry, batch: EventBatch) -> Self {
        let by_redis = entry.id.parse::<EntryId>().map(|id| id.ms).ok();
        let by_origin = entry.get::<u64>(stream::RECEIVED_MS);
        let received_ms = by_redis.into_iter().chain(by_origin).min().unwrap_or(u64::MAX);
        Self { id: entry.id.clone(), received_ms, batch }
    }
}

impl Aggregator {
    /// The script call applying `list` (entries of placement `p`) once, and how many of
    /// its allocations come too late for their window's round (the script counts the
    /// late impressions it applies: only the first of each decision is). Allocations are folded
    /// into one delta per window, marked late when the window's round may already have
    /// read it (`Policy::is_late`: the next rounds learn from them how complete a window
    /// is when read); each impression keeps its own delta, applied only if it is the
    /// first of its decision, and is marked late when the ingest received it after its
    /// window was read for impressions (`Policy::is_late_for_impressions`). By when it
    /// was received, not applied: the allowance it feeds moves published shares, and an
    /// aggregator catching up after an outage must not make on-time reports look late.
    fn apply_command(&self, p: &str, list: &[Stored]) -> (redis::Cmd, u64) {
        let period = self.app.config.control.period_ms;
        let (policy, now) = (crate::inputs::policy(&self.app.config.control), crate::now_ms());
        let (impressions, allocations): (Vec<Received>, Vec<Received>) = list
            .iter()
            .flat_map(|s| s.batch.events.iter().map(move |e| (e, s.received_ms.min(now))))
            .partition(|(e, _)| e.kind == EventKind::Impression);
        let mut windows = WindowStats::fold_windows(allocations.into_iter().map(|(e, _)| e), period);
        let mut late = 0;
        for (index, delta) in windows.iter_mut().filter(|(index, _)| policy.is_late(**index, now)) {
            delta.mark_late();
            late += delta.late.n;
            tracing::debug!(placement = p, window = index, requests = delta.late.n, "late allocations");
        }
        for (e, _) in &impressions {
            windows.entry(WindowStats::window_index(e.event_time_ms, period)).or_default();
        }
        let k = PlacementKeys::of_raw(p);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(list.len() + windows.len() + impressions.len());
        for s in list {
            cmd.arg(k.applied(&s.id));
        }
        for index in windows.keys() {
            cmd.arg(k.window(*index));
        }
        for (e, _) in &impressions {
            let ad = e.ad_id.as_ref().map_or("", |a| a.as_str());
            cmd.arg(k.impression(e.request_id.as_str(), e.event_time_ms, ad));
        }
        let window_ttl = self.app.config.control.window_ttl_secs();
        let expiry = |index: u64| window_expires_at_ms(index, period, window_ttl);
        cmd.arg(list.len())
            .arg(marker_expires_at_ms(windows.keys().map(|i| expiry(*i)), crate::now_ms()))
            .arg(windows.len());
        for (index, stats) in &windows {
            let fields = stats.to_fields();
            cmd.arg(expiry(*index)).arg(fields.len());
            for (f, v) in fields {
                cmd.arg(f).arg(v);
            }
        }
        for (e, received) in &impressions {
            let index = WindowStats::window_index(e.event_time_ms, period);
            let position = windows.keys().position(|i| *i == index).expect("every impression's window is listed");
            let mut delta = WindowStats::of_event(e);
            let is_late = policy.is_late_for_impressions(index, *received);
            if is_late {
                delta.mark_impressions_late();
            }
            let fields = delta.to_fields();
            let marker = impression_marker_expires_at_ms(expiry(index)).max(crate::now_ms() + 1000);
            cmd.arg(position + 1).arg(marker).arg(u8::from(is_late)).arg(fields.len());
            for (f, v) in fields {
                cmd.arg(f).arg(v);
            }
        }
        (cmd, late)
    }

    /// Applies the batch, retrying until it is applied or `cancel` cuts a wait short.
    async fn apply(&mut self, conn: &mut RedisConn, batch: &Batch, cancel: &CancellationToken) -> Result<(), Stopped> {
        let mut retry = Retry::new(RETRY);
        loop {
            match self.process(conn, &batch.entries).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, entries = batch.entries.len(), "applying entries failed; retrying");
                    retry.wait(cancel).await?;
                }
            }
        }
    }

    /// Applies every entry once: entries trimmed from the stream have nothing to apply,
    /// undecodable ones are counted and skipped. The caller acknowledges them all.
    async fn process(&mut self, conn: &mut RedisConn, entries: &[Entry]) -> redis::RedisResult<()> {
        let mut invalid = 0;
        let mut groups: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
        for entry in entries.iter().filter(|e| !e.is_trimmed()) {
            let (Some(p), Some(body)) = (entry.get::<String>(stream::PLACEMENT), entry.get::<Vec<u8>>(stream::BATCH))
            else {
                invalid += 1;
                tracing::warn!(id = %entry.id, "stream entry without p/e fields; skipped");
                continue;
            };
            match EventBatch::parse(&body) {
                Ok(batch) => groups.entry(p).or_default().push(Stored::of(entry, batch)),
                Err(e) => {
                    invalid += 1;
                    tracing::warn!(id = %entry.id, error = %e, "stream entry with invalid events; skipped");
                }
            }
        }
        let mut pending: Vec<(String, Vec<Stored>)> = Vec::new();
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
        let (mut applied, mut duplicates, mut late, mut late_impressions) = (0u64, 0u64, 0u64, 0u64);
        let mut failed = None;
        while !pending.is_empty() {
            // One script call per placement group, sent concurrently: pipelined on one
            // node, spread over the right nodes on a cluster. Each group's reply is
            // counted on its own, so a group that fails does not lose the counts of
            // those applied beside it (they read as duplicates when the batch is retried).
            let (cmds, lates): (Vec<redis::Cmd>, Vec<u64>) =
                pending.iter().map(|(p, list)| self.apply_command(p, list)).unzip();
            let calls = cmds.into_iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { cmd.query_async::<Vec<u64>>(&mut conn).await }
            });
            let replies = futures_util::future::join_all(calls).await;
            let (mut retry, mut reload) = (Vec::new(), false);
            for (((p, list), reply), group_late) in pending.into_iter().zip(replies).zip(lates) {
                match reply {
                    Ok(reply) if reply.first() == Some(&0) => {
                        applied += list.len() as u64;
                        late += group_late;
                        late_impressions += reply.get(1).copied().unwrap_or(0);
                    }
                    Ok(seen) if seen.is_empty() => {
                        // Not a reply of this script: retrying the group as "seen" would
                        // loop on it without end.
                        failed.get_or_insert(redis::RedisError::from((redis::ErrorKind::Parse, "empty apply reply")));
                    }
                    Ok(seen) => {
                        // Some entries were applied before (redelivery): retry without them.
                        duplicates += seen.len() as u64;
                        let seen = |i: usize| seen.contains(&(i as u64 + 1));
                        let rest: Vec<_> =
                            list.into_iter().enumerate().filter(|(i, _)| !seen(*i)).map(|(_, x)| x).collect();
                        if !rest.is_empty() {
                            retry.push((p, rest));
                        }
                    }
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        // Redis restarted and lost its script cache: load it and redo (the
                        // markers make the retry safe).
                        reload = true;
                        retry.push((p, list));
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if reload {
                match redis::cmd("SCRIPT").arg("LOAD").arg(APPLY_SCRIPT).query_async(&mut *conn).await {
                    Ok(sha) => self.sha = sha,
                    Err(e) => {
                        failed.get_or_insert(e);
                        break;
                    }
                }
            }
            pending = retry;
        }
        let m = &self.app.metrics.aggregate_entries;
        m.with_label_values(&["applied"]).inc_by(applied);
        m.with_label_values(&["duplicate"]).inc_by(duplicates);
        self.app.metrics.aggregate_late_events.inc_by(late);
        self.app.metrics.aggregate_late_impressions.inc_by(late_impressions);
        if let Some(e) = failed {
            return Err(e);
        }
        // Once per batch: a failed one is decoded again when retried.
        m.with_label_values(&["invalid"]).inc_by(invalid);
        #[cfg(feature = "failpoints")]
        if self.app.config.aggregate.failpoint == Some(Failpoint::ExitAfterApply) && had_work {
            tracing::error!("failpoint exit_after_apply: exiting before XACK");
            std::process::exit(3);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_window_expires_at_a_fixed_time_after_its_end() {
        // Window 10 of an hour's period ends at 11 h; kept 8 h after that.
        assert_eq!(window_expires_at_ms(10, HOUR, 8 * 3600), 19 * HOUR);
        assert_eq!(window_expires_at_ms(u64::MAX, HOUR, 60), u64::MAX, "saturates");
    }

    #[test]
    fn markers_expire_no_earlier_than_any_window_they_protect_whatever_the_period() {
        for period in [1_000, 60_000, 113_000, HOUR, 24 * HOUR] {
            let ttl = (period * 8 / 1000).max(60);
            let windows = [100, 101, 103].map(|i| window_expires_at_ms(i, period, ttl));
            let now = 100 * period;
            let marker = marker_expires_at_ms(windows, now);
            assert!(windows.iter().all(|w| marker >= *w), "period {period}: {marker} vs {windows:?}");
            let impression = impression_marker_expires_at_ms(windows[0]);
            assert!(impression > windows[0], "an impression's marker outlives its window");
        }
    }

    #[test]
    fn a_marker_of_windows_long_gone_still_lives_a_moment() {
        assert_eq!(marker_expires_at_ms([5_000], 1_000_000), 1_001_000);
        assert_eq!(marker_expires_at_ms([], 1_000_000), 1_001_000);
    }
}
