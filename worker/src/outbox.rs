//! The edge's event outbox as a plain state machine: what waits, what is due, what to
//! do with a send's result. No JS, no clock, no randomness of its own: the shell
//! ([`crate::forward`]) feeds it the time, the random numbers and the sends' results,
//! and does the sending. Tested natively with a fake clock.
//!
//! Events wait unsealed until [`Settings::batch_max`] of them are there, their body
//! would pass [`Settings::batch_max_bytes`], or the oldest is [`Settings::batch_age_ms`]
//! old; they are then *sealed* into a batch: serialised and signed once. The byte bound
//! keeps every body under the origin's (`ingest.max_body_bytes`), which refuses a larger
//! one whole (`413`): a thousand events naming many long campaign ids would pass it.
//!
//! A sealed batch keeps its bytes and its signature until the origin acknowledges it,
//! however often it is sent: the origin remembers the bodies it stored (by signature
//! time and bytes), so a batch whose answer was lost, re-sent, is stored once.
//! Re-signing a batch would make it a new body, stored twice.
//!
//! A send that fails for a reason that may pass (timeout, connection refused, 429, 5xx)
//! puts the batch back, and the whole outbox waits under [`RETRY`], the core's capped
//! backoff: when the origin is down, every batch would fail alike, so one probe at a
//! time is enough, and the first success sends everything that is waiting, at most
//! [`Settings::max_in_flight`] batches at once. A batch the origin refuses (any other
//! 4xx) is counted `failed` and let go: sending it again cannot help.
//!
//! What bounds the outbox:
//! - **bytes**: sealed batches hold at most [`Settings::max_bytes`]; while they hold
//!   more, new events are refused and counted `dropped`. Refusing the newest keeps the
//!   oldest, which are the closest to being delivered.
//! - **age**: a batch is sent only while its signature is younger than
//!   [`Settings::max_age_ms`], which must stay under the origin's signature window
//!   (`ingest.max_skew_secs`): an older one would be refused as stale, and re-signing
//!   it could store it twice (the origin's memory of stored bodies is keyed by the
//!   signature's time and the bytes). It is counted `expired` and let go. The outbox
//!   rides out an origin outage as long as this age, less the batching delay.
//!
//! Every loss is counted on `/healthz`, logged, and reported to the origin with the next
//! batch sealed ([`allot_core::event::DROPPED_HEADER`]): nothing leaves the outbox
//! silently.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use allot_core::{Event, EventBatch, RetryPolicy, signature};

/// Retries of a failed send: from half a second, doubling to 30 s, until the batch is
/// acknowledged or expires. The jitter spreads isolates that failed together.
pub const RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(30));

/// How the outbox batches and what bounds it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ingest key batches are signed with.
    pub key: Vec<u8>,
    /// Seal at this many events.
    pub batch_max: usize,
    /// … or before its body would pass this many bytes (one event alone may).
    pub batch_max_bytes: usize,
    /// … or when the oldest unsealed event is this old.
    pub batch_age_ms: u64,
    /// Sealed batches hold at most this many bytes of bodies.
    pub max_bytes: usize,
    /// A batch older than this is not sent any more.
    pub max_age_ms: u64,
    /// Sends at once at most.
    pub max_in_flight: usize,
    /// A send not settled within this long is presumed lost (its task was cancelled)
    /// and the batch is due again.
    pub send_timeout_ms: u64,
}

/// The outbox's bound by default: 8 MiB of bodies, about 25,000 events (a minute of a
/// busy isolate), well inside an isolate's 128 MB.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// A batch is given up 270 s after it was signed by default (`EVENT_MAX_AGE_SECS`):
/// under a 300 s signature window at the origin (`ingest.max_skew_secs`), with room
/// for clock skew. An origin with a shorter window refuses older batches as stale
/// (`401`), which the outbox counts as `failed`.
pub const MAX_AGE_MS: u64 = 270_000;
/// A batch's body is kept under this many bytes by default (`EVENT_BATCH_MAX_BYTES`): a
/// quarter of the origin's default `ingest.max_body_bytes`.
pub const BATCH_MAX_BYTES: usize = 256 * 1024;
/// A Worker invocation may hold six connections at once; the outbox takes four.
pub const MAX_IN_FLIGHT: usize = 4;

