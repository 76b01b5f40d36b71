//! Recovery: archiving what this consumer, or a vanished replica, left pending.
//!
//! A lane's consumer delivers its own pending entries first: at start (under a
//! configured name, the flush an earlier run could not finish) and, whenever the buffer
//! is empty, entries whose read reply was lost. A replica that never
//! comes back (scaled down, host gone) would leave its entries pending for ever: never in
//! S3, and a lag that never drains. So whenever its buffer is empty, a lane's consumer
//! also looks for other consumers silent for `claim_idle_secs` with every pending entry
//! idle as long, and `XCLAIM`s all of one such consumer's entries
//! ([`allot_stream::machine`]).
//!
//! A consumer's pending entries are its buffer or exactly one flush (see
//! [`crate::lane`]), so flushing all of them together writes the very keys that
//! consumer's flush wrote or would have written: objects it had stored already are kept
//! (a recovery flush). Entries trimmed from the stream since keep their places, empty,
//! so the flush's first and last ids, and so its keys, do not change.

use allot_stream::{Batch, Source};
use tokio_util::sync::CancellationToken;

use crate::ArchiveError;
use crate::dataset::Dataset;
use crate::lane::{Conn, Consumer, FlushKind, Lane};
use crate::metrics::ArchiverMetrics as M;

impl<D: Dataset> Lane<'_, D> {
    /// Flushes a recovery batch (own pending or claimed entries) as one set.
    pub(crate) async fn recover<C: Conn>(
        &self,
        consumer: &mut Consumer<'_, C>,
        batch: Batch,
        stop: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let entries = batch.entries.len();
        let trimmed = batch.entries.iter().filter(|e| e.is_trimmed()).count();
        match &batch.source {
            Source::Claimed { from } => {
                M::add(&self.metrics.claimed_entries, (entries - trimmed) as u64);
                tracing::warn!(
                    dataset = D::NAME,
                    consumer = %from,
                    entries,
                    "archiving entries a silent consumer left pending"
                );
            }
            _ => tracing::info!(dataset = D::NAME, entries, "archiving entries pending for this consumer"),
        }
        if trimmed > 0 {
            // Delivered to a consumer that never stored them, and gone from the stream:
            // their rows are lost to the archive. They keep their places in the flush (its
            // keys), and are acknowledged with it.
            M::add(&self.metrics.lost_entries, trimmed as u64);
            tracing::error!(
                dataset = D::NAME,
                entries = trimmed,
                "pending entries were trimmed from the stream before they were archived"
            );
        }
        let flush = self.decode_all(batch.entries);
        self.flush(consumer, flush, FlushKind::Recovery, stop).await
    }
}
