//! The control loop's shards, the shell: core's [`Membership`] run against Redis on its
//! own task, and the rounds' view of what this origin holds.
//!
//! Every third of the lease time (and at once when a shard can be given back or newly
//! asked for) one script, [`SYNC`], renews this origin's heartbeat in the membership,
//! asks for or renews the shard leases it wants and gives back the others, and returns
//! the members. All of it is in the `{control}` slot, so it is one round trip and one
//! atomic step, on a cluster too. The script also refuses what a key holder may have
//! written there: a shard lease that does not parse, has no TTL or a TTL far beyond the
//! lease, or an epoch the counter never issued is taken over under a new epoch; a
//! membership entry with a bad id, a far-future expiry or a join time in the future is
//! removed. Each is counted (`allot_control_garbage_total`).
//!
//! The rounds ([`crate::control`]) read a [`ShardsView`]: the shards they may start a
//! round on, and per shard a [`LeaseView`] that `control::round` checks before every
//! publish and save, as it did with the single lease. A round marks its shard busy
//! ([`ShardsView::begin`]), and a shard this origin should give back is released only
//! once no round uses it, so a rebalance never cuts a round short.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use allot_core::contract::keys;
use allot_core::{
    Change, Fence, LeaseConfig, Member, Membership, MembershipConfig, OpOutcome, PlacementId, ShardOp, SyncReply,
    SyncRequest,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::lease::{LeaseView, mono_ms};
use crate::startup::App;

/// KEYS: members, member info, the epoch counter, then one shard lease per op.
/// ARGV: me, ttl (ms), leave (`1`/`0`), my shard count, then per op its kind (`a` ask,
/// `n<from>` ask and, if renewing, move the epoch counter to at least `from` and grant
/// anew above it, or renew an epoch above `from` this origin holds; `r` release) and
/// the epoch held (`0`: none).
/// Returns `{now_ms, garbage members, garbage shards, counter broken, {id, shards,
/// since, ...}, {outcome per op}}`; an outcome is the epoch granted, 0 refused, -1
/// released.
pub const SYNC: &str = include_str!("shards/sync.lua");

/// The shards' metrics, in the origin's one registry.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    pub shards: IntGauge,
    pub held: IntGauge,
    pub target: IntGauge,
    pub members: IntGauge,
    pub changes: IntCounterVec,
    pub rebalances: IntCounter,
    pub garbage: IntCounterVec,
    pub sync_failures: IntCounter,
    /// One pass of the rounds over the placements due, by kind (`full`: every
    /// placement of the shards held, after a window closed; `takeover`: those of
    /// shards just taken; `changes`: the placements whose targets changed).
    pub pass_duration: HistogramVec,
    pub pass_placements: HistogramVec,
}

impl ShardMetrics {
    pub fn register(r: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let counters = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
            r.register(Box::new(c.clone())).expect("registered once");
            for v in values {
                c.with_label_values(&[*v]);
            }
            c
        };
        let histograms = |name: &str, help: &str, buckets: Vec<f64>| {
            let h =
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["kind"]).expect("valid histogram");
            r.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let rebalances = IntCounter::new(
            "allot_control_rebalances_total",
            "Times the shards this instance should hold changed (an origin joined or left).",
        )
        .expect("valid metric name");
        r.register(Box::new(rebalances.clone())).expect("registered once");
        let sync_failures =
            IntCounter::new("allot_control_sync_failures_total", "Membership and shard syncs that got no answer.")
                .expect("valid metric name");
        r.register(Box::new(sync_failures.clone())).expect("registered once");
        Self {
            shards: gauge("allot_control_shards", "The control loop's shard count (control.shards)."),
            held: gauge("allot_control_shards_held", "Control shards this instance holds the lease of."),
            target: gauge("allot_control_shards_target", "Control shards this instance should hold."),
            members: gauge("allot_control_members", "Origins counted in the shard assignment."),
            changes: counters(
                "allot_control_shard_changes_total",
                "Shard leases acquired, lost (run out or refused) and released, by change.",
                "change",
                &["acquired", "lost", "released"],
            ),
            rebalances,
            garbage: counters(
                "allot_control_garbage_total",
                "Entries of the control keys that no origin wrote (forged, malformed), refused, by key.",
                "key",
                &["member", "shard", "epoch"],
            ),
            sync_failures,
            pass_duration: histograms(
                "allot_control_pass_duration_seconds",
                "One pass of control rounds over the placements due on this instance.",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            pass_placements: histograms(
                "allot_control_pass_placements",
                "Placements in one pass of control rounds on this instance.",
                vec![1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0],
            ),
        }
    }
}

