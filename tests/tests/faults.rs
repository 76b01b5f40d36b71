//! The fault-injection suite: sustained load through the edge at sample rate 1 while
//! faults are injected one after another, then every event the edge answered for is
//! looked for in the window counts (exactly once) and in the archive (exactly once).
//!
//! The stack: two origin replicas behind a round-robin, failing-over proxy (the edge
//! talks to the proxy), Redis with its append-only file fsynced on every write, the
//! S3 archive, and the edge in workerd. The faults, each in a phase of whole control
//! windows with time to recover: `kill -9` of an origin (three times), the control
//! loop's leader paused for three lease times while the other origin runs, a Redis restart,
//! `CLIENT KILL TYPE normal`, the edge cut off from the origins, an S3 outage long
//! enough to leave more entries unarchived than a length-capped stream would keep, and
//! entries delivered twice (an aggregator exiting after applying, before acknowledging).
//!
//! The short variant runs with `cargo test` (about two and a half minutes); the long one
//! (`--ignored`, ≥ 2,000 events/s, 60 s outages) is described in `docs/reliability.md`.
//! Both print the table per phase and write it to `$CARGO_TARGET_TMPDIR/faults-*.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use allot_e2e::delay::Mode;
use allot_e2e::faults::{self, Fault, Phase, Row};
use allot_e2e::ledger::{self, Load};
use allot_e2e::stack::{Options, Stack};
use allot_testkit::events::now_ms;
use allot_testkit::poll::eventually;
use allot_testkit::scenario;

const PLACEMENT: &str = "home_feed";

/// One way to run the suite.
struct Variant {
    name: &'static str,
    rps: f64,
    concurrency: usize,
    period_ms: u64,
    edge_batch_max: usize,
    /// The S3 outage must leave more than this many stream entries unarchived: the length
    /// a stream capped with `XADD MAXLEN` (as it once was) would have kept, trimming
    /// the rest unread. The stream now holds them all.
    old_cap: u64,
    edge_cut: Duration,
    s3_down: Duration,
}

const SHORT: Variant = Variant {
    name: "short",
    rps: 300.0,
    concurrency: 16,
    period_ms: 8_000,
    edge_batch_max: 20,
    old_cap: 100,
    edge_cut: Duration::from_secs(12),
    s3_down: Duration::from_secs(16),
};

const LONG: Variant = Variant {
    name: "long",
    rps: 2_000.0,
    concurrency: 64,
    period_ms: 10_000,
    edge_batch_max: 50,
    old_cap: 1_000,
    edge_cut: Duration::from_secs(60),
    s3_down: Duration::from_secs(60),
};

/// The demo's targets with one rate moved, so every round after the change publishes.
fn changed_targets() -> serde_json::Value {
    let mut t = scenario::home_feed();
    t["campaigns"][2]["rate"] = serde_json::json!(0.24);
    t
}

/// At most one request in this many may go unanswered (see `run`).
const UNANSWERED_ONE_IN: u64 = 5_000;

/// The control lease in the suite: short, so three lease times of pause fit a phase.
const LEASE_MS: u64 = 2_000;

