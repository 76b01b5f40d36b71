//! What an open-loop load generator measured, kept so that back-pressure cannot hide
//! latency.
//!
//! Requests are *scheduled* at a constant arrival rate whatever the server does, and
//! each one's latency runs from its scheduled send time, not from when the generator got
//! round to sending it: a server that stalls for a second delays every request scheduled
//! in that second, and all of them show it (no coordinated omission, as in wrk2). A
//! request that got no usable answer — an error status, a body that is not the API's,
//! no answer before its deadline, or never sent because the run ended first — is an
//! error with its reason, never a fast answer. Every scheduled request ends up in
//! exactly one of the two: `scheduled == answered + errors`.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits), whose
//! percentiles are exact to that precision whatever the distribution.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency recorded exactly (longer ones are recorded as this).
const MAX_US: u64 = 3_600 * 1_000_000;

/// One second of the run, by scheduled time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    pub answered: u64,
    pub errors: u64,
    /// The longest latency of an answer in this second, µs.
    pub max_us: u64,
}

/// The accounting of one run.
#[derive(Debug, Clone)]
pub struct Accounting {
    pub scheduled: u64,
    pub answered: u64,
    /// Requests without a usable answer, by reason (`status 503`, `timeout`, …).
    pub errors: BTreeMap<String, u64>,
    /// Scheduled send time → answer, of answered requests, µs.
    pub latency_us: Histogram<u64>,
    /// Scheduled send time → actual send, of every request sent, µs: the generator's
    /// own lag (high when it cannot keep up with its schedule).
    pub send_lag_us: Histogram<u64>,
    /// Per second of the schedule.
    pub seconds: Vec<Second>,
}

impl Default for Accounting {
    fn default() -> Self {
        let histogram = || Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds");
        Self {
            scheduled: 0,
            answered: 0,
            errors: BTreeMap::new(),
            latency_us: histogram(),
            send_lag_us: histogram(),
            seconds: Vec::new(),
        }
    }
}

/// How one scheduled request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A usable answer, `latency` after the scheduled send time.
    Answered { latency: Duration },
    /// No usable answer, and why.
    Failed { reason: String },
}

