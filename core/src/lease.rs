//! The control lease, as a state machine: when to ask Redis, and what a reply means.
//!
//! Only one origin replica may run the control loop, and a replica that *believes* it
//! leads must be right for as long as it acts on that belief. Two rules make that hold
//! even when a round, a publish or the network stalls:
//!
//! - **Validity is counted from the request, not the reply.** A grant is valid until
//!   `sent + ttl − margin`, where `sent` is when the request left: Redis may have
//!   started the TTL any time after that, never before. The margin covers clock-rate
//!   drift between this process and Redis. A reply that arrives late therefore grants
//!   little or nothing, and a holder whose renewals fail steps down on its own clock
//!   before Redis hands the lease to someone else.
//! - **Every grant carries an epoch**, a number Redis increments each time the lease
//!   changes hands. The holder stamps its writes with it, and the placement's keys
//!   refuse a write from an epoch older than one they have seen (*fencing*), so a
//!   holder that stalled past its validity and wakes up still believing cannot undo
//!   its successor's work.
//!
//! Renewal runs on its own schedule (a third of the TTL), concurrently with rounds, so
//! a long round does not let the lease lapse. The shell (`origin/src/lease.rs`) runs the
//! Redis script this asks for and feeds the replies back; the time is a monotonic
//! millisecond count it supplies.

/// Timing of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long Redis keeps a grant (`PX`).
    pub ttl_ms: u64,
    /// Time taken off every grant for clock-rate drift and scheduling delay.
    pub margin_ms: u64,
}

impl LeaseConfig {
    /// A lease of `ttl_ms`, with a tenth of it as the margin.
    pub fn new(ttl_ms: u64) -> Self {
        Self { ttl_ms, margin_ms: ttl_ms / 10 }
    }

    /// How often to ask: three attempts fit in one TTL.
    pub fn renew_every_ms(&self) -> u64 {
        (self.ttl_ms / 3).max(1)
    }
}

/// The right to act as the controller, and the epoch to stamp writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub epoch: u64,
    /// The grant is valid strictly before this time (the shell's monotonic ms).
    pub valid_until_ms: u64,
}

impl Fence {
    /// Whether the holder may still act at `now_ms`.
    pub fn is_valid(&self, now_ms: u64) -> bool {
        now_ms < self.valid_until_ms
    }

    /// How long it may still act, from `now_ms`.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.valid_until_ms.saturating_sub(now_ms)
    }
}

/// What Redis answered to "take or renew the lease for me".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// Held by us, under this epoch (new or renewed).
    Granted { epoch: u64 },
    /// Someone else holds it.
    Refused,
    /// No answer (timeout, connection lost, script error).
    Failed,
}

/// A change the shell reports (logs, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// This replica now leads, under a new epoch.
    Acquired { epoch: u64 },
    /// This replica no longer leads.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Idle,
    /// A request is out, sent at this time.
    InFlight {
        sent_ms: u64,
    },
}

/// One replica's view of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    config: LeaseConfig,
    fence: Option<Fence>,
    request: Request,
    next_ask_ms: u64,
}

impl Lease {
    pub fn new(config: LeaseConfig) -> Self {
        Self { config, fence: None, request: Request::Idle, next_ask_ms: 0 }
    }

