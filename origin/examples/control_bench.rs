//! The control loop at scale: how long a full pass of rounds takes, and its CPU, for
//! many placements on one or two origins (`docs/performance.md`, "Control loop
//! scale-out").
//!
//! For each case (placements × campaigns × origins) it starts a fresh `redis-server`,
//! seeds the placements directly (targets, the registry, and window counts for the
//! windows the rounds will read: every campaign allocated, 32 attribute profiles, some
//! campaigns restricted to a platform or a country), starts the origin binaries, waits
//! until they hold every shard between them, then reads `--passes` full passes from each
//! origin's metrics (`allot_control_pass_duration_seconds{kind="full"}`,
//! `allot_control_pass_placements`) and the CPU the processes used meanwhile
//! (`/proc/<pid>/stat`; Redis's from `INFO cpu`).
//!
//! ```text
//! cargo build --release -p allot-origin --bins --examples
//! target/release/examples/control_bench [--placements 1,100,1000,10000] [--campaigns 8,64] [--origins 1,2] [--passes 2]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use allot_core::contract::keys::{self, PlacementKeys};
use allot_core::shard::shard_of;
use allot_core::{CampaignId, WindowStats};
use allot_testkit::origin::OriginProcess;
use allot_testkit::redis::RedisServer;
use serde_json::json;

const PERIOD_MS: u64 = 10_000;
const PLATFORMS: [&str; 4] = ["ios", "android", "web", "tv"];
const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "GB", "ES", "IT", "NL", "PL"];

fn list(args: &[String], flag: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| default.to_vec(), |v| v.split(',').map(|x| x.parse().expect("a number")).collect())
}

/// Targets with `campaigns` campaigns, a quarter restricted to a platform and a quarter
/// to two countries, asking for 90 % between them.
fn targets(campaigns: usize) -> serde_json::Value {
    let rate = 0.9 / campaigns as f64;
    let list: Vec<_> = (0..campaigns)
        .map(|i| {
            let mut c = json!({"id": format!("c{i}"), "rate": (rate * 10_000.0).floor() / 10_000.0});
            match i % 4 {
                0 => c["eligibility"] = json!({"platforms": [PLATFORMS[i / 4 % PLATFORMS.len()]]}),
                1 => c["eligibility"] = json!({"countries": [COUNTRIES[i % 8], COUNTRIES[(i + 3) % 8]]}),
                _ => {}
            }
            c
        })
        .collect();
    json!({"campaigns": list, "confidence": {"margin": 0.02, "level": 0.95}})
}

/// A window in which every profile saw requests and every campaign was allocated.
fn window(campaigns: usize) -> WindowStats {
    let mut w = WindowStats::default();
    let ids: Vec<CampaignId> = (0..campaigns).map(|i| CampaignId::parse(format!("c{i}")).unwrap()).collect();
    for (pi, p) in PLATFORMS.iter().enumerate() {
        for (ci, c) in COUNTRIES.iter().enumerate() {
            let profile = format!("{p}:{c}");
            for k in 0..(8 + pi + ci) {
                let ad = (k % 3 != 0).then(|| &ids[(pi * 7 + ci * 3 + k) % campaigns]);
                w.record_allocation(100.0, ad, &profile, 1);
            }
        }
    }
    w
}

fn seed(redis: &RedisServer, placements: usize, campaigns: usize) {
    let spec = serde_json::to_string(&targets(campaigns)).unwrap();
    let fields = window(campaigns).to_fields();
    let now = allot_origin::now_ms();
    let current = WindowStats::window_index(now, PERIOD_MS);
    let mut c = redis.conn();
    for chunk in (0..placements).collect::<Vec<_>>().chunks(200) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let p = format!("bench{i:05}");
            let k = PlacementKeys::of_raw(&p);
            pipe.hset_multiple(k.targets(), &[("spec", spec.as_str()), ("rev", "1"), ("updated_by", "bench")]).ignore();
            pipe.hset(keys::REGISTRY, &p, 1).ignore();
            // The windows a round reads during the run: two before, three after.
            for idx in current - 2..=current + 3 {
                pipe.hset_multiple(k.window(idx), &fields).ignore();
            }
        }
        pipe.query::<()>(&mut c).unwrap();
    }
}

fn redis_cpu(redis: &RedisServer) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query(&mut redis.conn()).unwrap();
    let get = |k: &str| -> f64 {
        info.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    };
    get("used_cpu_user:") + get("used_cpu_sys:")
}

#[derive(Debug, Default, Clone, Copy)]
struct Reading {
    passes: f64,
    seconds: f64,
    placements: f64,
    cpu: f64,
}

