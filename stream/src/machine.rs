//! The consumer-group cycle as a state machine: no I/O, no clock, no randomness.
//!
//! [`Consumer::poll`] says what to do next ([`Command`]); the driver does it and feeds
//! the reply to [`Consumer::handle`], which may hand entries to the application
//! ([`Batch`]). The application calls [`Consumer::done`] once a batch's effect is durable,
//! and the entries are acknowledged. Time (`now`) and the random number for the retry
//! jitter are arguments, so the tests drive it with a fake clock.
//!
//! The cycle:
//!
//! 1. Create the group (from the start of the stream, `MKSTREAM`; `BUSYGROUP` means it
//!    exists, which is fine). A `NOGROUP` reply at any later point (the stream was
//!    deleted, and the group with it) starts over here.
//! 2. At start, and every `check_every` while the application holds nothing: read this
//!    consumer's own pending entries from the start of its pending list, following the
//!    last id read, until a read comes back empty; deliver them as one batch. They are
//!    what an earlier run left (its buffer, or the flush it could not finish) or entries
//!    whose read reply was lost; no one else takes them while this consumer is alive.
//!    After a failed read of new entries or a failed claim this check comes at once:
//!    its reply may have been lost with entries in it. A consumer holding new entries
//!    reads instead its own pending entries after the last one it was given, and adds
//!    them to its hand as new: its pending list must stay what it holds, or a flush
//!    keyed by its first and last ids, redone after a crash, would lack them.
//! 3. Then, if claims are on: list the group's consumers, and for each other consumer
//!    silent for `claim_idle` with every pending entry idle as long, `XCLAIM` all its
//!    entries (with that minimum idle time, which is atomic and resets the idle time, so
//!    of two claimers one gets the entries and the other none) and deliver them as one
//!    batch, trimmed entries in their places. All of a consumer's entries, never some:
//!    they are its one unit of work (the archiver's keys derive from a flush's first and
//!    last ids), and a consumer with a younger entry is alive.
//!    Before that, other consumers with nothing pending and idle for `forget_idle` are
//!    deleted from the group (`XGROUP DELCONSUMER`, in a script that checks both again,
//!    so a consumer that came back in between keeps its entries).
//! 4. Otherwise read new entries (`>`), blocking at most `max_block` (a shutdown is
//!    noticed between reads, never within one) or until the application's wake-up time.
//!
//! A batch from steps 2 and 3 must be done before anything else is read. Acknowledgements
//! go before every other command. A failed command is retried after a backoff under the
//! core's [`RetryPolicy`] (equal jitter), which any success resets; a failed claim step
//! is not retried but left to the next check.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use allot_core::retry::{Backoff, RetryPolicy};

use crate::Entry;

mod io;

pub use io::{Command, ConsumerInfo, Failure, PendingInfo, Reply};

/// The shortest blocking read: `BLOCK 0` would block for ever.
const MIN_BLOCK: Duration = Duration::from_millis(1);

/// How one consumer reads, claims and retries.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// This consumer's name in the group. Stable across restarts if pending entries are
    /// to be picked up by the restarted process itself.
    pub consumer: String,
    /// Entries per read of new entries.
    pub read_count: usize,
    /// Entries per read of own pending entries (they are delivered together in any case;
    /// fewer reads leave less time for a claimer to take part of them).
    pub pending_count: usize,
    /// The longest a read of new entries blocks.
    pub max_block: Duration,
    /// Another consumer's entries are claimed once it and they have been idle this long;
    /// `None` never claims.
    pub claim_idle: Option<Duration>,
    /// How often own pending entries and claims are looked at.
    pub check_every: Duration,
    /// Another consumer with nothing pending and idle this long is deleted from the
    /// group (it is a process that is gone: every live consumer reads well within it),
    /// so a group whose consumers have unique names does not grow for ever. Looked at
    /// with the claims; `None` never deletes.
    pub forget_idle: Option<Duration>,
    pub retry: RetryPolicy,
}

/// Where a batch's entries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read with `>`: never delivered before.
    New,
    /// This consumer's own pending entries.
    Pending,
    /// A silent consumer's entries, claimed.
    Claimed { from: String },
}

