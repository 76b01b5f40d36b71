//! Waiting out retries under the core's [`RetryPolicy`], in tokio, giving way to a stop.
//!
//! The policy (capped exponential backoff, equal jitter) is `allot_core::retry`; what is
//! here is what the core must not do: draw the random numbers and sleep. The random
//! source is seeded from the per-process random keys of std's `RandomState` (the OS's
//! entropy, already drawn for every `HashMap`), so replicas that fail together retry
//! apart, without another dependency for entropy.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use allot_core::retry::{Backoff, RetryPolicy};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::Stopped;

/// Uniform random numbers for the jitter.
#[derive(Debug, Clone)]
pub struct Jitter(SmallRng);

impl Jitter {
    pub fn new() -> Self {
        Self(SmallRng::seed_from_u64(RandomState::new().hash_one(std::process::id())))
    }

    /// A uniform random 32-bit word (names unique to a process).
    pub fn word(&mut self) -> u32 {
        self.0.random()
    }

    /// A uniform random number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.random()
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

/// The retries of one operation that is retried until it succeeds or the process stops.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    jitter: Jitter,
}

impl Retry {
    /// A policy with `max_retries` keeps waiting at its cap once they are used up: the
    /// operations retried here have no alternative to succeeding.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { backoff: policy.start(), jitter: Jitter::new() }
    }

    /// Waits before the next attempt; `Err(Stopped)` as soon as `stop` is cancelled.
    pub async fn wait(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let delay = self.next_delay();
        sleep_until(Instant::now() + delay, stop).await
    }

    /// The wait before the next attempt (and counts it).
    pub fn next_delay(&mut self) -> Duration {
        let unit = self.jitter.unit();
        self.backoff.next(unit).unwrap_or(self.backoff.policy().max)
    }

    /// After a success: the next wait is the shortest again.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }
}

/// Sleeps until `until`; `Err(Stopped)` as soon as `stop` is cancelled.
pub async fn sleep_until(until: Instant, stop: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        _ = stop.cancelled() => Err(Stopped),
        _ = tokio::time::sleep_until(until.into()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_in_the_unit_interval_and_differ_between_sources() {
        let (mut a, mut b) = (Jitter::new(), Jitter::new());
        let xs: Vec<f64> = (0..100).map(|_| a.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let ys: Vec<f64> = (0..100).map(|_| b.unit()).collect();
        assert_ne!(xs, ys, "each source has its own seed");
    }

    #[test]
    fn delays_follow_the_policy() {
        let ms = Duration::from_millis(1);
        let mut r = Retry::new(RetryPolicy::new(100 * ms, 400 * ms));
        let delays: Vec<Duration> = (0..4).map(|_| r.next_delay()).collect();
        for (d, ceiling) in delays.iter().zip([100, 200, 400, 400]) {
            assert!(*d >= ceiling * ms / 2 && *d <= ceiling * ms, "{d:?} for a ceiling of {ceiling} ms");
        }
        r.reset();
        assert!(r.next_delay() <= 100 * ms);
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let stop = CancellationToken::new();
        stop.cancel();
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(sleep_until(far, &stop).await, Err(Stopped));
    }
}