/// One held shard, as `/readyz` shows it (wall-clock ms).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeldShard {
    pub shard: u32,
    pub epoch: u64,
    /// When the grant of this epoch was answered.
    pub acquired_at_ms: u64,
    /// When this origin stops acting on it unless renewed.
    pub valid_until_ms: u64,
    /// Still this origin's to hold (false: a round is finishing on it before it is
    /// given back).
    pub offered: bool,
}

/// This origin's part of the control loop, for `/readyz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlStatus {
    /// Wall-clock ms of this view.
    pub at_ms: u64,
    pub shards: u32,
    pub members: usize,
    pub target: usize,
    pub held: Vec<HeldShard>,
    /// The cluster's shard count when it differs from this origin's: it holds nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<u32>,
}

/// What the shard task and the rounds tell each other: the last [`ControlStatus`],
/// kept current by the task, and the fences the rounds found above their grants.
#[derive(Debug, Default)]
pub struct ControlState {
    status: Mutex<Option<ControlStatus>>,
    /// Per shard, the highest epoch a fence refused one of its rounds' writes with.
    fenced: Mutex<BTreeMap<u32, u64>>,
}

impl ControlState {
    /// The status at `now_ms` (grants that ran out since are left out); `None` while
    /// the control loop does not run here.
    pub fn status(&self, now_wall_ms: u64) -> Option<ControlStatus> {
        let mut s = lock(&self.status).clone()?;
        s.held.retain(|h| h.valid_until_ms > now_wall_ms);
        s.at_ms = now_wall_ms;
        Some(s)
    }

    /// A round's write to a placement of `shard` was refused by a fence holding `seen`,
    /// above the grant it was made under: the shard task tells its membership
    /// ([`Membership::fenced_above`]) before the next sync.
    pub fn fenced_above(&self, shard: u32, seen: u64) {
        let mut fenced = lock(&self.fenced);
        let highest = fenced.entry(shard).or_insert(seen);
        *highest = (*highest).max(seen);
    }

    fn take_fenced(&self) -> BTreeMap<u32, u64> {
        std::mem::take(&mut *lock(&self.fenced))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct Table {
    offered: BTreeMap<u32, u64>,
    busy: BTreeSet<u32>,
}

#[derive(Debug)]
struct Shared {
    shards: u32,
    table: Mutex<Table>,
    fences: Vec<watch::Sender<Option<Fence>>>,
    changed: watch::Sender<u64>,
    /// A round ended: a shard may be given back now.
    idle: Notify,
}

/// The rounds' view of the shards this origin holds.
#[derive(Debug)]
pub struct ShardsView {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    stop: CancellationToken,
}

/// A shard a round is using; dropping it ends the round.
#[derive(Debug)]
pub struct Busy<'a> {
    shared: &'a Shared,
    shard: u32,
    lease: LeaseView,
}

impl Busy<'_> {
    /// The shard's grant, checked before each publish and save.
    pub fn lease(&self) -> &LeaseView {
        &self.lease
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.shared.table).busy.remove(&self.shard);
        self.shared.idle.notify_one();
    }
}

impl ShardsView {
    /// The shard of `p`.
    pub fn shard_of(&self, p: &PlacementId) -> u32 {
        allot_core::shard::shard_of(p.as_str(), self.shared.shards)
    }

    /// The shards a round may start on, with their epochs.
    pub fn offered(&self) -> BTreeMap<u32, u64> {
        lock(&self.shared.table).offered.clone()
    }

    /// Marks `shard` busy for a round, if it is still offered and its grant valid.
    pub fn begin(&self, shard: u32) -> Option<Busy<'_>> {
        let mut table = lock(&self.shared.table);
        let lease = LeaseView::new(self.shared.fences.get(shard as usize)?.subscribe());
        if !table.offered.contains_key(&shard) || lease.current().is_none() {
            return None;
        }
        table.busy.insert(shard);
        Some(Busy { shared: &self.shared, shard, lease })
    }

    /// Waits until the offered shards change.
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Leaves the membership, giving every shard back: call once the rounds are over.
    pub fn leave(&self) {
        self.stop.cancel();
    }
}

