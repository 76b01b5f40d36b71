//! One origin's part of the control loop, as a state machine: the membership it sees,
//! the shards it should hold, and a [`Lease`] per shard it holds or asks for.
//!
//! Every origin announces itself in the membership on each *sync* (a heartbeat that
//! expires after one lease time), reads who else is there, and computes the same target
//! assignment as every other origin ([`shard::assign`]: rendezvous hashing, at most a
//! fair share each). It then asks for the shards of its target it does not hold and
//! gives back (once no round is using them) the ones it holds but should not. One sync
//! is one request to Redis carrying the heartbeat and every shard's ask or release, so
//! a shard's lease is renewed on the same schedule as the heartbeat: every third of the
//! lease time.
//!
//! Safety is the per-shard lease's (see [`crate::lease`]): a grant is valid from when it
//! was *asked*, less a margin, so an origin that stops hearing from Redis stops acting
//! before anyone else can be granted the shard; every grant carries an epoch drawn from
//! one counter, so the per-placement fencing holds across shard moves. The membership
//! only decides who *tries*: two origins that disagree about it for a moment may both
//! ask for a shard, and Redis grants it to one.
//!
//! Two rules keep it calm:
//! - **Newcomers settle first.** A member counts in the assignment only once it has
//!   been in the membership for two lease times (its join time is Redis's, the same
//!   for every observer), so an origin that flaps in and out moves no shards. Members
//!   that joined within that time of the earliest one count at once (a cluster
//!   starting).
//! - **One shard count.** Every member announces its `control.shards`; the count of the
//!   member that joined first is the cluster's, and an origin configured otherwise holds
//!   nothing (it would map placements to other shards) and says so.

use std::collections::{BTreeMap, BTreeSet};

use crate::lease::{Fence, Lease, LeaseConfig, LeaseReply, Transition};
use crate::shard;

/// How far above a fence's epoch a reissued grant goes ([`Membership::fenced_above`]):
/// more grants than Redis makes between a copy and its restore.
pub const REISSUE_MARGIN: u64 = 1 << 20;

/// The highest fence epoch followed by a reissue, far below where the Lua scripts'
/// numbers stop printing as integers (10¹⁴): the counter stays below it.
pub const MAX_FENCE_FOLLOWED: u64 = 1 << 40;

/// The shard count and the per-shard lease timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    pub shards: u32,
    /// Each shard's lease; its TTL is also the heartbeat's.
    pub lease: LeaseConfig,
}

impl MembershipConfig {
    /// How long a newcomer must have been a member before it counts: two lease times,
    /// since an entry outlives its last heartbeat by one, so an origin up for less than
    /// a lease time between absences never counts.
    pub fn settle_ms(&self) -> u64 {
        self.lease.ttl_ms.saturating_mul(2)
    }
}

/// An origin in the membership, as Redis reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// The shard count it runs with.
    pub shards: u32,
    /// When it joined, on Redis's clock (ms).
    pub since_ms: u64,
}

/// One shard's part of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOp {
    /// Take the shard if free, or renew it if held by this origin under `held`. With
    /// `reissue_from`, a renewal is a new grant, under an epoch above it (see
    /// [`Membership::fenced_above`]).
    Ask { shard: u32, held: Option<u64>, reissue_from: Option<u64> },
    /// Give the shard back if it is still held by this origin under `epoch`.
    Release { shard: u32, epoch: u64 },
}

/// What the shell sends to Redis: the heartbeat (or the leave) and the shard ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub leave: bool,
    pub ops: Vec<ShardOp>,
}

/// What Redis did with one [`ShardOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpOutcome {
    /// Held by this origin under this epoch (new or renewed).
    Granted { epoch: u64 },
    /// Held by another.
    Refused,
    /// Not held by this origin any more.
    Released,
}

/// Redis's answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReply {
    /// Redis's clock when it answered (ms).
    pub now_ms: u64,
    pub members: Vec<Member>,
    /// One per op of the request, in its order.
    pub outcomes: Vec<OpOutcome>,
}

/// A change the shell reports (logs, metrics) or acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This origin holds the shard under a new epoch: its placements get a full round.
    Acquired { shard: u32, epoch: u64 },
    /// The shard's grant ran out or was refused.
    Lost { shard: u32 },
    /// Given back.
    Released { shard: u32 },
    /// The shards this origin should hold changed: now `target` of them, among
    /// `members` live origins.
    Rebalanced { target: u32, members: u32 },
    /// Membership entries that cannot be members (bad ids, no shard count): ignored.
    Ignored { entries: u32 },
}

/// One origin's view; see the module documentation.
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    config: MembershipConfig,
    leases: BTreeMap<u32, Lease>,
    /// Per shard held, the highest epoch seen fencing one of its placements above the
    /// grant: asked to be reissued above at the next renewal.
    stale: BTreeMap<u32, u64>,
    target: BTreeSet<u32>,
    live: usize,
    cluster_shards: Option<u32>,
    /// The sync out: when it was sent, whether it was the scheduled one, its ops.
    in_flight: Option<(u64, bool, Vec<ShardOp>)>,
    next_sync_ms: u64,
    leaving: bool,
    left: bool,
}

