//! Archiver throughput and Parquet size on this machine.
//!
//! Starts its own redis-server and s3s-fs (from `scripts/tools.sh s3`) on free ports,
//! fills the stream with `EVENTS` sampled events in batches of 100 (the worker's default
//! batch), then times one archiver draining it into Parquet on S3.
//!
//! `cargo run --release -p allot-archive --no-default-features --example archive_bench [EVENTS]`
//! (default 1,024,000 events, a multiple of the 51,200-event flush).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allot_archive::{ArchiveConfig, Archiver};
use allot_core::{CampaignId, Event, EventBatch, EventKind, PlacementId, RequestId};
use anyhow::Context;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(cmd: &mut Command, port: u16) -> anyhow::Result<Proc> {
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("{cmd:?}"))?;
    let p = Proc(child);
    wait_for(port)?;
    Ok(p)
}

fn batch(n: u64, rng: &mut u64) -> anyhow::Result<EventBatch> {
    let campaigns: Vec<CampaignId> =
        ["summer_sale", "brand_x", "app_install"].iter().map(|c| CampaignId::parse(*c)).collect::<Result<_, _>>()?;
    let placement = PlacementId::parse("home_feed")?;
    let mut events = Vec::new();
    for i in 0..100u64 {
        *rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let r = *rng;
        let ad = match r % 10 {
            0..=4 => Some(campaigns[0].clone()),
            5..=7 => Some(campaigns[1].clone()),
            8 => Some(campaigns[2].clone()),
            _ => None,
        };
        let kind = if i % 4 == 3 && ad.is_some() { EventKind::Impression } else { EventKind::Allocation };
        events.push(Event {
            kind,
            event_time_ms: 1_795_600_000_000 + (n * 100 + i) * 20,
            request_id: RequestId::from_random(u128::from(r) << 64 | u128::from(r.rotate_left(17))),
            placement: placement.clone(),
            ad_id: ad,
            plan_version: 40 + n / 500,
            sample_rate: 0.05,
            eligible: if kind == EventKind::Allocation { campaigns.clone() } else { Vec::new() },
            platform: Some(["ios", "android", "web"][(r >> 8) as usize % 3].into()),
            country: Some(["DE", "FR", "US", "GB", "IT"][(r >> 16) as usize % 5].into()),
            colo: Some(["FRA", "CDG", "IAD"][(r >> 24) as usize % 3].into()),
        });
    }
    Ok(EventBatch { events })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_024_000);
    let batches = events.div_ceil(100);
    let cache = std::env::var_os("ALLOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/allot"));
    let root = std::env::temp_dir().join(format!("allot-archive-bench-{}", std::process::id()));
    std::fs::create_dir_all(root.join("bench"))?;

    let redis_port = free_port()?;
    let _redis = spawn(
        Command::new("redis-server").args(["--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"]),
        redis_port,
    )?;
    let s3_port = free_port()?;
    let _s3 = spawn(
        Command::new(cache.join("tools/bin/s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
            .args(["--access-key", "AKBENCH", "--secret-key", "bench-secret"])
            .arg(&root),
        s3_port,
    )?;

    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let client = redis::Client::open(redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut rng = 42u64;
    let mut payload = 0usize;
    for chunk in (0..batches).collect::<Vec<_>>().chunks(200) {
        let mut pipe = redis::pipe();
        for n in chunk {
            let json = batch(*n, &mut rng)?.to_json();
            payload += json.len();
            pipe.cmd("XADD").arg("allot:events").arg("*").arg("p").arg("home_feed").arg("e").arg(json).arg("r").arg(0);
        }
        pipe.exec_async(&mut conn).await?;
    }

    let mut cfg = ArchiveConfig::new("bench");
    cfg.endpoint = Some(format!("http://127.0.0.1:{s3_port}"));
    cfg.access_key_id = Some("AKBENCH".into());
    cfg.secret_access_key = Some("bench-secret".into());
    cfg.path_style = true;
    // Two reads of 256 entries x 100 events: with EVENTS a multiple of this, every flush
    // is size-triggered and the timing includes no age-triggered wait.
    cfg.flush_max_rows = 51_200;
    cfg.flush_max_age_secs = 2;
    let archiver = Archiver::new(cfg).await?;
    let m = archiver.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        archiver
            .run(client, async move {
                let _ = stopped.await;
            })
            .await
    });
    while m.events.entries_archived.get() < batches {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "archiver did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    task.await??;
    let rows = m.events.rows_written.get();
    let bytes = m.events.bytes_written.get();
    println!("events archived:      {rows}");
    println!("stream payload (JSON): {:.1} bytes/event", payload as f64 / rows as f64);
    println!("parquet objects:      {}", m.events.objects_written.get());
    println!("parquet bytes:        {bytes} ({:.1} bytes/event)", bytes as f64 / rows as f64);
    println!("time:                 {secs:.2} s ({:.0} events/s)", rows as f64 / secs);
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
