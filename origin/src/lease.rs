//! What the rounds see of a lease: a [`Fence`] (an epoch and a validity) kept current
//! by the task that renews it (`crate::shards`, one lease per control shard), and the
//! clock it is measured on.
//!
//! The rounds never ask Redis whether they may act: they read the fence, check it
//! before every publish and save, and stamp their writes with its epoch.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use allot_core::Fence;
use tokio::sync::watch;

/// Milliseconds on a monotonic clock: lease validity must not move with the wall clock.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A pause of the whole process, simulated by the `stall_before_*` failpoints: while it
/// lasts, renewals stop, as they would if the process were stopped. Empty without the
/// `failpoints` feature.
#[derive(Debug, Default)]
pub struct Pause(#[cfg(feature = "failpoints")] std::sync::atomic::AtomicBool);

impl Pause {
    #[cfg(feature = "failpoints")]
    pub fn set(&self, paused: bool) {
        self.0.store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn is_paused(&self) -> bool {
        #[cfg(feature = "failpoints")]
        return self.0.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "failpoints"))]
        false
    }
}

/// The rounds' view of one lease (a control shard's).
#[derive(Debug, Clone)]
pub struct LeaseView(watch::Receiver<Option<Fence>>);

impl LeaseView {
    /// The view of the grants sent on `rx`.
    pub fn new(rx: watch::Receiver<Option<Fence>>) -> Self {
        Self(rx)
    }

    /// The grant in force now, if this origin holds the lease.
    pub fn current(&self) -> Option<Fence> {
        let fence = *self.0.borrow();
        fence.filter(|f| f.is_valid(mono_ms()))
    }

    /// When the grant `fence` runs out, as a tokio instant (a deadline for work done
    /// under it).
    pub fn deadline(fence: &Fence) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(fence.remaining_ms(mono_ms()))
    }
}
