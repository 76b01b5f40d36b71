//! One dataset's archiving loop: its stream, its consumer group, its buffer.
//!
//! Reads use a short `BLOCK` and are never cancelled mid-flight: a cancelled read would
//! leave entries delivered to this consumer but in no buffer. Flushes take the whole
//! buffer and nothing is read while one is in progress, so at any moment this consumer's
//! pending entries are either the buffer or exactly one flush: the property that makes a
//! restarted or claiming archiver overwrite the same objects rather than add rows.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncTypedCommands;
use redis::streams::{StreamId as RedisEntry, StreamReadOptions};
use tokio_util::sync::CancellationToken;

use crate::archiver::{Backoff, Connect, MAX_BLOCK};
use crate::dataset::{Dataset, Fields};
use crate::metrics::{ArchiverMetrics as M, DatasetMetrics};
use crate::partition::{Partition, StreamId};
use crate::store::ArchiveStore;
use crate::{ArchiveConfig, ArchiveError};

/// Entries per `XREADGROUP`; each carries up to 1000 events.
pub(crate) const READ_COUNT: usize = 256;

/// What a lane needs of its connection.
pub(crate) trait Conn: AsyncTypedCommands + Send + Sync {}
impl<C: AsyncTypedCommands + Send + Sync> Conn for C {}

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
    raw_id: String,
    id: StreamId,
    rows: Vec<R>,
}

/// Entries read but not yet stored.
#[derive(Debug)]
struct Buffer<R> {
    entries: Vec<Entry<R>>,
    rows: usize,
    since: Option<Instant>,
}

impl<R> Buffer<R> {
    fn new() -> Self {
        Self { entries: Vec::new(), rows: 0, since: None }
    }

    fn push(&mut self, e: Entry<R>) {
        self.rows += e.rows.len();
        self.since.get_or_insert_with(Instant::now);
        self.entries.push(e);
    }

