//! The archiver: a consumer group on the event stream that writes Parquet to S3.
//!
//! Entries are read with `XREADGROUP` into a buffer, which is flushed when it holds
//! `flush_max_rows` events or its oldest entry is `flush_max_age` old. A flush writes one
//! object per hour partition, keyed by the flush's first and last stream ids, and only
//! after every object is stored does it `XACK` the entries, in one command. So:
//!
//! - while S3 is down, the entries stay pending in the stream, the archiver retries with
//!   exponential backoff, and the lag metric grows;
//! - if the archiver stops or crashes between storing and acknowledging, its pending
//!   entries are exactly the failed flush; on restart it reads them back (its consumer
//!   name is stable), flushes them as one, and overwrites the same keys with the same
//!   bytes: no loss and no duplicate rows.
//!
//! Reads use a short `BLOCK` and are never cancelled mid-flight: a cancelled read would
//! leave entries delivered to this consumer but in no buffer, breaking the property above.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allot_core::EventBatch;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId as RedisEntry, StreamReadOptions};
use redis::{AsyncTypedCommands, Value};
use tokio_util::sync::CancellationToken;

use crate::metrics::ArchiverMetrics as M;
use crate::parquet_rows::{self, ArchivedEvent};
use crate::partition::{Partition, StreamId};
use crate::store::ArchiveStore;
use crate::{ArchiveConfig, ArchiveError, ArchiverMetrics};

/// Entries per `XREADGROUP`; each carries up to 1000 events.
const READ_COUNT: usize = 256;
/// The longest a read blocks, which bounds how late a shutdown is noticed.
const MAX_BLOCK: Duration = Duration::from_millis(500);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// One stream entry, decoded.
#[derive(Debug)]
struct Entry {
    raw_id: String,
    id: StreamId,
    events: Vec<ArchivedEvent>,
}

/// Entries read but not yet stored.
#[derive(Debug, Default)]
struct Buffer {
    entries: Vec<Entry>,
    rows: usize,
    since: Option<Instant>,
}

impl Buffer {
    fn push(&mut self, e: Entry) {
        self.rows += e.events.len();
        self.since.get_or_insert_with(Instant::now);
        self.entries.push(e);
    }

    fn take(&mut self) -> Vec<Entry> {
        self.rows = 0;
        self.since = None;
        std::mem::take(&mut self.entries)
    }
}