fn phases(v: &Variant) -> Vec<Phase> {
    let windows = |d: Duration| (d.as_millis() as u64 + 1_000).div_ceil(v.period_ms) + 1;
    // Two restarts, the lease moving, the pause, the takeover and a restart.
    let stall_windows = windows(Duration::from_millis(LEASE_MS * 3 + 20_000));
    let kill = |i| Fault::KillOrigin { i, down: Duration::from_secs(2) };
    let phase = |name: &str, fault, windows| Phase { name: name.into(), fault, windows };
    // The faults whose effect ends with them first; the Redis faults last, as today a
    // Redis restart stops the aggregators for longer than a phase and would hide what
    // the later faults do.
    vec![
        phase("baseline", Fault::None, 1),
        phase("kill -9 origin 0", kill(0), 1),
        phase("kill -9 origin 1", kill(1), 1),
        phase("kill -9 origin 0 again", kill(0), 1),
        phase("redelivery (exit after apply)", Fault::Redelivery { i: 1 }, 2),
        phase("publisher stalled 3× the lease", Fault::StallPublisher { targets: changed_targets() }, stall_windows),
        phase(
            &format!("edge cut off {} s", v.edge_cut.as_secs()),
            Fault::EdgeCutOff { mode: Mode::Refuse, down: v.edge_cut },
            windows(v.edge_cut),
        ),
        phase(&format!("S3 down {} s", v.s3_down.as_secs()), Fault::S3Outage { down: v.s3_down }, windows(v.s3_down)),
        phase("CLIENT KILL TYPE normal", Fault::ClientKill, 1),
        phase("Redis restart (AOF)", Fault::RestartRedis, 1),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_counted_and_archived_once_through_faults() {
    run(&SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long run: ≥ 2,000 events/s and 60 s outages, about six minutes (docs/reliability.md)"]
async fn long_run_every_acknowledged_event_is_counted_and_archived_once_through_faults() {
    // ALLOT_FAULTS_RPS runs it at another rate: what a smaller machine carries.
    let rps = std::env::var("ALLOT_FAULTS_RPS").ok().map(|r| r.parse().expect("ALLOT_FAULTS_RPS is a number"));
    run(&Variant { rps: rps.unwrap_or(LONG.rps), ..LONG }).await;
}

async fn run(v: &Variant) {
    let options = Options {
        period_ms: v.period_ms,
        min_sample_rate: 1.0,
        edge_via_proxy: true,
        origins: 2,
        redis_aof: true,
        // The windows must outlive the run: their TTL grows with this.
        recent_windows: 60,
        origin_toml: format!("[control]\nlease_ms = {LEASE_MS}\n"),
        edge_batch_max: Some(v.edge_batch_max),
        ..Options::default()
    };
    let mut stack = Stack::start(options).await.unwrap();
    stack.put_placement(PLACEMENT, &scenario::home_feed()).await.unwrap();
    eventually(30, "the edge's first plan", async || stack.edge_plan_version(PLACEMENT).await.unwrap()).await;

    let load = Load {
        edge_url: stack.edge_url.clone(),
        placement: PLACEMENT.into(),
        rps: v.rps,
        concurrency: v.concurrency,
        period_ms: v.period_ms,
        guard_ms: 150,
    }
    .start();

    let mut first = now_ms() / v.period_ms + 1;
    let mut ran = Vec::new();
    for phase in phases(v) {
        let r = faults::run(&mut stack, PLACEMENT, &phase, first).await.unwrap();
        first = r.windows.end() + 1;
        ran.push(r);
    }
    let ledger = load.finish().await.unwrap();
    let windows = *ran[0].windows.start()..=*ran.last().unwrap().windows.end();
    let owed = ledger.acknowledged(windows.clone());

    // Drain: the edge's outbox empty, then the counts and the archive settled (all
    // there, or unchanged for 10 s).
    let (mut last, mut unchanged) = ((u64::MAX, 0, 0), 0);
    for _ in 0..45 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let edge = stack.edge_events().await.unwrap();
        let counted: u64 =
            ledger::window_counts(&stack.redis_url, PLACEMENT, windows.clone()).map(|c| c.values().sum()).unwrap_or(0);
        let archived = ledger::archived(&stack.s3.bucket_dir(), PLACEMENT, v.period_ms).unwrap().len() as u64;
        let now = (edge["waiting"].as_u64().unwrap_or(u64::MAX), counted, archived);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
        if now.0 == 0 && ((counted >= owed && archived >= owed && unchanged >= 1) || unchanged >= 5) {
            break;
        }
    }
    let edge = stack.edge_events().await.unwrap();
    let counts = ledger::window_counts(&stack.redis_url, PLACEMENT, windows.clone()).unwrap();
    let archive = ledger::archived(&stack.s3.bucket_dir(), PLACEMENT, v.period_ms).unwrap();
    let rows = faults::judge(&ran, &ledger, &counts, &archive);
    let table = faults::table(&rows);
    let history = ledger::history_versions(&stack.redis_url, PLACEMENT).unwrap();
    let report = format!(
        "{} variant, {} requests/s, period {} ms, {} events owed, edge {edge}, {} straddling, client errors {:?}, plan history {:?}\n\n{table}",
        v.name,
        v.rps,
        v.period_ms,
        owed,
        ledger.straddled.len(),
        ledger.error_reasons,
        history
    );
    println!("{report}");
    let _ = std::fs::write(format!("{}/faults-{}.md", env!("CARGO_TARGET_TMPDIR"), v.name), &report);

    // Plan versions: unique and never going back, at the origin and at the edge.
    let mut failures = Vec::new();
    if !history.windows(2).all(|w| w[0] > w[1]) {
        failures.push(format!("the origin's plan history is not strictly newest first: {history:?}"));
    }
    let back = ledger.versions_going_back();
    if !back.is_empty() {
        failures.push(format!("the edge's plan version went back: {back:?}"));
    }
    let seen: BTreeSet<u64> = ledger.versions.iter().flatten().copied().collect();
    if let Some(oldest) = history.last()
        && let Some(unknown) = seen.iter().find(|v| **v >= *oldest && !history.contains(*v))
    {
        failures.push(format!("the edge served version {unknown}, which the origin never published"));
    }
    for r in &ran {
        if let Some(unacked) = r.archive_unacked
            && unacked <= v.old_cap
        {
            failures.push(format!("{}: only {unacked} entries waited for S3, not past {}", r.name, v.old_cap));
        }
    }
    // Every phase: every acknowledged event counted once and archived once.
    for r in rows.iter().filter(|r| !r.exactly_once()) {
        failures.push(phase_failure(r));
    }
    // The edge answers every request it is sent, through every fault: an error status is
    // a failure. A request that got no answer at all owes no event (and one the edge did
    // serve would show above as counted twice); the local runtime and the test client
    // lose a few in a run, so a handful is reported, not failed.
    if ledger.refused() > 0 {
        failures.push(format!("the edge answered with errors: {:?}", ledger.error_reasons));
    }
    if ledger.unanswered() * UNANSWERED_ONE_IN > ledger.sent() {
        failures.push(format!(
            "{} of {} requests got no answer (more than 1 in {UNANSWERED_ONE_IN}): {:?}",
            ledger.unanswered(),
            ledger.sent(),
            ledger.error_reasons
        ));
    }
    for counter in ["failed", "dropped", "expired"] {
        if edge[counter].as_u64() != Some(0) {
            failures.push(format!("the edge lost events ({counter}): {edge}"));
        }
    }
    stack.stop();
    assert!(failures.is_empty(), "{}\n\n{report}", failures.join("\n"));
}

fn phase_failure(r: &Row) -> String {
    format!(
        "{}: {} acknowledged, {} counted, {} archived ids ({} rows), {} client errors",
        r.name, r.acknowledged, r.counted, r.archived_ids, r.archived_rows, r.errors
    )
}
