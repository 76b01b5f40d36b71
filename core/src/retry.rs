//! The one retry policy: capped exponential backoff with jitter.
//!
//! Every loop that waits on something that failed (Redis, S3, the KV API, Athena, the
//! origin seen from the edge) asks this policy how long to wait. Jitter matters more than
//! the curve: after an outage every replica and every isolate fails at the same moment,
//! and without jitter they all come back at the same moment too, in lockstep, for as long
//! as the outage lasts.
//!
//! Sans-io like the rest of the core: the caller supplies the uniform random number and
//! does the sleeping, so the edge (Wasm, no tokio) and the origin share the policy, and
//! tests check the delays without a clock.

use std::time::Duration;

/// How retries of one kind of operation are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry's ceiling; each later one doubles it.
    pub initial: Duration,
    /// No ceiling grows beyond this.
    pub max: Duration,
    /// Give up after this many retries (`None`: retry until stopped).
    pub max_retries: Option<u32>,
}

impl RetryPolicy {
    /// Retries until stopped, from `initial` doubling to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, max_retries: None }
    }

    /// At most `n` retries.
    pub const fn with_max_retries(self, n: u32) -> Self {
        Self { max_retries: Some(n), ..self }
    }

    /// The ceiling of retry `attempt` (0 for the first retry): `initial · 2^attempt`,
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max).max(self.initial.min(self.max))
    }

    /// The wait before retry `attempt`, or `None` once the retries are used up. `unit` is
    /// a uniform random number in `[0, 1)`; the wait is uniform between half the ceiling
    /// and the ceiling ("equal jitter"), so retries spread out but never hammer at once.
    pub fn delay(&self, attempt: u32, unit: f64) -> Option<Duration> {
        if self.max_retries.is_some_and(|n| attempt >= n) {
            return None;
        }
        let ceiling = self.ceiling(attempt);
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        Some(ceiling.mul_f64(0.5 + 0.5 * unit))
    }

    /// A fresh sequence of retries under this policy.
    pub fn start(self) -> Backoff {
        Backoff { policy: self, attempt: 0 }
    }
}

/// The retries of one operation so far: [`Backoff::next`] after each failure,
/// [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    /// The wait before the next retry, or `None` to give up.
    pub fn next(&mut self, unit: f64) -> Option<Duration> {
        let d = self.policy.delay(self.attempt, unit)?;
        self.attempt = self.attempt.saturating_add(1);
        Some(d)
    }

    /// Forgets the failures: the next wait is the shortest again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Retries handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = RetryPolicy::new(100 * MS, 1_000 * MS);
        let ceilings: Vec<u128> = (0..6).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(u32::MAX), 1_000 * MS, "no overflow at absurd attempts");
    }

    #[test]
    fn jitter_spans_half_the_ceiling_to_the_ceiling() {
        let p = RetryPolicy::new(100 * MS, 1_000 * MS);
        assert_eq!(p.delay(2, 0.0), Some(200 * MS));
        assert_eq!(p.delay(2, 0.5), Some(300 * MS));
        assert!(p.delay(2, 0.999_999).unwrap() < 400 * MS);
        assert_eq!(p.delay(2, f64::NAN), Some(200 * MS), "a bad random number is not a panic");
        assert_eq!(p.delay(2, 7.0), Some(400 * MS));
    }

    #[test]
    fn a_sequence_gives_up_and_resets() {
        let mut b = RetryPolicy::new(10 * MS, 100 * MS).with_max_retries(2).start();
        assert_eq!(b.next(0.0), Some(5 * MS));
        assert_eq!(b.next(0.0), Some(10 * MS));
        assert_eq!(b.next(0.0), None);
        assert_eq!(b.attempts(), 2);
        b.reset();
        assert_eq!(b.next(1.0), Some(10 * MS));
    }
}
