//! Archiver throughput and Parquet size on this machine.
//!
//! Starts its own redis-server and s3s-fs (the test kit's, from `scripts/tools.sh s3`),
//! fills the stream with `EVENTS` sampled events in batches of 100 (the worker's default
//! batch), then times one archiver draining it into Parquet on S3.
//!
//! `cargo run --release -p allot-archive --no-default-features --example archive_bench [EVENTS]`
//! (default 1,024,000 events, a multiple of the 51,200-event flush).

use std::time::{Duration, Instant};

use allot_archive::Archiver;
use allot_core::{CampaignId, Event, EventBatch, EventKind, PlacementId, RequestId};
use allot_testkit::events::xadd_cmd;
use allot_testkit::redis::RedisServer;
use allot_testkit::s3::S3Server;

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
            unreported: false,
        });
    }
    Ok(EventBatch { events })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_024_000);
    let batches = events.div_ceil(100);
    let redis = RedisServer::start();
    let s3 = S3Server::start();

    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut rng = 42u64;
    let mut payload = 0usize;
    for chunk in (0..batches).collect::<Vec<_>>().chunks(200) {
        let mut pipe = redis::pipe();
        for n in chunk {
            let b = batch(*n, &mut rng)?;
            payload += b.to_json().len();
            pipe.add_command(xadd_cmd(&b, 0));
        }
        pipe.exec_async(&mut conn).await?;
    }

    let mut cfg = s3.archive_config();
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
    // Polled every 5 ms, not with the test kit's 50 ms: the wait is the measurement.
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
    Ok(())
}
