//! allot's Redis stream consumer: one consumer of a consumer group, as the aggregator and
//! the archiver's lanes run it.
//!
//! Both do the same thing with a stream: create the group (`MKSTREAM`; an existing group
//! is fine), read this consumer's own pending entries first (what a crash, a lost reply
//! or a shutdown left unacknowledged), then new entries (`>`), now and then take over the
//! entries of consumers that have gone silent, and acknowledge entries only once their
//! effect is durable. The protocol is [`machine::Consumer`], a state machine in the style
//! of quinn-proto: it does no I/O, reads no clock and draws no random numbers, so every
//! rule of the cycle is unit-tested with a fake clock. [`StreamConsumer`] is the thin
//! async driver that runs its commands against a Redis connection; [`Retry`] paces the
//! applications' own retries (S3 uploads, Lua applies) under the same policy.
//!
//! Why a crate of its own and not a module of `allot-core`: the machine speaks Redis
//! (entry ids, `XCLAIM`, `NOGROUP`), not the allocation domain, and the edge, which
//! shares the core, never consumes a stream; the driver needs `redis` and `tokio`, which
//! the core must never see, and has to exist once for two crates (`allot-origin` and
//! `allot-archive`). So the machine and its driver live here together, the machine kept
//! I/O-free in its own module, on dependencies both crates already have. The retry policy
//! itself is the core's ([`allot_core::retry`]).
//!
//! What both applications rely on:
//!
//! - entries are acknowledged only when the application says their effect is durable
//!   ([`StreamConsumer::ack`]);
//! - this consumer's pending entries, and a claimed consumer's, are delivered as one
//!   [`Batch`] and nothing else is read until it is acknowledged, so a consumer's pending
//!   entries are always what it holds (a buffer of new entries) or exactly one batch;
//! - own pending entries and claims are looked at only while the application holds
//!   nothing, so what they deliver is exactly the next unit of work;
//! - a claimed or pending entry that was trimmed from the stream keeps its place in its
//!   batch, with no fields ([`Entry::is_trimmed`]).

pub mod driver;
pub mod lag;
pub mod lock;
pub mod machine;
pub mod retry;
pub mod trim;

use std::collections::HashMap;

use redis::{FromRedisValue, Value};

pub use driver::{Observer, StreamConsumer};
pub use machine::{Batch, Command, Consumer, ConsumerConfig, Source};
pub use retry::{Jitter, Retry};
pub use trim::{EntryId, GroupState};

/// A wait or a command was given up because the consumer is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped by shutdown")]
pub struct Stopped;

/// One stream entry, as a read or a claim returned it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub id: String,
    /// The entry's fields; `None` when the entry was trimmed (or deleted) from the stream
    /// while it was pending, which Redis replies with nil fields (or, for a claim, by
    /// leaving the entry out).
    pub fields: Option<HashMap<String, Value>>,
}

impl Entry {
    /// The place of an entry that is no longer in the stream.
    pub fn trimmed(id: impl Into<String>) -> Self {
        Self { id: id.into(), fields: None }
    }

    pub fn is_trimmed(&self) -> bool {
        self.fields.is_none()
    }

    /// A field converted to `T`; `None` if absent, trimmed or of another type.
    pub fn get<T: FromRedisValue>(&self, field: &str) -> Option<T> {
        redis::from_redis_value_ref(self.fields.as_ref()?.get(field)?).ok()
    }
}

impl From<redis::streams::StreamId> for Entry {
    /// Every stream entry has at least one field (`XADD` requires one), so an empty field
    /// list can only be Redis's nil for a trimmed entry.
    fn from(e: redis::streams::StreamId) -> Self {
        let fields = (!e.map.is_empty()).then_some(e.map);
        Self { id: e.id, fields }
    }
}