/// What happened to events in this isolate; served on `/healthz`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Events accepted into the outbox.
    pub queued: u64,
    /// Events the origin acknowledged.
    pub sent: u64,
    /// Events in batches the origin refused (4xx other than 429).
    pub failed: u64,
    /// Events refused before sending (no origin configured, outbox full).
    pub dropped: u64,
    /// Events in batches given up because they became too old to send.
    pub expired: u64,
    /// Events waiting now (sealed or not).
    pub waiting: u64,
    /// Bytes of sealed batches waiting now.
    pub waiting_bytes: u64,
    /// Sends of a batch that had been sent before.
    pub retried_batches: u64,
    /// Batches that failed for good (refused or expired).
    pub failed_batches: u64,
}

/// A send the shell must make: POST `body` with `signature`, then [`Outbox::settle`].
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    pub id: u64,
    pub body: Rc<str>,
    pub signature: Rc<str>,
    pub events: usize,
    /// Events lost since the previous report, sent along in
    /// [`allot_core::event::DROPPED_HEADER`] (0: no header).
    pub dropped: u64,
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The origin acknowledged the batch (2xx).
    Acked,
    /// Worth another try: timeout, connection failure, 5xx, 429.
    Transient(String),
    /// The origin refused the batch; sending it again would not help.
    Refused(String),
}

/// What [`Outbox::settle`] wants logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Nothing,
    /// A batch was given up (refused or expired): so many events.
    Lost {
        events: usize,
        why: String,
    },
    /// Sending failed; the outbox retries at `retry_at_ms`.
    Retrying {
        why: String,
        retry_at_ms: u64,
    },
}

#[derive(Debug)]
struct Batch {
    send: Send,
    sealed_ms: u64,
    attempts: u32,
    /// `Some(deadline)` while a send is out.
    in_flight_until: Option<u64>,
}

/// The bytes of a body around its events: `{"events":[` and `]}`.
const EMPTY_BODY: usize = r#"{"events":[]}"#.len();

/// The outbox.
#[derive(Debug)]
pub struct Outbox {
    settings: Settings,
    unsealed: Vec<Event>,
    /// The body the unsealed events would make, in bytes.
    unsealed_bytes: usize,
    oldest_unsealed_ms: u64,
    batches: VecDeque<Batch>,
    bytes: usize,
    next_id: u64,
    /// No send starts before this (the outbox-wide backoff).
    retry_at_ms: u64,
    backoff: allot_core::retry::Backoff,
    counters: Counters,
    /// Events lost and not yet reported to the origin.
    unreported: u64,
}