/// Entries for the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub source: Source,
    pub entries: Vec<Entry>,
}

impl Batch {
    /// The ids to acknowledge once the batch's effect is durable.
    pub fn ids(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.id.clone()).collect()
    }

    /// Own pending or claimed entries: work that may have been done, in part or whole,
    /// before.
    pub fn is_recovery(&self) -> bool {
        self.source != Source::New
    }
}

/// Where the cycle stands.
#[derive(Debug)]
enum Phase {
    NoGroup,
    Read,
    Pending {
        after: String,
        found: Vec<Entry>,
        /// Entries a lost read delivered while the hand held new ones: added to it.
        lost: bool,
    },
    /// `queue`: the silent consumers and their pending counts, once listed; `ids`: the
    /// first one's entries, to claim; `forget`: gone consumers to delete first.
    Claim {
        queue: Option<VecDeque<(String, usize)>>,
        ids: Option<Vec<String>>,
        forget: Vec<String>,
    },
}

/// The command a reply is awaited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    CreateGroup,
    ReadPending,
    ReadNew,
    ListConsumers,
    ListPending,
    Claim,
    Forget,
    Ack(usize),
}

/// One consumer's cycle.
#[derive(Debug)]
pub struct Consumer {
    cfg: ConsumerConfig,
    phase: Phase,
    sent: Option<Sent>,
    /// Ids to acknowledge, in the order they were done.
    acks: Vec<String>,
    ack_failed: bool,
    /// Entries delivered and not yet done.
    held: usize,
    /// The held entries are a recovery batch: nothing is read until it is done.
    recovering: bool,
    backoff: Backoff,
    retry_at: Option<Instant>,
    next_check: Instant,
    /// A read of new entries since the last check: however short `check_every`, new
    /// entries are read between checks.
    read_since_check: bool,
    /// The last entry read as new: the hand's newest while it holds new entries.
    last_new: Option<String>,
    wake_by: Option<Instant>,
}

impl Consumer {
    pub fn new(cfg: ConsumerConfig, now: Instant) -> Self {
        Self {
            backoff: cfg.retry.start(),
            cfg,
            phase: Phase::NoGroup,
            sent: None,
            acks: Vec::new(),
            ack_failed: false,
            held: 0,
            recovering: false,
            retry_at: None,
            next_check: now,
            read_since_check: true,
            last_new: None,
            wake_by: None,
        }
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.cfg
    }

    /// The application wants control back by `at` (say, to flush a buffer by age): reads
    /// of new entries block no longer than that.
    pub fn wake_by(&mut self, at: Option<Instant>) {
        self.wake_by = at;
    }

    /// Entries delivered and not yet done.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Acknowledgements not yet made.
    pub fn acking(&self) -> bool {
        !self.acks.is_empty()
    }

    /// What to do next; `None` while the application holds a recovery batch (nothing is
    /// read until it is done).
    pub fn poll(&mut self, now: Instant) -> Option<Command> {
        let waiting = self.retry_at.filter(|t| now < *t);
        if !self.acks.is_empty() && (waiting.is_none() || !self.ack_failed) {
            // A fresh acknowledgement goes out even during a backoff: it is the last
            // command of a shutdown, and it costs one attempt.
            self.sent = Some(Sent::Ack(self.acks.len()));
            return Some(Command::Ack { ids: self.acks.clone() });
        }
        if let Some(until) = waiting {
            return Some(Command::Wait { until });
        }
        self.retry_at = None;
        if self.recovering {
            return None;
        }
        let (sent, command) = loop {
            match &mut self.phase {
                Phase::NoGroup => break (Sent::CreateGroup, Command::CreateGroup),
                Phase::Read if self.held == 0 && self.read_since_check && now >= self.next_check => {
                    self.next_check = now + self.cfg.check_every;
                    self.read_since_check = false;
                    self.phase = Phase::Pending { after: "0".into(), found: Vec::new(), lost: false };
                }
                Phase::Read => {
                    let max = self.cfg.max_block.max(MIN_BLOCK);
                    let block = self.wake_by.map_or(max, |t| t.saturating_duration_since(now)).clamp(MIN_BLOCK, max);
                    break (Sent::ReadNew, Command::ReadNew { count: self.cfg.read_count, block });
                }
                Phase::Pending { after, .. } => {
                    let command = Command::ReadPending { after: after.clone(), count: self.cfg.pending_count };
                    break (Sent::ReadPending, command);
                }
                Phase::Claim { queue: None, .. } => break (Sent::ListConsumers, Command::ListConsumers),
                Phase::Claim { forget, .. } if !forget.is_empty() => {
                    let consumer = forget.last().cloned().unwrap_or_default();
                    let min_idle = self.cfg.forget_idle.unwrap_or_default();
                    break (Sent::Forget, Command::Forget { consumer, min_idle });
                }
                Phase::Claim { ids: Some(ids), .. } => {
                    let min_idle = self.cfg.claim_idle.unwrap_or_default();
                    break (Sent::Claim, Command::Claim { ids: ids.clone(), min_idle });
                }
                Phase::Claim { queue: Some(queue), ids: None, .. } => match queue.front() {
                    Some((consumer, count)) => {
                        let command = Command::ListPending { consumer: consumer.clone(), count: *count };
                        break (Sent::ListPending, command);
                    }
                    None => self.phase = Phase::Read,
                },
            }
        };
        self.sent = Some(sent);
        Some(command)
    }