    fn take(&mut self) -> Vec<Entry<R>> {
        self.rows = 0;
        self.since = None;
        std::mem::take(&mut self.entries)
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

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.cfg.retry_max_backoff())
    }

    /// Archives until `stop`; returns `Err(Shutdown)` when stopped.
    pub(crate) async fn run<R: Connect>(&self, redis: &R, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let mut conn = self.connect(redis, stop).await?;
        self.ensure_group(&mut conn, stop).await?;
        let mut buf = Buffer::new();
        let mut backoff = self.backoff();
        let mut lag_checked = Instant::now() - Duration::from_secs(10);
        let mut claim_checked: Option<Instant> = None;
        while !stop.is_cancelled() {
            if buf.entries.is_empty() && claim_checked.is_none_or(|t| t.elapsed() >= self.cfg.claim_every()) {
                // Only with an empty buffer: then this consumer should have nothing
                // pending, and what it claims is exactly the next flush. The first
                // pass, at start, recovers what an earlier run left pending.
                claim_checked = Some(Instant::now());
                self.flush_own_pending(&mut conn, stop).await?;
                self.claim_and_flush(&mut conn, stop).await?;
            }
            let block = match buf.since {
                Some(t) => self.cfg.flush_max_age().saturating_sub(t.elapsed()),
                None => MAX_BLOCK,
            }
            .clamp(Duration::from_millis(1), MAX_BLOCK);
            match self.read_new(&mut conn, block).await {
                Ok(entries) => {
                    backoff = self.backoff();
                    entries.into_iter().for_each(|e| buf.push(e));
                }
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(dataset = D::NAME, error = %e, "reading the stream failed; retrying");
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
                self.flush(&mut conn, buf.take(), FlushKind::Fresh, stop).await?;
                self.note_buffer_age(&buf);
            }
            if lag_checked.elapsed() >= Duration::from_secs(1) {
                lag_checked = Instant::now();
                self.update_lag(&mut conn).await;
            }
        }
        if !buf.entries.is_empty() {
            // One last attempt; on failure the entries stay pending for the next start.
            self.flush(&mut conn, buf.take(), FlushKind::Fresh, stop).await?;
        }
        Err(ArchiveError::Shutdown)
    }

    async fn connect<R: Connect>(&self, redis: &R, stop: &CancellationToken) -> Result<R::Conn, ArchiveError> {
        let mut backoff = self.backoff();
        loop {
            match redis.connect().await {
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
    async fn ensure_group(&self, conn: &mut impl Conn, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let mut backoff = self.backoff();
        loop {
            match conn.xgroup_create_mkstream(self.stream(), &self.cfg.group, "0").await {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some("BUSYGROUP") => return Ok(()),
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(dataset = D::NAME, error = %e, "creating the archiver group failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
    }

    /// Flushes what is pending for this consumer while its buffer is empty: the flush
    /// an earlier run could not finish, or entries a read or a claim delivered although
    /// its reply was lost (a timeout, a reconnect), which no one else would take while
    /// this consumer is alive.
    async fn flush_own_pending(&self, conn: &mut impl Conn, stop: &CancellationToken) -> Result<(), ArchiveError> {
        let pending = self.read_pending(conn, stop).await?;
        if pending.is_empty() {
            return Ok(());
        }
        tracing::info!(dataset = D::NAME, entries = pending.len(), "archiving entries pending for this consumer");
        self.flush(conn, pending, FlushKind::Recovery, stop).await
    }

    /// Every entry delivered to this consumer but not acknowledged, in stream order.
    async fn read_pending(
        &self,
        conn: &mut impl Conn,
        stop: &CancellationToken,
    ) -> Result<Vec<Entry<D::Row>>, ArchiveError> {
        let mut out = Vec::new();
        let mut after = "0".to_string();
        let mut backoff = self.backoff();
        loop {
            // At most one flush is pending: read it in one go where possible, so a
            // replica claiming at the same moment cannot take half of it.
            let count = self.cfg.flush_max_rows + READ_COUNT;
            let opts = StreamReadOptions::default().group(&self.cfg.group, &self.cfg.consumer).count(count);
            match conn.xread_options(&[self.stream()], &[&after], &opts).await {
                Ok(reply) => {
                    let ids: Vec<RedisEntry> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
                    let Some(last) = ids.last() else { return Ok(out) };
                    after = last.id.clone();
                    out.extend(ids.into_iter().filter_map(|e| self.decode(e)));
                }
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(dataset = D::NAME, error = %e, "reading pending entries failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
    }

    async fn read_new(&self, conn: &mut impl Conn, block: Duration) -> Result<Vec<Entry<D::Row>>, ArchiveError> {
        let opts = StreamReadOptions::default()
            .group(&self.cfg.group, &self.cfg.consumer)
            .count(READ_COUNT)
            .block(block.as_millis() as usize);
        let reply = conn.xread_options(&[self.stream()], &[">"], &opts).await?;
        let ids = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        Ok(ids.filter_map(|e| self.decode(e)).collect())
    }

    /// Decodes an entry. An entry without a valid id cannot be acknowledged and is
    /// skipped; one with undecodable rows is kept with no rows, so it is acknowledged
    /// (dropped) with its flush and counted.
    pub(crate) fn decode(&self, e: RedisEntry) -> Option<Entry<D::Row>> {
        let id: StreamId = match e.id.parse() {
            Ok(id) => id,
            Err(err) => {
                tracing::error!(dataset = D::NAME, error = %err, "stream entry with an invalid id");
                return None;
            }
        };
        let rows = match D::decode(Fields(&e.map), id.ms) {
            Ok(rows) => rows,
            Err(err) => {
                M::add(&self.metrics.malformed_entries, 1);
                tracing::error!(dataset = D::NAME, id = %e.id, error = %err, "dropping an undecodable stream entry");
                Vec::new()
            }
        };
        Some(Entry { raw_id: e.id, id, rows })
    }

    /// Stores the entries' rows (one object per hour partition), then acknowledges
    /// the entries. Retries with backoff until done or shut down.
    ///
    /// A `Recovery` flush (entries left pending by a crash, or claimed) keeps an object
    /// that already exists: it was stored by the interrupted flush of the very same
    /// entries, complete, whereas some of those entries may since have been trimmed
    /// from the stream and would be missing from a rewrite.
    pub(crate) async fn flush(
        &self,
        conn: &mut impl Conn,
        entries: Vec<Entry<D::Row>>,
        kind: FlushKind,
        stop: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let (Some(first), Some(last)) = (entries.first().map(|e| e.id), entries.last().map(|e| e.id)) else {
            return Ok(());
        };
        let mut parts: BTreeMap<Partition, Vec<&D::Row>> = BTreeMap::new();
        for row in entries.iter().flat_map(|e| &e.rows) {
            parts.entry(Partition::of_unix_ms(D::time_ms(row))).or_default().push(row);
        }
        let mut objects = Vec::with_capacity(parts.len());
        for (part, rows) in &parts {
            let key = part.object_key(self.store.prefix(), D::NAME, first, last);
            objects.push((key, D::encode(rows)?, rows.len(), false));
        }
        let mut backoff = self.backoff();
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
            self.update_lag(conn).await;
            backoff.wait(stop).await?;
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.raw_id.as_str()).collect();
        let mut backoff = self.backoff();
        loop {
            match conn.xack(self.stream(), &self.cfg.group, &ids).await {
                Ok(_) => break,
                Err(e) => {
                    M::add(&self.metrics.redis_failures, 1);
                    tracing::warn!(dataset = D::NAME, error = %e, "acknowledging archived entries failed; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
        M::add(&self.metrics.entries_archived, entries.len() as u64);
        M::add(&self.metrics.flushes, 1);
        tracing::debug!(dataset = D::NAME, entries = entries.len(), objects = objects.len(), %first, %last, "flushed");
        Ok(())
    }

    fn note_buffer_age(&self, buf: &Buffer<D::Row>) {
        let age = buf.entries.first().map_or(0, |e| now_ms().saturating_sub(e.id.ms));
        M::set(&self.metrics.oldest_buffered_age_ms, age);
    }

    /// Lag = entries not yet delivered to the group plus those delivered but unacknowledged.
    async fn update_lag(&self, conn: &mut impl Conn) {
        match conn.xinfo_groups(self.stream()).await {
            Ok(reply) => {
                if let Some(g) = reply.groups.iter().find(|g| g.name == self.cfg.group) {
                    M::set(&self.metrics.lag_entries, (g.lag.unwrap_or(0) + g.pending) as u64);
                }
            }
            Err(e) => {
                M::add(&self.metrics.redis_failures, 1);
                tracing::warn!(dataset = D::NAME, error = %e, "reading the archiver group's lag failed");
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