impl Accounting {
    /// Records the request scheduled `at` (since the start of the schedule), sent
    /// `send_lag` after that (`None`: never sent), and how it ended.
    pub fn record(&mut self, at: Duration, send_lag: Option<Duration>, outcome: Outcome) {
        self.scheduled += 1;
        if let Some(lag) = send_lag {
            self.send_lag_us.saturating_record(micros(lag));
        }
        let i = at.as_secs() as usize;
        if self.seconds.len() <= i {
            self.seconds.resize(i + 1, Second::default());
        }
        let second = &mut self.seconds[i];
        match outcome {
            Outcome::Answered { latency } => {
                let us = micros(latency);
                self.answered += 1;
                self.latency_us.saturating_record(us);
                second.answered += 1;
                second.max_us = second.max_us.max(us);
            }
            Outcome::Failed { reason } => {
                *self.errors.entry(reason).or_default() += 1;
                second.errors += 1;
            }
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another run's accounting (e.g. several generators' over the same schedule).
    pub fn merge(&mut self, o: &Accounting) {
        self.scheduled += o.scheduled;
        self.answered += o.answered;
        for (reason, n) in &o.errors {
            *self.errors.entry(reason.clone()).or_default() += n;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&o.latency_us);
        let _ = self.send_lag_us.add(&o.send_lag_us);
        if self.seconds.len() < o.seconds.len() {
            self.seconds.resize(o.seconds.len(), Second::default());
        }
        for (a, b) in self.seconds.iter_mut().zip(&o.seconds) {
            a.answered += b.answered;
            a.errors += b.errors;
            a.max_us = a.max_us.max(b.max_us);
        }
    }

    /// The figures, over a schedule that lasted `seconds`.
    pub fn summary(&self, seconds: f64) -> Summary {
        let ms = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e3 };
        let per_s = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
        Summary {
            seconds,
            scheduled: self.scheduled,
            answered: self.answered,
            errors: self.error_count(),
            error_reasons: self.errors.clone(),
            scheduled_per_sec: per_s(self.scheduled),
            answered_per_sec: per_s(self.answered),
            latency_ms_p50: ms(&self.latency_us, 0.50),
            latency_ms_p99: ms(&self.latency_us, 0.99),
            latency_ms_p999: ms(&self.latency_us, 0.999),
            latency_ms_max: if self.latency_us.is_empty() { 0.0 } else { self.latency_us.max() as f64 / 1e3 },
            send_lag_ms_p99: ms(&self.send_lag_us, 0.99),
            send_lag_ms_max: if self.send_lag_us.is_empty() { 0.0 } else { self.send_lag_us.max() as f64 / 1e3 },
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_US)
}

/// A run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seconds: f64,
    pub scheduled: u64,
    pub answered: u64,
    pub errors: u64,
    pub error_reasons: BTreeMap<String, u64>,
    pub scheduled_per_sec: f64,
    pub answered_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub send_lag_ms_p99: f64,
    pub send_lag_ms_max: f64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_stall_shows_in_every_request_scheduled_during_it() {
        // 1,000 requests/s for 2 s; the server stalls for the first 500 ms of the second
        // second, then answers the backlog at once. A closed-loop client would have
        // waited instead of sending, and seen one slow request per connection.
        let mut a = Accounting::default();
        for i in 0..2_000u64 {
            let at = ms(i);
            let answered_at = if (1_000..1_500).contains(&i) { ms(1_500) } else { at + ms(1) };
            a.record(at, Some(Duration::ZERO), Outcome::Answered { latency: answered_at - at });
        }
        let s = a.summary(2.0);
        assert_eq!((s.scheduled, s.answered, s.errors), (2_000, 2_000, 0));
        // 500 of 2,000 (25 %) waited 1–500 ms: the p99 is in the stall, not at 1 ms.
        assert!(s.latency_ms_p99 > 400.0 && s.latency_ms_max >= 499.0, "{s:?}");
        assert!((s.latency_ms_p50 - 1.0).abs() < 0.01, "{s:?}");
        assert_eq!(a.seconds[1].max_us, 500_000);
    }

    #[test]
    fn requests_without_an_answer_are_errors_not_fast_answers() {
        let mut a = Accounting::default();
        a.record(ms(0), Some(ms(0)), Outcome::Answered { latency: ms(2) });
        a.record(ms(1), Some(ms(0)), Outcome::Failed { reason: "timeout".into() });
        a.record(ms(2), Some(ms(0)), Outcome::Failed { reason: "status 503".into() });
        a.record(ms(3), None, Outcome::Failed { reason: "not sent".into() });
        let s = a.summary(1.0);
        assert_eq!((s.scheduled, s.answered, s.errors), (4, 1, 3));
        assert_eq!(s.scheduled, s.answered + s.errors);
        // Only the answer is in the latency histogram; the never-sent one has no lag.
        assert_eq!(a.latency_us.len(), 1);
        assert_eq!(a.send_lag_us.len(), 3);
        assert_eq!(s.error_reasons["timeout"], 1);
    }

    #[test]
    fn merged_accountings_add_up() {
        let mut a = Accounting::default();
        let mut b = Accounting::default();
        a.record(ms(10), Some(ms(1)), Outcome::Answered { latency: ms(5) });
        b.record(ms(1_500), Some(ms(1)), Outcome::Answered { latency: ms(50) });
        b.record(ms(1_600), None, Outcome::Failed { reason: "not sent".into() });
        a.merge(&b);
        let s = a.summary(2.0);
        assert_eq!((s.scheduled, s.answered, s.errors), (3, 2, 1));
        assert_eq!(a.seconds.len(), 2);
        assert!((s.latency_ms_max - 50.0).abs() < 0.1, "{s:?}");
    }
}