impl Membership {
    pub fn new(me: impl Into<String>, config: MembershipConfig) -> Self {
        Self {
            me: me.into(),
            config,
            leases: BTreeMap::new(),
            stale: BTreeMap::new(),
            target: BTreeSet::new(),
            live: 0,
            cluster_shards: None,
            in_flight: None,
            next_sync_ms: 0,
            leaving: false,
            left: false,
        }
    }

    /// The next sync to send, if one is due at `now_ms`; it counts as sent then.
    /// `busy` are the shards a round is using: they are renewed, never released.
    ///
    /// A sync is due every third of the lease time; between two, one goes out as soon
    /// as a shard can be given back (its round ended) or a shard new to the target can
    /// be asked for.
    pub fn poll(&mut self, now_ms: u64, busy: &BTreeSet<u32>) -> Option<SyncRequest> {
        if self.in_flight.is_some() || self.left {
            return None;
        }
        let due = now_ms >= self.next_sync_ms || self.leaving;
        let mut ops = Vec::new();
        for (&shard, lease) in &mut self.leases {
            let Some(fence) = lease.current(now_ms) else { continue };
            let keep = !self.leaving && (self.target.contains(&shard) || busy.contains(&shard));
            if keep {
                if due && lease.poll(now_ms) {
                    let stale = self.stale.get(&shard).copied().filter(|&seen| seen > fence.epoch);
                    let reissue_from = stale.map(|seen| seen + REISSUE_MARGIN);
                    ops.push(ShardOp::Ask { shard, held: Some(fence.epoch), reissue_from });
                }
            } else if !busy.contains(&shard) {
                ops.push(ShardOp::Release { shard, epoch: fence.epoch });
            }
        }
        if !self.leaving && !self.mismatched() {
            for &shard in &self.target {
                // A shard new to the target is asked for at once; one refused before, on
                // the schedule.
                let fresh = !self.leases.contains_key(&shard);
                if !due && !fresh {
                    continue;
                }
                let lease = self.leases.entry(shard).or_insert_with(|| Lease::new(self.config.lease));
                if lease.current(now_ms).is_none() && lease.poll(now_ms) {
                    ops.push(ShardOp::Ask { shard, held: None, reissue_from: None });
                }
            }
        }
        if !due && ops.is_empty() {
            return None;
        }
        self.in_flight = Some((now_ms, due, ops.clone()));
        Some(SyncRequest { leave: self.leaving, ops })
    }

