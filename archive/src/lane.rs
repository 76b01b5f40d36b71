//! One dataset's archiving loop: its stream, its consumer, its buffer.
//!
//! The consumer-group cycle (creating the group, this consumer's own pending entries,
//! claims, reads, acknowledgements, retries) is [`allot_stream`]'s; a lane decides what
//! to do with what the consumer delivers. New entries go to the buffer, flushed by size
//! and by age; a recovery batch (this consumer's own pending entries, or a silent
//! consumer's, claimed) is flushed alone, as one set ([`crate::claim`]). The consumer
//! reads nothing while a recovery batch is held, looks for recovery work only while the
//! buffer is empty, and a flush takes the whole buffer and acknowledges it before the
//! next read; reads are never cancelled mid-flight. So at any moment this consumer's
//! pending entries are either the buffer or exactly one flush: the property that makes a
//! restarted or claiming archiver overwrite the same objects rather than add rows.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allot_core::contract::keys;
use allot_stream::lag::{Lag, LagFacts, group_lag};
use allot_stream::lock::{self, HoldError, LockConfig};
use allot_stream::{ConsumerConfig, Observer, Retry, StreamConsumer};
use redis::AsyncTypedCommands;
use tokio_util::sync::CancellationToken;

use crate::archiver::{Connect, MAX_BLOCK, retry_policy};
use crate::dataset::{Dataset, Fields};
use crate::metrics::{ArchiverMetrics as M, DatasetMetrics};
use crate::partition::{Partition, StreamId};
use crate::store::ArchiveStore;
use crate::{ArchiveConfig, ArchiveError};

/// Entries per `XREADGROUP`; each carries up to 1000 events.
const READ_COUNT: usize = 256;

/// What a lane needs of its connection.
pub(crate) trait Conn: AsyncTypedCommands + Send + Sync {}
impl<C: AsyncTypedCommands + Send + Sync> Conn for C {}

/// A lane's stream consumer.
pub(crate) type Consumer<'a, C> = StreamConsumer<C, RedisFailures<'a>>;

/// Counts and logs a lane's failed Redis commands (the consumer retries them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedisFailures<'a> {
    dataset: &'static str,
    metrics: &'a DatasetMetrics,
}

impl Observer for RedisFailures<'_> {
    fn failed(&self, what: &'static str, error: &redis::RedisError) {
        M::add(&self.metrics.redis_failures, 1);
        tracing::warn!(dataset = self.dataset, error = %error, "{what} failed; retrying");
    }
}

/// Whether a flush is of freshly read entries or of entries an earlier flush may have
/// stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushKind {
    Fresh,
    Recovery,
}

/// One stream entry, decoded.
#[derive(Debug)]
pub(crate) struct Entry<R> {
    id: StreamId,
    rows: Vec<R>,
}

/// Entries to store together, and the ids to acknowledge once they are stored: every
/// entry delivered, including those without rows.
#[derive(Debug)]
pub(crate) struct Flush<R> {
    entries: Vec<Entry<R>>,
    ids: Vec<String>,
}

impl<R> Flush<R> {
    fn new() -> Self {
        Self { entries: Vec::new(), ids: Vec::new() }
    }
}

/// Entries read but not yet stored.
#[derive(Debug)]
struct Buffer<R> {
    flush: Flush<R>,
    rows: usize,
    since: Option<Instant>,
}

impl<R> Buffer<R> {
    fn new() -> Self {
        Self { flush: Flush::new(), rows: 0, since: None }
    }

    fn push(&mut self, f: Flush<R>) {
        if f.ids.is_empty() {
            return;
        }
        self.rows += f.entries.iter().map(|e| e.rows.len()).sum::<usize>();
        self.since.get_or_insert_with(Instant::now);
        self.flush.entries.extend(f.entries);
        self.flush.ids.extend(f.ids);
    }

    fn is_empty(&self) -> bool {
        self.flush.ids.is_empty()
    }

    fn take(&mut self) -> Flush<R> {
        self.rows = 0;
        self.since = None;
        std::mem::replace(&mut self.flush, Flush::new())
    }
}

/// The archiving loop of dataset `D`.
#[derive(Debug)]
pub(crate) struct Lane<'a, D> {
    pub(crate) cfg: &'a ArchiveConfig,
    pub(crate) store: &'a ArchiveStore,
    pub(crate) metrics: &'a DatasetMetrics,
    dataset: PhantomData<D>,
}

impl<'a, D: Dataset> Lane<'a, D> {
    pub(crate) fn new(cfg: &'a ArchiveConfig, store: &'a ArchiveStore, metrics: &'a DatasetMetrics) -> Self {
        Self { cfg, store, metrics, dataset: PhantomData }
    }

