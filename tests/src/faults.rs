//! Faults injected into a running [`Stack`], one phase at a time, and the table of what
//! each did to the events (see `tests/tests/faults.rs` and `docs/reliability.md`).
//!
//! A phase is a whole number of control windows: the fault starts a second into its
//! first window and ends in time for the system to recover before the phase's last
//! window closes. The window counts and the archive are then judged per phase, against
//! the client's [`Ledger`] of the same windows.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use allot_testkit::events::now_ms;

use crate::delay::Mode;
use crate::ledger::{Archived, Ledger, window_counts};
use crate::stack::Stack;

/// One fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Nothing: the baseline.
    None,
    /// `kill -9` of origin replica `i`, restarted `down` later.
    KillOrigin { i: usize, down: Duration },
    /// `kill -9` of Redis, started again on its append-only file.
    RestartRedis,
    /// `CLIENT KILL TYPE normal`: every client connection of Redis cut at once.
    ClientKill,
    /// The edge cannot reach any origin (the proxy refuses, or swallows, every
    /// connection) for `down`.
    EdgeCutOff { mode: Mode, down: Duration },
    /// The archive's S3 server stopped for `down`.
    S3Outage { down: Duration },
    /// The control loop's leader pauses, renewals included, between publishing a plan
    /// and storing it, for three lease times (the `stall_before_save` failpoint), while
    /// the other origin runs: the other takes the lease and publishes, and the paused
    /// one's late write must change nothing. A target change (`targets`) makes both
    /// publish.
    StallPublisher { targets: serde_json::Value },
    /// Origin replica `i` restarted with the `exit_after_apply` failpoint: its
    /// aggregator exits after applying entries and before acknowledging them, so they
    /// are delivered again (claimed by the other replica); then restarted normally.
    Redelivery { i: usize },
}

/// A phase of the run.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub fault: Fault,
    /// How many control windows it spans.
    pub windows: u64,
}

/// What a phase did, as it ran.
#[derive(Debug, Clone)]
pub struct Ran {
    pub name: String,
    pub windows: std::ops::RangeInclusive<u64>,
    /// From the fault's end to the first event counted after it.
    pub recovery: Option<Duration>,
    /// Anything worth saying (e.g. a fault that could not be injected).
    pub note: String,
    /// For an S3 outage: the stream entries the archiver group had not acknowledged
    /// when the outage ended (what a length cap below it would have trimmed).
    pub archive_unacked: Option<u64>,
}