    /// Feeds the answer to the sync [`Membership::poll`] sent (`None`: no answer, a
    /// timeout or an error); a reply without a sync out is ignored.
    pub fn on_reply(&mut self, now_ms: u64, reply: Option<SyncReply>) -> Vec<Change> {
        let Some((sent_ms, due, ops)) = self.in_flight.take() else { return Vec::new() };
        if due {
            self.next_sync_ms = sent_ms.saturating_add(self.config.lease.renew_every_ms()).max(now_ms);
        }
        // A reply that does not match the request answers nothing.
        let reply = reply.filter(|r| r.outcomes.len() == ops.len());
        let mut changes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let outcome = reply.as_ref().map(|r| r.outcomes[i]);
            match *op {
                ShardOp::Ask { shard, reissue_from, .. } => {
                    // Answered once: a placement still fenced after it reports again.
                    if reissue_from.is_some() && outcome.is_some() {
                        self.stale.remove(&shard);
                    }
                    let answer = match outcome {
                        Some(OpOutcome::Granted { epoch }) => LeaseReply::Granted { epoch },
                        Some(_) => LeaseReply::Refused,
                        None => LeaseReply::Failed,
                    };
                    let Some(lease) = self.leases.get_mut(&shard) else { continue };
                    match lease.on_reply(now_ms, answer) {
                        Some(Transition::Acquired { epoch }) => changes.push(Change::Acquired { shard, epoch }),
                        Some(Transition::Lost) => changes.push(Change::Lost { shard }),
                        None => {}
                    }
                }
                ShardOp::Release { shard, .. } => {
                    // Without an answer it stays held until released or run out.
                    if outcome.is_some() && self.leases.remove(&shard).is_some() {
                        changes.push(Change::Released { shard });
                    }
                }
            }
        }
        if let Some(r) = &reply {
            self.observe(r, &mut changes);
        }
        if self.leaving {
            self.left = true;
        }
        self.forget_unwanted(now_ms);
        changes
    }

    /// Reports grants that ran out without a reply saying so: call on every wake-up.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (&shard, lease) in &mut self.leases {
            if lease.expire(now_ms) == Some(Transition::Lost) {
                changes.push(Change::Lost { shard });
            }
        }
        self.forget_unwanted(now_ms);
        changes
    }

    /// Reports that a write to a placement of `shard` was refused because the placement's
    /// fence holds epoch `seen`, above this origin's grant of the shard.
    ///
    /// Normally that means the shard changed hands and the grant is stale, which the
    /// next renewal finds out (refused). But if this origin still holds the shard under
    /// its grant, no later grant of it exists: the fence holds an epoch from a counter
    /// that went back (Redis restored from an older copy, the running holders having
    /// written their epochs since) or a forged one, and it would refuse every grant of
    /// the shard until the counter passed it, which it does only as shards change
    /// hands. So the next renewal asks Redis, if the shard is still this origin's, to
    /// move the counter to `seen` + [`REISSUE_MARGIN`] (epochs just above `seen` may
    /// have been issued before the restore, to holders that still act on them) and to
    /// grant the shard anew above it. A fence at or above [`MAX_FENCE_FOLLOWED`] is
    /// not followed: only a forgery gets there.
    pub fn fenced_above(&mut self, shard: u32, seen: u64, now_ms: u64) {
        let Some(fence) = self.leases.get(&shard).and_then(|l| l.current(now_ms)) else { return };
        if seen > fence.epoch && seen < MAX_FENCE_FOLLOWED {
            let highest = self.stale.entry(shard).or_insert(seen);
            *highest = (*highest).max(seen);
        }
    }

    /// Starts leaving: the next sync releases every shard and leaves the membership.
    /// Call once no round uses any shard.
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    /// Whether the leaving sync has been answered (or failed): nothing more to send.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Every shard held at `now_ms`, with its grant (those being given back included).
    pub fn held(&self, now_ms: u64) -> Vec<(u32, Fence)> {
        self.leases.iter().filter_map(|(&s, l)| l.current(now_ms).map(|f| (s, f))).collect()
    }

    /// The shards a new round may start on: held and still this origin's to hold.
    pub fn offered(&self, now_ms: u64) -> Vec<(u32, Fence)> {
        let mut held = self.held(now_ms);
        held.retain(|(s, _)| !self.leaving && self.target.contains(s));
        held
    }

    /// The shards this origin should hold.
    pub fn target(&self) -> &BTreeSet<u32> {
        &self.target
    }

    /// Live members counted in the assignment at the last sync.
    pub fn live_members(&self) -> usize {
        self.live
    }

    /// The cluster's shard count (that of the member that joined first), once seen.
    pub fn cluster_shards(&self) -> Option<u32> {
        self.cluster_shards
    }

    /// Whether this origin's shard count differs from the cluster's: it holds nothing.
    pub fn mismatched(&self) -> bool {
        self.cluster_shards.is_some_and(|c| c != self.config.shards)
    }

    /// When the shell should wake next: the next sync, or a grant running out.
    pub fn next_wakeup_ms(&self) -> u64 {
        let expiry = self.leases.values().filter_map(|l| l.current(0).map(|f| f.valid_until_ms)).min();
        let sync = if self.in_flight.is_some() { u64::MAX } else { self.next_sync_ms };
        sync.min(expiry.unwrap_or(u64::MAX))
    }

    fn observe(&mut self, r: &SyncReply, changes: &mut Vec<Change>) {
        let (valid, bad): (Vec<&Member>, Vec<&Member>) =
            r.members.iter().partition(|m| shard::is_member_id(&m.id) && m.shards > 0);
        if !bad.is_empty() {
            changes.push(Change::Ignored { entries: bad.len() as u32 });
        }
        self.cluster_shards = valid.iter().min_by_key(|m| (m.since_ms, &m.id)).map(|m| m.shards);
        let same: Vec<&Member> = valid.into_iter().filter(|m| m.shards == self.config.shards).collect();
        // Settled, or of the cohort that started the cluster (joined within the settling
        // time of the earliest member): a cluster starting shares out at once, and
        // nothing moves when its first member settles before the others.
        let settle = self.config.settle_ms();
        let first = same.iter().map(|m| m.since_ms).min().unwrap_or(0);
        let live: Vec<&Member> = same
            .into_iter()
            .filter(|m| r.now_ms.saturating_sub(m.since_ms) >= settle || m.since_ms.saturating_sub(first) < settle)
            .collect();
        let ids: Vec<&str> = live.iter().map(|m| m.id.as_str()).collect();
        let target: BTreeSet<u32> = if self.leaving || self.mismatched() || !ids.contains(&self.me.as_str()) {
            BTreeSet::new()
        } else {
            let holders = shard::assign(self.config.shards, &ids);
            (0..self.config.shards).filter(|&s| holders[s as usize] == self.me).collect()
        };
        if target != self.target {
            changes.push(Change::Rebalanced { target: target.len() as u32, members: ids.len() as u32 });
        }
        self.target = target;
        self.live = ids.len();
    }

    /// Drops the leases neither held nor wanted (nothing out for them either).
    fn forget_unwanted(&mut self, now_ms: u64) {
        let target = &self.target;
        self.leases.retain(|s, l| l.current(now_ms).is_some() || target.contains(s));
        let leases = &self.leases;
        self.stale.retain(|s, _| leases.get(s).is_some_and(|l| l.current(now_ms).is_some()));
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