/// Exponential backoff that gives way to shutdown.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { next: FIRST_BACKOFF.min(max), max }
    }

    async fn wait(&mut self, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = stop.cancelled() => Err(ArchiveError::Shutdown),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// The stream-to-S3 archiver.
#[derive(Debug)]
pub struct Archiver {
    cfg: ArchiveConfig,
    store: ArchiveStore,
    metrics: Arc<ArchiverMetrics>,
}

/// Runs an archiver on `redis_url` until `shutdown` completes.
pub async fn run(
    redis_url: &str,
    cfg: ArchiveConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ArchiveError> {
    let client = redis::Client::open(redis_url)?;
    Archiver::new(cfg).await?.run(client, shutdown).await
}

impl Archiver {
    pub async fn new(cfg: ArchiveConfig) -> Result<Self, ArchiveError> {
        cfg.check()?;
        let store = ArchiveStore::connect(&cfg).await;
        Ok(Self { cfg, store, metrics: Arc::default() })
    }

    /// The archiver's metrics, for the origin's `/metrics`.
    pub fn metrics(&self) -> Arc<ArchiverMetrics> {
        self.metrics.clone()
    }

    /// Archives until `shutdown` completes. Buffered entries are flushed once more on
    /// shutdown; if that fails they stay pending and the next start stores them.
    pub async fn run(
        &self,
        client: redis::Client,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ArchiveError> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let result = self.run_until(client, &stop).await;
        watcher.abort();
        match result {
            Err(ArchiveError::Shutdown) => Ok(()),
            other => other,
        }
    }

    async fn run_until(&self, client: redis::Client, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let mut conn = self.connect(client, stop).await?;
        self.ensure_group(&mut conn, stop).await?;
        let pending = self.read_pending(&mut conn, stop).await?;
        if !pending.is_empty() {
            tracing::info!(entries = pending.len(), "archiving entries left pending by an earlier run");
            self.flush(&mut conn, pending, stop).await?;
        }
        let mut buf = Buffer::default();
        let mut backoff = Backoff::new(self.cfg.retry_max_backoff());
        let mut lag_checked = Instant::now() - Duration::from_secs(10);
        while !stop.is_cancelled() {
            let block = match buf.since {
                Some(t) => self.cfg.flush_max_age().saturating_sub(t.elapsed()),
                None => MAX_BLOCK,
            }
            .clamp(Duration::from_millis(1), MAX_BLOCK);
            match self.read_new(&mut conn, block).await {
                Ok(entries) => {
                    backoff = Backoff::new(self.cfg.retry_max_backoff());
                    entries.into_iter().for_each(|e| buf.push(e));
                }
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(error = %e, "reading the event stream failed; retrying");
                    backoff.wait(stop).await?;
                    if matches!(&e, ArchiveError::Redis(r) if r.code() == Some("NOGROUP")) {
                        // The stream (and with it the group) was deleted: start over.
                        self.ensure_group(&mut conn, stop).await?;
                    }
                }
            }
            self.note_buffer_age(&buf);
            let full = buf.rows >= self.cfg.flush_max_rows;
            let old = buf.since.is_some_and(|t| t.elapsed() >= self.cfg.flush_max_age());
            if full || old {
                self.flush(&mut conn, buf.take(), stop).await?;
                self.note_buffer_age(&buf);
            }
            if lag_checked.elapsed() >= Duration::from_secs(1) {
                lag_checked = Instant::now();
                self.update_lag(&mut conn).await;
            }
        }
        if !buf.entries.is_empty() {
            // One last attempt; on failure the entries stay pending for the next start.
            self.flush(&mut conn, buf.take(), stop).await?;
        }
        Ok(())
    }

    async fn connect(
        &self,
        client: redis::Client,
        stop: &CancellationToken,
    ) -> Result<ConnectionManager, ArchiveError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(MAX_BLOCK + Duration::from_secs(10)))
            .set_max_delay(self.cfg.retry_max_backoff());
        let mut backoff = Backoff::new(self.cfg.retry_max_backoff());
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(error = %e, "connecting to redis failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
    }

    /// Creates the consumer group (from the start of the stream) unless it exists.
    async fn ensure_group(&self, conn: &mut ConnectionManager, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let mut backoff = Backoff::new(self.cfg.retry_max_backoff());
        loop {
            match conn.xgroup_create_mkstream(&self.cfg.stream, &self.cfg.group, "0").await {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some("BUSYGROUP") => return Ok(()),
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(error = %e, "creating the archiver group failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
    }

    /// Every entry delivered to this consumer but not acknowledged, in stream order.
    async fn read_pending(
        &self,
        conn: &mut ConnectionManager,
        stop: &CancellationToken,
    ) -> Result<Vec<Entry>, ArchiveError> {
        let mut out = Vec::new();
        let mut after = "0".to_string();
        let mut backoff = Backoff::new(self.cfg.retry_max_backoff());
        loop {
            let opts = StreamReadOptions::default().group(&self.cfg.group, &self.cfg.consumer).count(1000);
            match conn.xread_options(&[&self.cfg.stream], &[&after], &opts).await {
                Ok(reply) => {
                    let ids: Vec<RedisEntry> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
                    let Some(last) = ids.last() else { return Ok(out) };
                    after = last.id.clone();
                    out.extend(ids.into_iter().filter_map(|e| self.decode(e)));
                }
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(error = %e, "reading pending entries failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
    }

    async fn read_new(&self, conn: &mut ConnectionManager, block: Duration) -> Result<Vec<Entry>, ArchiveError> {
        let opts = StreamReadOptions::default()
            .group(&self.cfg.group, &self.cfg.consumer)
            .count(READ_COUNT)
            .block(block.as_millis() as usize);
        let reply = conn.xread_options(&[&self.cfg.stream], &[">"], &opts).await?;
        let ids = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        Ok(ids.filter_map(|e| self.decode(e)).collect())
    }

    /// Decodes an entry. An entry without a valid id cannot be acknowledged and is
    /// skipped; one with undecodable events is kept with no events, so it is
    /// acknowledged (dropped) with its flush and counted.
    fn decode(&self, e: RedisEntry) -> Option<Entry> {
        let id: StreamId = match e.id.parse() {
            Ok(id) => id,
            Err(err) => {
                tracing::error!(error = %err, "stream entry with an invalid id");
                return None;
            }
        };
        let bytes = |field: &str| match e.map.get(field) {
            Some(Value::BulkString(b)) => Some(b.as_slice()),
            Some(Value::SimpleString(s)) => Some(s.as_bytes()),
            _ => None,
        };
        let received_ms = bytes("r").and_then(|r| std::str::from_utf8(r).ok()?.parse().ok()).unwrap_or(id.ms);
        let events = match bytes("e").map(EventBatch::parse) {
            Some(Ok(batch)) => batch.events.into_iter().map(|event| ArchivedEvent { event, received_ms }).collect(),
            Some(Err(err)) => {
                M::add(&self.metrics.malformed_entries, 1);
                tracing::error!(id = %e.id, error = %err, "dropping an undecodable stream entry");
                Vec::new()
            }
            None => {
                M::add(&self.metrics.malformed_entries, 1);
                tracing::error!(id = %e.id, "dropping a stream entry without events");
                Vec::new()
            }
        };
        Some(Entry { raw_id: e.id, id, events })
    }

    /// Stores the entries' events (one object per hour partition), then acknowledges
    /// the entries. Retries with backoff until done or shut down.
    async fn flush(
        &self,
        conn: &mut ConnectionManager,
        entries: Vec<Entry>,
        stop: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let (Some(first), Some(last)) = (entries.first().map(|e| e.id), entries.last().map(|e| e.id)) else {
            return Ok(());
        };
        let mut parts: BTreeMap<Partition, Vec<&ArchivedEvent>> = BTreeMap::new();
        for ev in entries.iter().flat_map(|e| &e.events) {
            parts.entry(Partition::of_unix_ms(ev.event.event_time_ms)).or_default().push(ev);
        }
        let mut objects = Vec::with_capacity(parts.len());
        for (part, rows) in &parts {
            let key = part.object_key(self.store.prefix(), first, last);
            objects.push((key, parquet_rows::encode(rows)?, rows.len(), false));
        }
        let mut backoff = Backoff::new(self.cfg.retry_max_backoff());
        loop {
            for (key, body, rows, stored) in objects.iter_mut().filter(|o| !o.3) {
                match self.store.put(key, body.clone()).await {
                    Ok(()) => {
                        *stored = true;
                        M::add(&self.metrics.objects_written, 1);
                        M::add(&self.metrics.rows_written, *rows as u64);
                        M::add(&self.metrics.bytes_written, body.len() as u64);
                    }
                    Err(e) => {
                        M::add(&self.metrics.put_failures, 1);
                        tracing::warn!(error = %e, "storing an archive object failed; retrying");
                        break;
                    }
                }
            }
            if objects.iter().all(|o| o.3) {
                break;
            }
            self.update_lag(conn).await;
            backoff.wait(stop).await?;
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.raw_id.as_str()).collect();
        let mut backoff = Backoff::new(self.cfg.retry_max_backoff());
        loop {
            match conn.xack(&self.cfg.stream, &self.cfg.group, &ids).await {
                Ok(_) => break,
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(error = %e, "acknowledging archived entries failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
        M::add(&self.metrics.entries_archived, entries.len() as u64);
        M::add(&self.metrics.flushes, 1);
        tracing::debug!(entries = entries.len(), objects = objects.len(), %first, %last, "flushed");
        Ok(())
    }

    fn note_buffer_age(&self, buf: &Buffer) {
        let age = buf.entries.first().map_or(0, |e| now_ms().saturating_sub(e.id.ms));
        M::set(&self.metrics.oldest_buffered_age_ms, age);
    }

    /// Lag = entries not yet delivered to the group plus those delivered but unacknowledged.
    async fn update_lag(&self, conn: &mut ConnectionManager) {
        match conn.xinfo_groups(&self.cfg.stream).await {
            Ok(reply) => {
                if let Some(g) = reply.groups.iter().find(|g| g.name == self.cfg.group) {
                    M::set(&self.metrics.lag_entries, (g.lag.unwrap_or(0) + g.pending) as u64);
                }
            }
            Err(e) => {
                M::add(&self.metrics.redis_failures, 1);
                tracing::warn!(error = %e, "reading the archiver group's lag failed");
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