/// Starts the shard task; the view is what the rounds read.
pub fn spawn(app: Arc<App>) -> (ShardsView, tokio::task::JoinHandle<()>) {
    let shards = app.config.control.shards;
    let shared = Arc::new(Shared {
        shards,
        table: Mutex::default(),
        fences: (0..shards).map(|_| watch::channel(None).0).collect(),
        changed: watch::channel(0).0,
        idle: Notify::new(),
    });
    let stop = CancellationToken::new();
    let view = ShardsView { shared: shared.clone(), changed: shared.changed.subscribe(), stop: stop.clone() };
    app.metrics.shards.shards.set(i64::from(shards));
    (view, tokio::spawn(run(app, shared, stop)))
}

async fn run(app: Arc<App>, shared: Arc<Shared>, stop: CancellationToken) {
    let lease_ms = app.config.control.lease_ms;
    let config = MembershipConfig { shards: shared.shards, lease: LeaseConfig::new(lease_ms) };
    let mut m = Membership::new(app.instance.clone(), config);
    let mut acquired: BTreeMap<u32, u64> = BTreeMap::new();
    let mut stopping = false;
    loop {
        report(&app, &mut acquired, m.expire(mono_ms()));
        for (shard, seen) in app.control.take_fenced() {
            tracing::warn!(
                shard,
                seen,
                "a placement's fence is above this shard's grant; the next renewal, if the shard is still ours, grants it above"
            );
            m.fenced_above(shard, seen, mono_ms());
        }
        if !app.pause.is_paused() || stopping {
            let busy = lock(&shared.table).busy.clone();
            if let Some(request) = m.poll(mono_ms(), &busy) {
                // Given back from now on, before Redis lets anyone else take them.
                let releasing = request
                    .ops
                    .iter()
                    .filter_map(|op| match op {
                        ShardOp::Release { shard, .. } => Some(*shard),
                        ShardOp::Ask { .. } => None,
                    })
                    .collect();
                publish(&app, &shared, &m, &acquired, &releasing);
                let reply = sync(&app, &request).await;
                report(&app, &mut acquired, m.on_reply(mono_ms(), reply));
            }
        }
        publish(&app, &shared, &m, &acquired, &BTreeSet::new());
        if m.has_left() {
            break;
        }
        // Paused, a sync is overdue and waits; grants still run out on time.
        let wait = match app.pause.is_paused() && !stopping {
            true => 50,
            false => m.next_wakeup_ms().saturating_sub(mono_ms()).clamp(1, lease_ms),
        };
        tokio::select! {
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                m.leave();
            }
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = shared.idle.notified() => {}
        }
    }
    app.metrics.control_leader.set(0);
    app.metrics.shards.held.set(0);
    *lock(&app.control.status) = None;
}

/// Runs one sync; `None` when Redis did not answer within the lease time.
async fn sync(app: &App, request: &SyncRequest) -> Option<SyncReply> {
    let cfg = &app.config.control;
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SYNC));
    let mut invocation = SCRIPT.key(keys::MEMBERS);
    invocation.key(keys::MEMBER_INFO).key(keys::LEASE_EPOCH);
    invocation.arg(&app.instance).arg(cfg.lease_ms).arg(if request.leave { "1" } else { "0" }).arg(cfg.shards);
    for op in &request.ops {
        match *op {
            ShardOp::Ask { shard, held, reissue_from } => {
                let kind = reissue_from.map_or_else(|| "a".to_string(), |from| format!("n{from}"));
                invocation.key(keys::shard_lease(shard)).arg(kind).arg(held.unwrap_or(0))
            }
            ShardOp::Release { shard, epoch } => invocation.key(keys::shard_lease(shard)).arg("r").arg(epoch),
        };
    }
    type Raw = (u64, u64, u64, u64, Vec<String>, Vec<i64>);
    let mut c = app.store.conn();
    let asked = invocation.invoke_async::<Raw>(&mut c);
    let (now_ms, garbage_members, garbage_shards, broken, members, outcomes) =
        match tokio::time::timeout(Duration::from_millis(cfg.lease_ms), asked).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => {
                app.metrics.shards.sync_failures.inc();
                tracing::warn!(error = %e, "control shard sync failed");
                return None;
            }
            Err(_) => {
                app.metrics.shards.sync_failures.inc();
                tracing::warn!("control shard sync timed out");
                return None;
            }
        };
    let garbage = &app.metrics.shards.garbage;
    garbage.with_label_values(&["member"]).inc_by(garbage_members);
    garbage.with_label_values(&["shard"]).inc_by(garbage_shards);
    if garbage_members + garbage_shards > 0 {
        tracing::warn!(garbage_members, garbage_shards, "control keys held entries no origin wrote; refused");
    }
    if broken > 0 {
        garbage.with_label_values(&["epoch"]).inc();
        tracing::error!(key = keys::LEASE_EPOCH, "the epoch counter is not a number: no shard can change hands");
    }
    let members = members
        .chunks_exact(3)
        .map(|m| Member {
            id: m[0].clone(),
            shards: m[1].parse().unwrap_or(0),
            since_ms: m[2].parse().unwrap_or(u64::MAX),
        })
        .collect();
    let outcomes = outcomes
        .into_iter()
        .map(|o| match o {
            -1 => OpOutcome::Released,
            e if e > 0 => OpOutcome::Granted { epoch: e as u64 },
            _ => OpOutcome::Refused,
        })
        .collect();
    Some(SyncReply { now_ms, members, outcomes })
}