async fn read(o: &OriginProcess) -> Reading {
    let m = |name: &'static str| async move { o.metric(&format!("{name}{{kind=\"full\"}}")).await };
    Reading {
        passes: m("allot_control_pass_duration_seconds_count").await,
        seconds: m("allot_control_pass_duration_seconds_sum").await,
        placements: m("allot_control_pass_placements_sum").await,
        cpu: allot_testkit::process::cpu_seconds(o.child.id()).unwrap_or(0.0),
    }
}

/// Whether `o` holds a shard with placements, once its first pass over them has ended
/// (a takeover pass, or a full one for an origin that found its shards free).
async fn has_placements(o: &OriginProcess, placements: usize) -> bool {
    let held: Vec<u64> = o
        .control()
        .await
        .and_then(|c| c["held"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["shard"].as_u64())
        .collect();
    let mine = (0..placements).any(|i| held.contains(&u64::from(shard_of(&format!("bench{i:05}"), 64))));
    let first_pass_done = async || {
        o.metric("allot_control_pass_placements_sum{kind=\"takeover\"}").await > 0.0
            || o.metric("allot_control_pass_duration_seconds_count{kind=\"full\"}").await > 0.0
    };
    while mine && !first_pass_done().await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    mine
}

async fn case(placements: usize, campaigns: usize, origins: usize, passes: f64) -> String {
    let redis = RedisServer::start();
    let seeded = Instant::now();
    seed(&redis, placements, campaigns);
    let seeded = seeded.elapsed();
    let toml = format!("[control]\nperiod_ms = {PERIOD_MS}\nrecent_windows = 2\nlease_ms = 10000\n");
    let procs: Vec<OriginProcess> = (0..origins).map(|_| OriginProcess::start(&redis, &toml, &[])).collect();
    for o in &procs {
        o.wait_ready(30).await;
    }
    let share = 64.0 / origins as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut ok = true;
        for o in &procs {
            ok &= o.metric("allot_control_shards_held").await == share;
        }
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the shards did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An origin whose shards hold no placement runs no pass (one placement on two);
    // its takeover pass (the first) may still be running.
    let mut busy = Vec::new();
    for o in &procs {
        busy.push(has_placements(o, placements).await);
    }
    let mut before = Vec::new();
    for o in &procs {
        before.push(read(o).await);
    }
    let redis_before = redis_cpu(&redis);
    let started = Instant::now();
    let mut after = before.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    while after.iter().zip(&before).zip(&busy).any(|((a, b), busy)| *busy && a.passes < b.passes + passes) {
        assert!(Instant::now() < deadline, "not enough full passes in 10 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, o) in procs.iter().enumerate() {
            after[i] = read(o).await;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let redis_used = redis_cpu(&redis) - redis_before;
    let mut cells = Vec::new();
    let (mut total_cpu, mut worst) = (0.0, 0.0f64);
    for (a, b) in after.iter().zip(&before) {
        let n = a.passes - b.passes;
        if n == 0.0 {
            cells.push("no placement".to_string());
            continue;
        }
        let mean = (a.seconds - b.seconds) / n;
        worst = worst.max(mean);
        total_cpu += a.cpu - b.cpu;
        cells.push(format!("{:.0} pl. {:.3} s", (a.placements - b.placements) / n, mean));
    }
    let passes = after.iter().zip(&before).map(|(a, b)| a.passes - b.passes).fold(0.0, f64::max);
    format!(
        "| {placements} | {campaigns} | {origins} | {} | {worst:.3} s | {:.3} s | {:.3} s | {:.2} | {:.0} s |",
        cells.join(" · "),
        total_cpu / passes,
        redis_used / passes,
        (total_cpu + redis_used) / wall,
        seeded.as_secs_f64(),
    )
}

#[tokio::main]
async fn main() {
    allot_origin::telemetry::install_crypto();
    let args: Vec<String> = std::env::args().collect();
    let placements = list(&args, "--placements", &[1, 100, 1_000, 10_000]);
    let campaigns = list(&args, "--campaigns", &[8, 64]);
    let origins = list(&args, "--origins", &[1, 2]);
    let passes = list(&args, "--passes", &[2])[0] as f64;
    println!(
        "| placements | campaigns | origins | per origin: placements, mean full pass | slowest origin's pass | origin CPU per pass | Redis CPU per pass | cores busy | seeding |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for &p in &placements {
        for &c in &campaigns {
            for &o in &origins {
                println!("{}", case(p, c, o, passes).await);
            }
        }
    }
}
