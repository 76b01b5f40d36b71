//! Load shedding: the ingest's budget of body bytes held in memory at once.
//!
//! Every `POST /v1/events` buffers its body whole (its signature covers every byte), so
//! without a budget the origin's memory is `http.max_connections × max_body_bytes`:
//! 10 GB at the defaults, enough for a client to exhaust it with slow 1 MiB bodies. A
//! body holds room for the bytes it has *sent* ([`BodyBudget::read`]), taken as they
//! arrive; when the budget is spent it is answered `503 overloaded` with `Retry-After`.
//! A body whose declared length does not fit in what is free is answered so at once,
//! without reading a byte. The edge keeps the batch and sends the same signed bytes
//! again after its backoff, so shedding delays events but loses none, and the body
//! stored later is stored once.
//!
//! Room is charged for bytes received, not for the length a request declares: anyone
//! can open a connection and declare a megabyte under a well-formed signature header
//! (its MAC is checked only once the body is in), and sixty-four such connections
//! sending nothing would otherwise hold the whole budget for the body deadline and
//! shed every edge's batch. Charged by what arrives, they hold what they sent.
//!
//! A semaphore rather than a `tower` load-shed layer: the room depends on the body's
//! bytes, which a concurrency limit cannot express.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The budget is counted in KiB, so a permit count can never overflow.
const UNIT: usize = 1024;

/// Body bytes the ingest may hold at once.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    units: usize,
    max_body_bytes: usize,
}

impl BodyBudget {
    /// `total` bytes of bodies at once, each at most `max_body_bytes`.
    pub fn new(total: usize, max_body_bytes: usize) -> Self {
        let units = total.div_ceil(UNIT);
        Self { permits: Arc::new(Semaphore::new(units)), units, max_body_bytes }
    }

    /// Reads `body` (at most `max_body_bytes`, by `deadline`), holding room for its
    /// bytes as they arrive; the room is held until the permit is dropped. `Overloaded`
    /// as soon as the budget cannot hold what arrived (or, before a byte is read, the
    /// `declared` length); `PayloadTooLarge` past the largest body; `Timeout` past
    /// `deadline`.
    pub async fn read(
        &self,
        mut body: axum::body::Body,
        declared: Option<usize>,
        deadline: std::time::Duration,
    ) -> Result<(axum::body::Bytes, OwnedSemaphorePermit), ApiError> {
        use http_body_util::BodyExt;
        let limit = self.max_body_bytes;
        let overloaded = || ApiError::Overloaded { retry_after_secs: 1 };
        if declared.is_some_and(|n| n.min(limit).div_ceil(UNIT) > self.permits.available_permits()) {
            return Err(overloaded());
        }
        let mut held = self.permits.clone().try_acquire_owned().map_err(|_| overloaded())?;
        let mut buf = Vec::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ApiError::body_read(&e, limit))?;
                let Ok(data) = frame.into_data() else { continue };
                if buf.len() + data.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                buf.extend_from_slice(&data);
                let units = buf.len().div_ceil(UNIT).max(1);
                if let Some(more) = units.checked_sub(held.num_permits()).filter(|n| *n > 0) {
                    let more = u32::try_from(more).map_err(|_| overloaded())?;
                    held.merge(self.permits.clone().try_acquire_many_owned(more).map_err(|_| overloaded())?);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(Ok(())) => Ok((buf.into(), held)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::Timeout { after_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX) }),
        }
    }

    /// Bytes of bodies reserved now, in whole KiB.
    pub fn in_use(&self) -> usize {
        self.units.saturating_sub(self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;

    use super::*;

    const LONG: Duration = Duration::from_secs(5);

    fn chunks(sizes: &[usize]) -> Body {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = sizes.iter().map(|n| Ok(vec![b'x'; *n])).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    /// A body that sends `sent` bytes and then nothing more.
    fn stalled(sent: usize) -> Body {
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(vec![b'x'; sent])]);
        Body::from_stream(futures_util::StreamExt::chain(first, futures_util::stream::pending()))
    }

    #[tokio::test]
    async fn bodies_hold_room_for_what_they_sent_and_give_it_back() {
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let (bytes, a) = budget.read(chunks(&[UNIT, 30 * UNIT, 19 * UNIT]), None, LONG).await.unwrap();
        assert_eq!(bytes.len(), 50 * UNIT);
        assert_eq!(budget.in_use(), 50 * UNIT);
        let too_much = budget.read(chunks(&[40 * UNIT, 11 * UNIT]), None, LONG).await;
        assert!(matches!(too_much, Err(ApiError::Overloaded { .. })), "{too_much:?}");
        assert_eq!(budget.in_use(), 50 * UNIT, "a shed body gives back what it held");
        let (_, b) = budget.read(chunks(&[50 * UNIT]), None, LONG).await.expect("exactly the rest");
        let one_byte = budget.read(chunks(&[1]), None, LONG).await;
        assert!(one_byte.is_err(), "a one-byte body still takes a unit");
        drop(a);
        assert!(budget.read(chunks(&[10 * UNIT]), Some(10 * UNIT), LONG).await.is_ok());
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_declared_length_that_does_not_fit_is_shed_unread() {
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let (_, _held) = budget.read(chunks(&[50 * UNIT]), None, LONG).await.unwrap();
        let r = budget.read(chunks(&[]), Some(51 * UNIT), LONG).await;
        assert!(matches!(r, Err(ApiError::Overloaded { .. })), "{r:?}");
        assert!(budget.read(chunks(&[10]), Some(50 * UNIT), LONG).await.is_ok(), "it fits");
    }

    /// What a client declares costs it nothing it did not send: connections declaring
    /// the largest bodies and sending a byte hold a unit each, not the budget.
    #[tokio::test]
    async fn stalled_bodies_hold_only_what_they_sent_until_the_deadline() {
        const SHORT: Duration = Duration::from_millis(300);
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let stalls: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn({
                    let budget = budget.clone();
                    async move { budget.read(stalled(1), Some(60 * UNIT), SHORT).await.map(|_| ()) }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(budget.in_use(), 4 * UNIT);
        let (_, edge) = budget.read(chunks(&[60 * UNIT]), Some(60 * UNIT), LONG).await.expect("room");
        drop(edge);
        for stall in stalls {
            let r = stall.await.unwrap();
            assert!(matches!(r, Err(ApiError::Timeout { after_ms: 300 })), "{r:?}");
        }
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_as_it_arrives() {
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let r = budget.read(chunks(&[30 * UNIT, 30 * UNIT, 1]), None, LONG).await;
        assert!(matches!(r, Err(ApiError::PayloadTooLarge { .. })), "{r:?}");
        assert_eq!(budget.in_use(), 0);
    }
}
