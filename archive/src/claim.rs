//! Taking over what a vanished replica left pending.
//!
//! Every archiver replica has a stable consumer name, and a restarted replica flushes its
//! own pending entries first. A replica that never comes back (scaled down, host gone)
//! would leave them pending for ever: never in S3, and a lag that never drains. So
//! whenever its buffer is empty, a lane looks for other consumers of its group that have
//! been silent for `claim_idle_secs` and whose pending entries have all been idle that
//! long, `XCLAIM`s one such consumer's entries and flushes them as one set.
//!
//! A consumer's pending entries are its buffer or exactly one flush (see
//! [`crate::lane`]), so flushing all of them together writes the very keys that
//! consumer's flush wrote or would have written: objects it had stored already are
//! kept (a claimed flush is a recovery flush). `XCLAIM` with a minimum idle time is
//! atomic and resets the idle time, so when two replicas claim at once one gets the
//! entries and the other none.

use std::collections::HashMap;

use redis::streams::StreamId as RedisEntry;
use tokio_util::sync::CancellationToken;

use crate::ArchiveError;
use crate::dataset::Dataset;
use crate::lane::{Conn, FlushKind, Lane};
use crate::metrics::ArchiverMetrics as M;

impl<D: Dataset> Lane<'_, D> {
    /// Claims and flushes the entries of every vanished consumer, one at a time.
    /// Redis errors are logged and leave the claim to the next check.
    pub(crate) async fn claim_and_flush(
        &self,
        conn: &mut impl Conn,
        stop: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let Some(idle) = self.cfg.claim_idle() else { return Ok(()) };
        let idle_ms = idle.as_millis() as usize;
        let consumers = match conn.xinfo_consumers(self.stream(), &self.cfg.group).await {
            Ok(reply) => reply.consumers,
            Err(e) => return self.claim_failed(&e),
        };
        for gone in consumers.iter().filter(|c| c.name != self.cfg.consumer && c.pending > 0 && c.idle >= idle_ms) {
            let pending = match conn
                .xpending_consumer_count(self.stream(), &self.cfg.group, "-", "+", gone.pending, &gone.name)
                .await
            {
                Ok(reply) => reply.ids,
                Err(e) => return self.claim_failed(&e),
            };
            if pending.is_empty() || pending.iter().any(|p| p.last_delivered_ms < idle_ms) {
                continue;
            }
            let ids: Vec<&str> = pending.iter().map(|p| p.id.as_str()).collect();
            let claimed = match conn.xclaim(self.stream(), &self.cfg.group, &self.cfg.consumer, idle_ms, &ids).await {
                Ok(reply) => reply.ids,
                Err(e) => return self.claim_failed(&e),
            };
            if claimed.is_empty() {
                continue;
            }
            if claimed.len() != ids.len() {
                // XCLAIM leaves out entries trimmed from the stream (and drops them
                // from the pending list). They still belong to the flush, as empty
                // entries, so that its first and last ids, and so its keys, are those
                // the silent consumer used.
                tracing::warn!(
                    dataset = D::NAME,
                    consumer = %gone.name,
                    listed = ids.len(),
                    claimed = claimed.len(),
                    "some claimed entries are no longer in the stream"
                );
            }
            tracing::warn!(
                dataset = D::NAME,
                consumer = %gone.name,
                entries = claimed.len(),
                "archiving entries a silent consumer left pending"
            );
            M::add(&self.metrics.claimed_entries, claimed.len() as u64);
            let mut found: HashMap<String, RedisEntry> = claimed.into_iter().map(|e| (e.id.clone(), e)).collect();
            let entries = pending
                .iter()
                .filter_map(|p| {
                    self.decode(
                        found.remove(&p.id).unwrap_or_else(|| RedisEntry { id: p.id.clone(), ..RedisEntry::default() }),
                    )
                })
                .collect();
            self.flush(conn, entries, FlushKind::Recovery, stop).await?;
        }
        Ok(())
    }

    /// Counts and logs a Redis error; the claim is left to the next check.
    fn claim_failed(&self, e: &redis::RedisError) -> Result<(), ArchiveError> {
        M::add(&self.metrics.redis_failures, 1);
        tracing::warn!(dataset = D::NAME, error = %e, "looking for entries to claim failed; will retry");
        Ok(())
    }
}