/// Sleeps until unix time `ms`.
pub async fn sleep_until_ms(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

/// Events counted in windows `from..` so far (`None` while Redis does not answer).
fn counted_total(stack: &Stack, placement: &str, from: u64) -> Option<u64> {
    let now = now_ms() / stack.options.period_ms;
    tokio::task::block_in_place(|| window_counts(&stack.redis_url, placement, from..=now).map(|c| c.values().sum()))
}

/// Runs `phase` from the start of window `first`: injects the fault, ends it, and
/// measures the recovery until the phase's last window closes.
pub async fn run(stack: &mut Stack, placement: &str, phase: &Phase, first: u64) -> anyhow::Result<Ran> {
    let period = stack.options.period_ms;
    let last = first + phase.windows.max(1) - 1;
    let end_ms = (last + 1) * period;
    sleep_until_ms(first * period + 1_000).await;
    let mut note = String::new();
    let mut archive_unacked = None;
    match &phase.fault {
        Fault::None => {}
        Fault::KillOrigin { i, down } => {
            stack.kill_origin_n(*i)?;
            tokio::time::sleep(*down).await;
            stack.start_origin_n(*i, &[]).await?;
        }
        Fault::RestartRedis => {
            let started = Instant::now();
            tokio::task::block_in_place(|| stack.restart_redis());
            note = format!("Redis down {} ms", started.elapsed().as_millis());
        }
        Fault::ClientKill => {
            let url = stack.redis_url.clone();
            let killed = tokio::task::spawn_blocking(move || -> redis::RedisResult<i64> {
                let mut c = redis::Client::open(url)?.get_connection()?;
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut c)
            })
            .await??;
            note = format!("{killed} connections killed");
        }
        Fault::EdgeCutOff { mode, down } => {
            let proxy = stack.proxy().ok_or_else(|| anyhow::anyhow!("the edge reaches the origin directly"))?;
            proxy.set_mode(*mode);
            tokio::time::sleep(*down).await;
            proxy.set_mode(Mode::Pass);
        }
        Fault::S3Outage { down } => {
            let before = stream_len(stack);
            stack.s3.stop();
            tokio::time::sleep(*down).await;
            let during = stream_len(stack);
            let unacked = unacked_by(stack, allot_core::contract::stream::ARCHIVER_GROUP);
            tokio::task::block_in_place(|| stack.s3.restart());
            note = format!("stream {before} → {during} entries, {unacked} not yet archived, at the outage's end");
            archive_unacked = Some(unacked);
        }
        Fault::StallPublisher { targets } => note = stall_publisher(stack, placement, targets).await?,
        Fault::Redelivery { i } => {
            stack.kill_origin_n(*i)?;
            let failpoint = [("ALLOT_AGGREGATE_FAILPOINT", "exit_after_apply")];
            let code = match stack.spawn_origin_n(*i, &failpoint) {
                Ok(()) => tokio::task::block_in_place(|| stack.wait_origin_exit(*i, 30))?,
                Err(e) => {
                    note = format!("failpoint origin did not start: {e:#}; ");
                    None
                }
            };
            if code == Some(3) {
                note.push_str("exited after apply, before XACK");
            } else {
                note.push_str(&format!(
                    "no failpoint exit (code {code:?}): the origin binary lacks `--features allot-origin/failpoints`"
                ));
            }
            stack.start_origin_n(*i, &[]).await?;
        }
    }
    // Recovery: the first event counted after the fault ended (measured from the first
    // count Redis answers after it, should it still be loading).
    let ended = Instant::now();
    let mut base = counted_total(stack, placement, first);
    let mut recovery = None;
    while now_ms() < end_ms {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if recovery.is_none() {
            match (base, counted_total(stack, placement, first)) {
                (None, now) => base = now,
                (Some(b), Some(n)) if n > b => recovery = Some(ended.elapsed()),
                _ => {}
            }
        }
    }
    Ok(Ran { name: phase.name.clone(), windows: first..=last, recovery, note, archive_unacked })
}

/// Which replica holds a control shard, if one does (the first).
async fn leader(stack: &Stack) -> Option<usize> {
    for i in 0..stack.origin_count() {
        // A replica that is down is not the leader.
        let Ok(r) = stack.client.get(stack.origin_api(i).url("/metrics")).send().await else { continue };
        let text = r.text().await.unwrap_or_default();
        if text.lines().any(|l| l == "allot_control_leader 1") {
            return Some(i);
        }
    }
    None
}

