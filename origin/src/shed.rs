//! Load shedding: the ingest's budget of body bytes held in memory at once.
//!
//! Every `POST /v1/events` buffers its body whole (its signature covers every byte), so
//! without a budget the origin's memory is `http.max_connections × max_body_bytes`:
//! 10 GB at the defaults, enough for a client to exhaust it with slow 1 MiB bodies. A
//! body reserves its declared length (or the largest body allowed when it declares
//! none) *before* it is read; when the budget is spent it is answered `503 overloaded`
//! with `Retry-After` at once, without reading a byte. The edge keeps the batch and sends
//! the same signed bytes again after its backoff, so shedding delays events but loses
//! none, and the body stored later is stored once.
//!
//! A semaphore rather than a `tower` load-shed layer: the reservation depends on the
//! request's declared length, which a concurrency limit cannot express.

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

    /// Reserves room for a body declaring `declared` bytes (none: the largest allowed),
    /// held until the permit is dropped; `Overloaded` when the budget is spent.
    pub fn reserve(&self, declared: Option<usize>) -> Result<OwnedSemaphorePermit, ApiError> {
        let bytes = declared.unwrap_or(self.max_body_bytes).min(self.max_body_bytes);
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        self.permits.clone().try_acquire_many_owned(units).map_err(|_| ApiError::Overloaded { retry_after_secs: 1 })
    }

    /// Bytes of bodies reserved now, in whole KiB.
    pub fn in_use(&self) -> usize {
        self.units.saturating_sub(self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_reserve_their_declared_length_and_give_it_back() {
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let a = budget.reserve(Some(50 * UNIT)).expect("room for the first");
        assert!(matches!(budget.reserve(Some(51 * UNIT)), Err(ApiError::Overloaded { .. })));
        let b = budget.reserve(Some(50 * UNIT)).expect("exactly the rest");
        assert!(budget.reserve(Some(1)).is_err(), "a one-byte body still takes a unit");
        drop(a);
        assert!(budget.reserve(Some(10 * UNIT)).is_ok());
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_body_without_a_length_reserves_the_largest_allowed() {
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let _chunked = budget.reserve(None).expect("room");
        assert_eq!(budget.in_use(), 60 * UNIT);
        assert!(budget.reserve(Some(41 * UNIT)).is_err());
        // A declared length above the limit is refused before (413); here it is capped.
        let budget = BodyBudget::new(100 * UNIT, 60 * UNIT);
        let _big = budget.reserve(Some(usize::MAX)).expect("capped at the largest body");
        assert_eq!(budget.in_use(), 60 * UNIT);
    }
}