    /// Whether to ask Redis now; if so, the request counts as sent at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        if self.request != Request::Idle || now_ms < self.next_ask_ms {
            return false;
        }
        self.request = Request::InFlight { sent_ms: now_ms };
        true
    }

    /// Feeds the answer to the request [`Lease::poll`] sent; a reply without a request
    /// out is ignored.
    pub fn on_reply(&mut self, now_ms: u64, reply: LeaseReply) -> Option<Transition> {
        let Request::InFlight { sent_ms } = self.request else { return None };
        self.request = Request::Idle;
        self.next_ask_ms = sent_ms.saturating_add(self.config.renew_every_ms()).max(now_ms);
        // Compared with what we held, expired or not: a lapse with no new epoch means
        // nobody else held the lease in between.
        let before = self.fence;
        self.fence = match reply {
            LeaseReply::Granted { epoch } => {
                let valid_until_ms = (sent_ms + self.config.ttl_ms).saturating_sub(self.config.margin_ms);
                Some(Fence { epoch, valid_until_ms }).filter(|f| f.is_valid(now_ms))
            }
            LeaseReply::Refused => None,
            // Keep what we had; it runs out on its own.
            LeaseReply::Failed => self.fence,
        };
        match (before, self.current(now_ms)) {
            (Some(b), Some(a)) if b.epoch != a.epoch => Some(Transition::Acquired { epoch: a.epoch }),
            (None, Some(a)) => Some(Transition::Acquired { epoch: a.epoch }),
            (Some(_), None) => Some(Transition::Lost),
            _ => None,
        }
    }

    /// The grant in force at `now_ms`, if any.
    pub fn current(&self, now_ms: u64) -> Option<Fence> {
        self.fence.filter(|f| f.is_valid(now_ms))
    }

    /// Reports a grant that ran out without a reply saying so (renewals failing or
    /// stuck): call on every wake-up.
    pub fn expire(&mut self, now_ms: u64) -> Option<Transition> {
        match self.fence {
            Some(f) if !f.is_valid(now_ms) => {
                self.fence = None;
                Some(Transition::Lost)
            }
            _ => None,
        }
    }

    /// When the shell should wake next: the next ask, or the grant running out.
    pub fn next_wakeup_ms(&self) -> u64 {
        let expiry = self.fence.map_or(u64::MAX, |f| f.valid_until_ms);
        match self.request {
            Request::Idle => self.next_ask_ms.min(expiry),
            Request::InFlight { .. } => expiry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 3_000;

    fn lease() -> Lease {
        Lease::new(LeaseConfig::new(TTL))
    }

    #[test]
    fn a_grant_is_valid_from_when_it_was_asked_less_the_margin() {
        let mut l = lease();
        assert!(l.poll(1_000));
        assert!(!l.poll(1_001), "one request at a time");
        // The reply is slow: the validity still counts from 1,000.
        assert_eq!(l.on_reply(1_800, LeaseReply::Granted { epoch: 7 }), Some(Transition::Acquired { epoch: 7 }));
        assert_eq!(l.current(1_800), Some(Fence { epoch: 7, valid_until_ms: 1_000 + TTL - TTL / 10 }));
        assert_eq!(l.current(3_700), None);
        assert_eq!(l.current(3_699).map(|f| f.remaining_ms(3_699)), Some(1));
    }

    #[test]
    fn renewal_is_asked_every_third_of_the_ttl() {
        let mut l = lease();
        assert!(l.poll(0));
        l.on_reply(10, LeaseReply::Granted { epoch: 1 });
        assert_eq!(l.next_wakeup_ms(), 1_000);
        assert!(!l.poll(999));
        assert!(l.poll(1_000));
        assert_eq!(l.on_reply(1_020, LeaseReply::Granted { epoch: 1 }), None, "a renewal is not a new lead");
        assert_eq!(l.current(3_500).map(|f| f.epoch), Some(1));
    }

    #[test]
    fn failing_renewals_step_down_on_our_own_clock() {
        let mut l = lease();
        assert!(l.poll(0));
        l.on_reply(5, LeaseReply::Granted { epoch: 3 });
        for t in [1_000, 2_000] {
            assert!(l.poll(t));
            assert_eq!(l.on_reply(t + 100, LeaseReply::Failed), None);
        }
        assert!(l.current(2_699).is_some());
        assert_eq!(l.next_wakeup_ms(), 2_700, "wake up when the grant runs out");
        assert_eq!(l.expire(2_700), Some(Transition::Lost));
        assert_eq!(l.current(2_700), None);
        assert_eq!(l.expire(2_800), None, "lost once");
    }

    #[test]
    fn a_stuck_request_does_not_extend_the_grant() {
        let mut l = lease();
        assert!(l.poll(0));
        l.on_reply(5, LeaseReply::Granted { epoch: 3 });
        assert!(l.poll(1_000));
        // No reply for a long time: no new request either, and the grant runs out.
        assert!(!l.poll(2_000));
        assert_eq!(l.next_wakeup_ms(), 2_700);
        assert_eq!(l.expire(2_700), Some(Transition::Lost));
        // The reply comes at last, a grant asked at 1,000 that ended at 3,700.
        assert_eq!(l.on_reply(3_000, LeaseReply::Granted { epoch: 3 }), Some(Transition::Acquired { epoch: 3 }));
        assert_eq!(l.current(3_699).map(|f| f.valid_until_ms), Some(3_700));
        // Later than its validity it grants nothing.
        assert!(l.poll(3_700));
        assert!(!l.poll(3_700));
        assert_eq!(l.on_reply(7_000, LeaseReply::Granted { epoch: 3 }), Some(Transition::Lost));
    }

    #[test]
    fn refusal_and_a_new_epoch_are_transitions() {
        let mut l = lease();
        assert!(l.poll(0));
        assert_eq!(l.on_reply(1, LeaseReply::Refused), None, "followers stay followers");
        assert!(l.poll(1_000));
        assert_eq!(l.on_reply(1_001, LeaseReply::Granted { epoch: 4 }), Some(Transition::Acquired { epoch: 4 }));
        assert!(l.poll(2_000));
        // Our key expired and we got it back under a new epoch: writes must use it.
        assert_eq!(l.on_reply(2_001, LeaseReply::Granted { epoch: 6 }), Some(Transition::Acquired { epoch: 6 }));
        assert!(l.poll(3_000));
        assert_eq!(l.on_reply(3_001, LeaseReply::Refused), Some(Transition::Lost));
        assert_eq!(l.current(3_001), None);
    }

    #[test]
    fn a_reply_without_a_request_is_ignored() {
        let mut l = lease();
        assert_eq!(l.on_reply(0, LeaseReply::Granted { epoch: 1 }), None);
        assert_eq!(l.current(0), None);
    }
}