fn report(app: &App, acquired: &mut BTreeMap<u32, u64>, changes: Vec<Change>) {
    let m = &app.metrics.shards;
    for change in changes {
        match change {
            Change::Acquired { shard, epoch } => {
                m.changes.with_label_values(&["acquired"]).inc();
                acquired.insert(shard, crate::now_ms());
                tracing::info!(instance = %app.instance, shard, epoch, "control shard acquired");
            }
            Change::Lost { shard } => {
                m.changes.with_label_values(&["lost"]).inc();
                tracing::warn!(instance = %app.instance, shard, "control shard lost");
            }
            Change::Released { shard } => {
                m.changes.with_label_values(&["released"]).inc();
                tracing::info!(instance = %app.instance, shard, "control shard given back");
            }
            Change::Rebalanced { target, members } => {
                m.rebalances.inc();
                tracing::info!(instance = %app.instance, target, members, "control shards rebalanced");
            }
            Change::Ignored { entries } => {
                m.garbage.with_label_values(&["member"]).inc_by(u64::from(entries));
                tracing::warn!(entries, "membership entries that are not members; ignored");
            }
        }
    }
}

/// Hands the machine's state to the rounds (fences, offered shards), the metrics and
/// `/readyz`; `releasing` are about to be given back and count as gone already.
fn publish(app: &App, shared: &Shared, m: &Membership, acquired: &BTreeMap<u32, u64>, releasing: &BTreeSet<u32>) {
    let now = mono_ms();
    let mut held: BTreeMap<u32, Fence> = m.held(now).into_iter().collect();
    held.retain(|s, _| !releasing.contains(s));
    for (s, tx) in shared.fences.iter().enumerate() {
        let fence = held.get(&(s as u32)).copied();
        tx.send_if_modified(|f| std::mem::replace(f, fence) != fence);
    }
    let offered: BTreeMap<u32, u64> = m.offered(now).into_iter().map(|(s, f)| (s, f.epoch)).collect();
    let (moved, busy) = {
        let mut table = lock(&shared.table);
        (std::mem::replace(&mut table.offered, offered.clone()) != offered, table.busy.clone())
    };
    if moved {
        shared.changed.send_modify(|n| *n += 1);
    }
    let metrics = &app.metrics;
    metrics.shards.held.set(held.len() as i64);
    metrics.shards.target.set(m.target().len() as i64);
    metrics.shards.members.set(m.live_members() as i64);
    metrics.control_leader.set(i64::from(!held.is_empty()));
    if let Some(max) = held.values().map(|f| f.epoch).max() {
        metrics.control_epoch.set(max as i64);
    }
    let wall = crate::now_ms();
    let status = ControlStatus {
        at_ms: wall,
        shards: shared.shards,
        members: m.live_members(),
        target: m.target().len(),
        // What this origin acts on: shards a round may start on or is using.
        held: held
            .iter()
            .filter(|(s, _)| offered.contains_key(s) || busy.contains(s))
            .map(|(&shard, f)| HeldShard {
                shard,
                epoch: f.epoch,
                acquired_at_ms: acquired.get(&shard).copied().unwrap_or(wall),
                valid_until_ms: wall + f.remaining_ms(now),
                offered: offered.contains_key(&shard),
            })
            .collect(),
        mismatch: m.cluster_shards().filter(|_| m.mismatched()),
    };
    *lock(&app.control.status) = Some(status);
}
