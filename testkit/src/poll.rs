//! Waiting for something to become true: the one polling loop of every test.
//!
//! The system under test is a set of processes that converge in their own time (an
//! aggregator catching up, an archiver flushing, a controller publishing), so a test
//! states the outcome and polls for it rather than sleeping a guessed amount. A closure
//! returns `true`, or `Some(value)`, once the outcome holds; the value is often what the
//! test goes on to assert on.

use std::time::{Duration, Instant};

/// What a polled closure returns: whether the outcome holds, and with what value.
pub trait Outcome {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// How long to wait between attempts: short next to every timing under test.
const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` until the outcome holds, for at most `timeout`; `None` if it never did.
pub async fn until<O: Outcome>(timeout: Duration, mut f: impl AsyncFnMut() -> O) -> Option<O::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await.ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// [`until`] for synchronous code (server start-up, process exits).
pub fn until_blocking<O: Outcome>(timeout: Duration, mut f: impl FnMut() -> O) -> Option<O::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Polls `f` until the outcome holds; panics with `what` after `secs`.
pub async fn eventually<O: Outcome>(secs: u64, what: &str, f: impl AsyncFnMut() -> O) -> O::Value {
    until(Duration::from_secs(secs), f).await.unwrap_or_else(|| panic!("timed out after {secs} s waiting for {what}"))
}

/// [`eventually`] for synchronous code.
pub fn eventually_blocking<O: Outcome>(secs: u64, what: &str, f: impl FnMut() -> O) -> O::Value {
    until_blocking(Duration::from_secs(secs), f)
        .unwrap_or_else(|| panic!("timed out after {secs} s waiting for {what}"))
}

/// Waits, if needed, until the wall clock is between `earliest` and `latest` into a
/// period of `period` (all in ms), so a test's events land in the window it reads.
/// Windows follow the wall clock, and a test that starts near a boundary would see its
/// events split over two windows, or the window it reads not yet complete.
pub async fn into_period(period: u64, earliest: u64, latest: u64) {
    let into = crate::events::now_ms() % period;
    let wait = if into < earliest {
        earliest - into
    } else if into > latest {
        period - into + earliest
    } else {
        0
    };
    tokio::time::sleep(Duration::from_millis(wait)).await;
}