impl Outbox {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            unsealed: Vec::new(),
            unsealed_bytes: EMPTY_BODY,
            oldest_unsealed_ms: 0,
            batches: VecDeque::new(),
            bytes: 0,
            next_id: 0,
            retry_at_ms: 0,
            backoff: RETRY.start(),
            counters: Counters::default(),
            unreported: 0,
        }
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        c.waiting = (self.unsealed.len() + self.batches.iter().map(|b| b.send.events).sum::<usize>()) as u64;
        c.waiting_bytes = self.bytes as u64;
        c
    }

    /// Queues an event; `false` if the outbox is full and the event was dropped (counted).
    pub fn push(&mut self, event: Event, now_ms: u64) -> bool {
        if self.bytes >= self.settings.max_bytes {
            self.counters.dropped += 1;
            self.unreported += 1;
            return false;
        }
        // Its bytes in the body: the event and a comma.
        let len = serde_json::to_string(&event).map_or(0, |json| json.len()) + 1;
        if !self.unsealed.is_empty() && self.unsealed_bytes + len > self.settings.batch_max_bytes {
            self.seal(now_ms);
        }
        if self.unsealed.is_empty() {
            self.oldest_unsealed_ms = now_ms;
        }
        self.unsealed_bytes += len;
        self.unsealed.push(event);
        self.counters.queued += 1;
        if self.unsealed.len() >= self.settings.batch_max {
            self.seal(now_ms);
        }
        true
    }

    fn seal(&mut self, now_ms: u64) {
        let events = std::mem::take(&mut self.unsealed);
        self.unsealed_bytes = EMPTY_BODY;
        let n = events.len();
        let body = EventBatch { events }.to_json();
        let signature = signature::sign(&self.settings.key, now_ms / 1000, body.as_bytes());
        self.bytes += body.len();
        self.next_id += 1;
        let dropped = std::mem::take(&mut self.unreported);
        let send = Send { id: self.next_id, body: body.into(), signature: signature.into(), events: n, dropped };
        self.batches.push_back(Batch { send, sealed_ms: now_ms, attempts: 0, in_flight_until: None });
    }

    fn remove(&mut self, index: usize) -> Option<Batch> {
        let b = self.batches.remove(index)?;
        self.bytes -= b.send.body.len();
        Some(b)
    }

    /// Lets go of a batch that will not be delivered: its events, and the report it
    /// carried, are reported with a later batch.
    fn give_up(&mut self, index: usize) -> usize {
        let Some(b) = self.remove(index) else { return 0 };
        self.unreported += b.send.dropped + b.send.events as u64;
        self.counters.failed_batches += 1;
        b.send.events
    }

    /// Seals what is old enough, lets go of what is too old, and hands out the sends
    /// that are due now. The [`Note`]s are the batches given up.
    pub fn poll(&mut self, now_ms: u64) -> (Vec<Send>, Vec<Note>) {
        if !self.unsealed.is_empty() && now_ms >= self.oldest_unsealed_ms + self.settings.batch_age_ms {
            self.seal(now_ms);
        }
        let mut notes = Vec::new();
        let mut i = 0;
        while i < self.batches.len() {
            let b = &self.batches[i];
            // A send past its deadline is presumed lost (its task cancelled: the runtime
            // ends a request's background work after 30 s), so only a live one holds
            // the batch back; else a batch whose sends were all cut off would never
            // expire, and resent past its signature's age be refused as `failed`.
            let live = b.in_flight_until.is_some_and(|d| now_ms < d);
            if !live && now_ms >= b.sealed_ms + self.settings.max_age_ms {
                let events = self.give_up(i);
                self.counters.expired += events as u64;
                notes.push(Note::Lost { events, why: "older than the origin's signature window".into() });
            } else {
                i += 1;
            }
        }
        let mut sends = Vec::new();
        if now_ms < self.retry_at_ms {
            return (sends, notes);
        }
        let mut out = self.batches.iter().filter(|b| b.in_flight_until.is_some_and(|d| now_ms < d)).count();
        // While backing off, one probe at a time.
        let cap = if self.backoff.attempts() > 0 { 1 } else { self.settings.max_in_flight };
        for b in self.batches.iter_mut() {
            if out >= cap {
                break;
            }
            if b.in_flight_until.is_some_and(|d| now_ms < d) {
                continue;
            }
            if b.attempts > 0 {
                self.counters.retried_batches += 1;
            }
            b.attempts += 1;
            b.in_flight_until = Some(now_ms + self.settings.send_timeout_ms + 1_000);
            sends.push(b.send.clone());
            out += 1;
        }
        (sends, notes)
    }

    /// Records how send `id` ended; `unit` is a uniform random number for the backoff's
    /// jitter. A result for a batch no longer waiting (already acknowledged through a
    /// later send) changes nothing.
    pub fn settle(&mut self, id: u64, outcome: Outcome, now_ms: u64, unit: f64) -> Note {
        let Some(index) = self.batches.iter().position(|b| b.send.id == id) else {
            return Note::Nothing;
        };
        match outcome {
            Outcome::Acked => {
                let b = self.remove(index).map_or(0, |b| b.send.events);
                self.counters.sent += b as u64;
                self.backoff.reset();
                self.retry_at_ms = 0;
                Note::Nothing
            }
            Outcome::Refused(why) => {
                let events = self.give_up(index);
                self.counters.failed += events as u64;
                Note::Lost { events, why }
            }
            Outcome::Transient(why) => {
                self.batches[index].in_flight_until = None;
                // Sends that were out together fail together: one step of backoff for
                // them all. RETRY never gives up; the batch's age bounds the retries.
                if now_ms >= self.retry_at_ms {
                    let wait = self.backoff.next(unit).unwrap_or(RETRY.max);
                    self.retry_at_ms = now_ms + wait.as_millis() as u64;
                }
                Note::Retrying { why, retry_at_ms: self.retry_at_ms }
            }
        }
    }

    /// When [`poll`](Self::poll) next has something to do, if anything waits at all.
    pub fn next_wake(&self, now_ms: u64) -> Option<u64> {
        let seal = (!self.unsealed.is_empty()).then(|| self.oldest_unsealed_ms + self.settings.batch_age_ms);
        let send = self.batches.iter().map(|b| b.in_flight_until.unwrap_or(0).max(self.retry_at_ms)).min();
        seal.into_iter().chain(send).min().map(|t| t.max(now_ms))
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