    /// Feeds the reply to the command last polled (a `Wait` has none); `unit` is a uniform
    /// random number in `[0, 1)` for the backoff's jitter should the command have failed.
    /// Returns entries for the application, if the reply completes a batch.
    pub fn handle(&mut self, now: Instant, reply: Result<Reply, Failure>, unit: f64) -> Option<Batch> {
        let sent = self.sent.take()?;
        let reply = match reply {
            Err(Failure::BusyGroup) if sent == Sent::CreateGroup => Reply::GroupReady,
            Err(failure) => {
                self.failed(now, sent, failure, unit);
                return None;
            }
            Ok(reply) => reply,
        };
        let batch = match (sent, reply) {
            (Sent::Ack(n), Reply::Acked) => {
                self.acks.drain(..n.min(self.acks.len()));
                self.ack_failed = false;
                None
            }
            (Sent::CreateGroup, Reply::GroupReady) => {
                self.phase = Phase::Read;
                None
            }
            (Sent::ReadPending, Reply::Entries(entries)) => self.pending_read(entries),
            (Sent::ReadNew, Reply::Entries(entries)) => {
                self.read_since_check = true;
                Some(self.take_new(entries))
            }
            (Sent::ListConsumers, Reply::Consumers(list)) => {
                self.consumers_listed(list);
                None
            }
            (Sent::ListPending, Reply::Pending(list)) => {
                self.pending_listed(list);
                None
            }
            (Sent::Claim, Reply::Entries(entries)) => self.claimed(entries),
            (Sent::Forget, Reply::Forgotten) => {
                if let Phase::Claim { forget, .. } = &mut self.phase {
                    forget.pop();
                }
                None
            }
            (sent, _) => {
                // A reply of another command's shape: as good as a failure.
                self.failed(now, sent, Failure::Other, unit);
                return None;
            }
        };
        self.backoff.reset();
        batch
    }

    /// The application is done with these entries (their effect is durable): they are
    /// acknowledged next.
    pub fn done(&mut self, ids: impl IntoIterator<Item = String>) {
        let before = self.acks.len();
        self.acks.extend(ids);
        self.held = self.held.saturating_sub(self.acks.len() - before);
        if self.held == 0 {
            self.recovering = false;
        }
    }

    /// New entries for the hand: read with `>`, or found pending after a lost read.
    fn take_new(&mut self, entries: Vec<Entry>) -> Batch {
        self.held += entries.len();
        self.last_new = entries.last().map(|e| e.id.clone()).or(self.last_new.take());
        Batch { source: Source::New, entries }
    }

    fn deliver(&mut self, source: Source, entries: Vec<Entry>) -> Option<Batch> {
        if entries.is_empty() {
            return None;
        }
        self.held += entries.len();
        self.recovering = true;
        Some(Batch { source, entries })
    }