    pub(crate) fn stream(&self) -> &'a str {
        D::stream(self.cfg)
    }

    fn retry(&self) -> Retry {
        Retry::new(retry_policy(self.cfg))
    }

    fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            consumer: self.cfg.consumer.clone(),
            read_count: READ_COUNT,
            // At most one flush is pending: read it in one go where possible.
            pending_count: self.cfg.flush_max_rows + READ_COUNT,
            max_block: MAX_BLOCK,
            claim_idle: self.cfg.claim_idle(),
            check_every: self.cfg.claim_every(),
            forget_idle: self.cfg.forget_idle(),
            retry: retry_policy(self.cfg),
        }
    }

    /// Archives until `stop`; returns `Err(Shutdown)` when stopped. Runs only while it
    /// holds its consumer name's lock ([`allot_stream::lock`]): `Err(Lock)` if another
    /// live process holds the name, or once the lock is lost.
    /// `started` is called once the name is held.
    pub(crate) async fn run<R: Connect>(
        &self,
        redis: &R,
        stop: &CancellationToken,
        started: impl FnOnce(),
    ) -> Result<(), ArchiveError> {
        let lane_stop = stop.child_token();
        let lock_end = CancellationToken::new();
        let _release = lock_end.clone().drop_guard();
        self.lock_name(redis, stop, lock_end, lane_stop.clone()).await?;
        started();
        let result = self.archive(redis, &lane_stop).await;
        if lane_stop.is_cancelled() && !stop.is_cancelled() {
            return Err(ArchiveError::Lock(format!("the lock on {:?} was lost", self.cfg.consumer)));
        }
        result
    }

    /// Takes the consumer name's lock, renewed until `lock_end`; `lost` is cancelled if
    /// it is lost.
    async fn lock_name<R: Connect>(
        &self,
        redis: &R,
        stop: &CancellationToken,
        lock_end: CancellationToken,
        lost: CancellationToken,
    ) -> Result<(), ArchiveError> {
        let conn = self.connect(redis, stop).await?;
        let key = keys::consumer_lock(self.stream(), &self.cfg.group, &self.cfg.consumer);
        let token = format!("{}-{:08x}", std::process::id(), allot_stream::Jitter::new().word());
        let held = lock::hold(conn, key, &self.cfg.consumer, token, LockConfig::default(), lock_end, lost).await;
        held.map_err(|e| match e {
            HoldError::Taken(t) => ArchiveError::Lock(t.to_string()),
            HoldError::Stopped(_) => ArchiveError::Shutdown,
        })
    }

    async fn archive<R: Connect>(&self, redis: &R, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let conn = self.connect(redis, stop).await?;
        let failures = RedisFailures { dataset: D::NAME, metrics: self.metrics };
        let mut consumer = StreamConsumer::new(conn, self.stream(), &self.cfg.group, self.consumer_config(), failures);
        let mut buf = Buffer::new();
        let mut lag_checked: Option<Instant> = None;
        while !stop.is_cancelled() {
            // A read returns in time for the buffer's flush by age.
            consumer.wake_by(buf.since.map(|t| t + self.cfg.flush_max_age()));
            let Ok(batch) = consumer.next(stop).await else { break };
            if batch.is_recovery() {
                // Only ever delivered with an empty buffer: it is exactly the next flush.
                self.recover(&mut consumer, batch, stop).await?;
            } else {
                buf.push(self.decode_all(batch.entries));
            }
            self.note_buffer_age(&buf);
            let full = buf.rows >= self.cfg.flush_max_rows;
            let old = buf.since.is_some_and(|t| t.elapsed() >= self.cfg.flush_max_age());
            if full || old {
                self.flush(&mut consumer, buf.take(), FlushKind::Fresh, stop).await?;
                self.note_buffer_age(&buf);
            }
            if lag_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                lag_checked = Some(Instant::now());
                self.update_lag(consumer.conn()).await;
            }
        }
        if !buf.is_empty() {
            // One last attempt; on failure the entries stay pending for the next start.
            self.flush(&mut consumer, buf.take(), FlushKind::Fresh, stop).await?;
        }
        Err(ArchiveError::Shutdown)
    }

    async fn connect<R: Connect>(&self, redis: &R, stop: &CancellationToken) -> Result<R::Conn, ArchiveError> {
        let mut retry = self.retry();
        loop {
            match redis.connect().await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(error = %e, "connecting to redis failed; retrying");
                    retry.wait(stop).await?;
                }
            }
        }
    }

    /// Decodes entries for one flush; every id is kept for the acknowledgement.
    pub(crate) fn decode_all(&self, entries: Vec<allot_stream::Entry>) -> Flush<D::Row> {
        let ids = entries.iter().map(|e| e.id.clone()).collect();
        Flush { entries: entries.iter().filter_map(|e| self.decode(e)).collect(), ids }
    }

    /// Decodes an entry. One trimmed from the stream keeps its place with no rows; one
    /// with undecodable rows is kept with no rows, so it is acknowledged (dropped) with
    /// its flush and counted. An entry without a valid id has no place in the flush's
    /// keys; it is left out and acknowledged with the flush.
    fn decode(&self, e: &allot_stream::Entry) -> Option<Entry<D::Row>> {
        let id: StreamId = match e.id.parse() {
            Ok(id) => id,
            Err(err) => {
                tracing::error!(dataset = D::NAME, error = %err, "stream entry with an invalid id");
                return None;
            }
        };
        let Some(fields) = &e.fields else { return Some(Entry { id, rows: Vec::new() }) };
        let rows = match D::decode(Fields(fields), id.ms) {
            Ok(rows) => rows,
            Err(err) => {
                M::add(&self.metrics.malformed_entries, 1);
                tracing::error!(dataset = D::NAME, id = %e.id, error = %err, "dropping an undecodable stream entry");
                Vec::new()
            }
        };
        Some(Entry { id, rows })
    }

    /// Stores the entries' rows (one object per hour partition), then acknowledges
    /// the entries. Retries with backoff until done or shut down.
    ///
    /// A `Recovery` flush (entries left pending by a crash, or claimed) keeps an object
    /// that already exists: it was stored by the interrupted flush of the very same
    /// entries, complete, whereas some of those entries may since have been trimmed
    /// from the stream and would be missing from a rewrite.
    pub(crate) async fn flush<C: Conn>(
        &self,
        consumer: &mut Consumer<'_, C>,
        flush: Flush<D::Row>,
        kind: FlushKind,
        stop: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let Flush { entries, ids } = flush;
        let (Some(first_id), Some(last_id)) = (ids.first().cloned(), ids.last().cloned()) else { return Ok(()) };
        let mut parts: BTreeMap<Partition, Vec<&D::Row>> = BTreeMap::new();
        for row in entries.iter().flat_map(|e| &e.rows) {
            parts.entry(Partition::of_unix_ms(D::time_ms(row))).or_default().push(row);
        }
        let mut objects = Vec::with_capacity(parts.len());
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            for (part, rows) in &parts {
                let key = part.object_key(self.store.prefix(), D::NAME, first.id, last.id);
                objects.push((key, D::encode(rows)?, rows.len(), false));
            }
        }
        let mut retry = self.retry();
        loop {
            for (key, body, rows, stored) in objects.iter_mut().filter(|o| !o.3) {
                if kind == FlushKind::Recovery {
                    match self.store.exists(key).await {
                        Ok(true) => {
                            tracing::info!(dataset = D::NAME, %key, "kept the object an interrupted flush stored");
                            *stored = true;
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            M::add(&self.metrics.put_failures, 1);
                            tracing::warn!(dataset = D::NAME, error = %e, "checking an archive object failed; retrying");
                            break;
                        }
                    }
                }
                match self.store.put(key, body.clone()).await {
                    Ok(()) => {
                        *stored = true;
                        M::add(&self.metrics.objects_written, 1);
                        M::add(&self.metrics.rows_written, *rows as u64);
                        M::add(&self.metrics.bytes_written, body.len() as u64);
                    }
                    Err(e) => {
                        M::add(&self.metrics.put_failures, 1);
                        tracing::warn!(dataset = D::NAME, error = %e, "storing an archive object failed; retrying");
                        break;
                    }
                }
            }
            if objects.iter().all(|o| o.3) {
                break;
            }
            self.update_lag(consumer.conn()).await;
            retry.wait(stop).await?;
        }
        let acked = ids.len();
        consumer.ack(ids, stop).await?;
        M::add(&self.metrics.entries_archived, acked as u64);
        M::add(&self.metrics.flushes, 1);
        tracing::debug!(
            dataset = D::NAME,
            entries = acked,
            objects = objects.len(),
            first = %first_id,
            last = %last_id,
            "flushed"
        );
        Ok(())
    }

    fn note_buffer_age(&self, buf: &Buffer<D::Row>) {
        let age = buf.flush.entries.first().map_or(0, |e| now_ms().saturating_sub(e.id.ms));
        M::set(&self.metrics.oldest_buffered_age_ms, age);
    }

    /// Lag = entries not yet delivered to the group plus those delivered but
    /// unacknowledged. When Redis cannot count the undelivered ones (nil `lag`, after
    /// deletions or trims in the middle of the stream), an upper bound from the stream's
    /// counters ([`allot_stream::lag`]): an unknown lag is never shown as 0.
    async fn update_lag(&self, conn: &mut impl Conn) {
        match self.read_lag(conn).await {
            Ok(Some(lag)) => M::set(&self.metrics.lag_entries, lag.entries()),
            Ok(None) => {}
            Err(e) => {
                M::add(&self.metrics.redis_failures, 1);
                tracing::warn!(dataset = D::NAME, error = %e, "reading the archiver group's lag failed");
            }
        }
    }

    async fn read_lag(&self, conn: &mut impl Conn) -> redis::RedisResult<Option<Lag>> {
        let reply = conn.xinfo_groups(self.stream()).await?;
        let Some(g) = reply.groups.iter().find(|g| g.name == self.cfg.group) else { return Ok(None) };
        let mut facts = LagFacts {
            lag: g.lag.map(|l| l as u64),
            pending: g.pending as u64,
            entries_read: g.entries_read.map(|r| r as u64),
            ..LagFacts::default()
        };
        if facts.lag.is_none() {
            let info: HashMap<String, redis::Value> =
                redis::cmd("XINFO").arg("STREAM").arg(self.stream()).query_async(conn).await?;
            let number = |k: &str| info.get(k).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok()).unwrap_or(0);
            facts.entries_added = number("entries-added");
            facts.length = number("length");
        }
        Ok(Some(group_lag(facts)))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
