//! What the machine and its driver say to each other: the commands it asks the driver
//! to run against Redis, and the replies (or failures) the driver feeds back.

use std::time::{Duration, Instant};

use crate::Entry;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `XGROUP CREATE stream group 0 MKSTREAM`.
    CreateGroup,
    /// `XREADGROUP GROUP group me COUNT count STREAMS stream after`: own pending entries
    /// after `after`.
    ReadPending { after: String, count: usize },
    /// `XREADGROUP GROUP group me COUNT count BLOCK block STREAMS stream >`.
    ReadNew { count: usize, block: Duration },
    /// `XINFO CONSUMERS stream group`.
    ListConsumers,
    /// `XPENDING stream group - + count consumer`.
    ListPending { consumer: String, count: usize },
    /// `XCLAIM stream group me min_idle ids…`.
    Claim { ids: Vec<String>, min_idle: Duration },
    /// `XACK stream group ids…`.
    Ack { ids: Vec<String> },
    /// `XGROUP DELCONSUMER stream group consumer`, atomically only if the consumer still
    /// has nothing pending and has been idle at least `min_idle` (a script).
    Forget { consumer: String, min_idle: Duration },
    /// Nothing until `until`: the backoff after a failure.
    Wait { until: Instant },
}

impl Command {
    /// What the command does, for logs.
    pub fn what(&self) -> &'static str {
        match self {
            Self::CreateGroup => "creating the consumer group",
            Self::ReadPending { .. } => "reading own pending entries",
            Self::ReadNew { .. } => "reading new entries",
            Self::ListConsumers => "listing the group's consumers",
            Self::ListPending { .. } => "listing a silent consumer's entries",
            Self::Claim { .. } => "claiming a silent consumer's entries",
            Self::Ack { .. } => "acknowledging entries",
            Self::Forget { .. } => "deleting a gone consumer",
            Self::Wait { .. } => "waiting",
        }
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The group exists.
    GroupReady,
    /// Entries read (`ReadPending`, `ReadNew`) or claimed (`Claim`), in stream order.
    Entries(Vec<Entry>),
    Consumers(Vec<ConsumerInfo>),
    Pending(Vec<PendingInfo>),
    Acked,
    /// A `Forget` ran (whether or not the consumer was still there to delete).
    Forgotten,
}

/// A failed command, as far as the cycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `BUSYGROUP`: the group to create exists.
    BusyGroup,
    /// `NOGROUP`: the stream or the group is gone.
    NoGroup,
    /// Anything else: a lost connection, a timeout.
    Other,
}

/// A consumer of the group (`XINFO CONSUMERS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: usize,
    /// Since the consumer last interacted with the group.
    pub idle: Duration,
}

/// A pending entry (`XPENDING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInfo {
    pub id: String,
    /// Since the entry was last delivered.
    pub idle: Duration,
}