    fn pending_read(&mut self, entries: Vec<Entry>) -> Option<Batch> {
        let Phase::Pending { after, found, lost } = &mut self.phase else { return None };
        if let Some(last) = entries.last() {
            *after = last.id.clone();
            found.extend(entries);
            return None;
        }
        let found = std::mem::take(found);
        if *lost {
            self.phase = Phase::Read;
            return (!found.is_empty()).then(|| self.take_new(found));
        }
        self.phase = match self.cfg.claim_idle {
            Some(_) => Phase::Claim { queue: None, ids: None, forget: Vec::new() },
            None => Phase::Read,
        };
        self.deliver(Source::Pending, found)
    }

    fn consumers_listed(&mut self, list: Vec<ConsumerInfo>) {
        let Some(idle) = self.cfg.claim_idle else { return };
        let me = &self.cfg.consumer;
        let gone = |c: &ConsumerInfo| self.cfg.forget_idle.is_some_and(|f| c.pending == 0 && c.idle >= f);
        let forget = list.iter().filter(|c| &c.name != me && gone(c)).map(|c| c.name.clone()).collect();
        let silent = list.into_iter().filter(|c| &c.name != me && c.pending > 0 && c.idle >= idle);
        let queue = silent.map(|c| (c.name, c.pending)).collect();
        self.phase = Phase::Claim { queue: Some(queue), ids: None, forget };
    }

    fn pending_listed(&mut self, list: Vec<PendingInfo>) {
        let Phase::Claim { queue: Some(queue), ids, .. } = &mut self.phase else { return };
        let idle = self.cfg.claim_idle.unwrap_or_default();
        if !list.is_empty() && list.iter().all(|p| p.idle >= idle) {
            *ids = Some(list.into_iter().map(|p| p.id).collect());
        } else {
            // Nothing left, or an entry delivered recently: that consumer is alive.
            queue.pop_front();
        }
    }

    fn claimed(&mut self, entries: Vec<Entry>) -> Option<Batch> {
        let Phase::Claim { queue: Some(queue), ids, .. } = &mut self.phase else { return None };
        let ids = ids.take().unwrap_or_default();
        let from = queue.pop_front().map(|(name, _)| name).unwrap_or_default();
        if entries.is_empty() {
            // Another consumer claimed them first (or every one was trimmed, which
            // `XCLAIM` also takes off the pending list).
            return None;
        }
        // `XCLAIM` leaves out entries trimmed from the stream. They keep their places,
        // empty, so the batch spans the ids the silent consumer's did.
        let mut found: HashMap<String, Entry> = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        let entries = ids.into_iter().map(|id| found.remove(&id).unwrap_or_else(|| Entry::trimmed(id))).collect();
        self.deliver(Source::Claimed { from }, entries)
    }

    fn failed(&mut self, now: Instant, sent: Sent, failure: Failure, unit: f64) {
        let wait = self.backoff.next(unit).unwrap_or(self.cfg.retry.max);
        self.retry_at = Some(now + wait);
        if failure == Failure::NoGroup {
            // The stream was deleted, and with it the group and every pending entry:
            // nothing is left to acknowledge or to recover. Start over.
            self.acks.clear();
            self.ack_failed = false;
            self.phase = Phase::NoGroup;
            return;
        }
        match sent {
            Sent::Ack(_) => self.ack_failed = true,
            // A claim is looked at again at the next check.
            Sent::ListConsumers | Sent::ListPending | Sent::Forget => self.phase = Phase::Read,
            // Its reply may have been lost with the entries made this consumer's: the
            // hand is empty, so its own pending entries are read at once.
            Sent::Claim => {
                self.phase = Phase::Read;
                self.next_check = now;
                self.read_since_check = true;
            }
            // Redis may have delivered entries whose reply was lost (a killed
            // connection, a timeout): only a read of own pending entries finds them, at
            // once (else they wait, counted too late for their window). Holding new
            // entries, those after the last one given join the hand (module doc).
            Sent::ReadNew => match (&self.last_new, self.held) {
                (Some(after), 1..) => self.phase = Phase::Pending { after: after.clone(), found: vec![], lost: true },
                _ => {
                    self.next_check = now;
                    self.read_since_check = true;
                }
            },
            // Anything else is retried as it was.
            Sent::CreateGroup | Sent::ReadPending => {}
        }
    }
}

#[cfg(test)]
mod tests;