/// See [`Fault::StallPublisher`]: the follower is restarted with the failpoint and the
/// leader killed; once the paused-to-be replica holds every control shard, the targets
/// change (its round pauses before saving) and the other replica runs again beside it,
/// taking the shards over while it is paused.
async fn stall_publisher(stack: &mut Stack, placement: &str, targets: &serde_json::Value) -> anyhow::Result<String> {
    let wait = |what: &'static str| anyhow::anyhow!("stalled publisher: {what}");
    let leader_now = leader(stack).await.ok_or_else(|| wait("no leader"))?;
    let staller = (leader_now + 1) % stack.origin_count();
    stack.kill_origin_n(staller)?;
    stack.start_origin_n(staller, &[("ALLOT_CONTROL_FAILPOINT", "stall_before_save")]).await?;
    // The leader stays down until every shard has moved, then runs again beside it.
    stack.kill_origin_n(leader_now)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let api = stack.origin_api(staller).clone();
    while api.metric("allot_control_shards_held").await < api.metric("allot_control_shards").await {
        anyhow::ensure!(Instant::now() < deadline, wait("the shards did not move to the paused replica"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fenced = "allot_control_fenced_total{step=\"save\"}";
    let before = stack.origin_api(staller).metric(fenced).await;
    // Through the replica that is up (the other one is still down).
    let r = api.put_targets(placement, targets, allot_testkit::origin::MANAGER_TOKEN).await;
    anyhow::ensure!(r.status().is_success(), "PUT /v1/placements/{placement}: {}", r.status());
    stack.start_origin_n(leader_now, &[]).await?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while stack.origin_api(staller).metric(fenced).await <= before {
        anyhow::ensure!(Instant::now() < deadline, wait("the paused replica's save was not refused"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took_over = leader(stack).await;
    stack.kill_origin_n(staller)?;
    stack.start_origin_n(staller, &[]).await?;
    Ok(format!("replica {staller} paused; its late save refused; leader after: {took_over:?}"))
}

/// Entries of the event stream `group` has not acknowledged: its pending entries and
/// those not yet delivered to it.
fn unacked_by(stack: &Stack, group: &str) -> u64 {
    let mut c = stack.redis().conn();
    let pending: redis::streams::StreamPendingReply =
        redis::cmd("XPENDING").arg(allot_core::contract::stream::EVENTS).arg(group).query(&mut c).unwrap_or_default();
    let groups: redis::streams::StreamInfoGroupsReply =
        redis::cmd("XINFO").arg("GROUPS").arg(allot_core::contract::stream::EVENTS).query(&mut c).unwrap_or_default();
    let lag = groups.groups.iter().find(|g| g.name == group).and_then(|g| g.lag).unwrap_or(0) as u64;
    pending.count() as u64 + lag
}

fn stream_len(stack: &Stack) -> u64 {
    let mut c = stack.redis().conn();
    redis::cmd("XLEN").arg(allot_core::contract::stream::EVENTS).query(&mut c).unwrap_or(0)
}

/// A phase judged: the ledger against the counts and the archive.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub acknowledged: u64,
    pub counted: u64,
    /// Archive rows, and the acknowledged ids among them.
    pub archived_rows: u64,
    pub archived_ids: u64,
    /// Acknowledged but not counted (net), and counted beyond what was acknowledged.
    pub count_lost: u64,
    pub count_duplicated: u64,
    /// Acknowledged ids with no archive row, and archive rows beyond one per id.
    pub archive_lost: u64,
    pub archive_duplicated: u64,
    pub recovery: Option<Duration>,
    pub errors: u64,
    pub note: String,
}

impl Row {
    pub fn exactly_once(&self) -> bool {
        self.count_lost + self.count_duplicated + self.archive_lost + self.archive_duplicated == 0
    }
}

/// Judges each phase: `counts` are the final window counts, `archive` the archive's rows.
pub fn judge(ran: &[Ran], ledger: &Ledger, counts: &BTreeMap<u64, u64>, archive: &[Archived]) -> Vec<Row> {
    let by_id: HashMap<&str, &Archived> = archive.iter().map(|a| (a.request_id.as_str(), a)).collect();
    ran.iter()
        .map(|r| {
            let w = r.windows.clone();
            // Counts are by the window the edge stamped, which for a request answered
            // across a window's end only the archive knows.
            let acknowledged = ledger.acknowledged_as_stamped(w.clone(), |id| by_id.get(id).map(|a| a.window));
            let counted: u64 = counts.range(w.clone()).map(|(_, n)| n).sum();
            let in_phase: Vec<&Archived> = archive.iter().filter(|a| w.contains(&a.window)).collect();
            let archived_rows = in_phase.iter().map(|a| a.rows).sum();
            let archived_ids = ledger.ids(w.clone()).filter(|id| by_id.contains_key(id)).count() as u64;
            Row {
                name: r.name.clone(),
                acknowledged,
                counted,
                archived_rows,
                archived_ids,
                count_lost: acknowledged.saturating_sub(counted),
                count_duplicated: counted.saturating_sub(acknowledged),
                archive_lost: ledger.acknowledged(w.clone()) - archived_ids,
                archive_duplicated: in_phase.iter().map(|a| a.rows - 1).sum::<u64>(),
                recovery: r.recovery,
                errors: ledger.errors_in(w),
                note: r.note.clone(),
            }
        })
        .collect()
}

/// The table, in Markdown, as `docs/reliability.md` shows it.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| phase | acknowledged | counted | archived (rows / ids) | lost (counts / archive) | duplicated (counts / archive) | recovery | errors | note |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let recovery = r.recovery.map_or("—".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} / {} | {} / {} | {} / {} | {recovery} | {} | {} |",
            r.name,
            r.acknowledged,
            r.counted,
            r.archived_rows,
            r.archived_ids,
            r.count_lost,
            r.archive_lost,
            r.count_duplicated,
            r.archive_duplicated,
            r.errors,
            r.note
        );
    }
    t
}
