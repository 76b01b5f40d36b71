//! `allot-load`: drives `POST /v1/events` with signed bodies and prints a JSON report.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(name = "allot-load", about = "Load generator for the origin's event ingest")]
struct Args {
    /// Origin address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// The shared ingest key.
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Events per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    placements: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Before the run, record the bench placements' plans as published in the Redis of
    /// this origin config (ingest counts only events of published plans).
    #[arg(long)]
    seed_config: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads.max(1)).enable_all().build()?;
    if let Some(path) = &a.seed_config {
        let config = allot_origin::Config::load(path).with_context(|| format!("config {path}"))?;
        runtime.block_on(async {
            let conn = allot_origin::conn::shared(&config.redis).await.context("connect to Redis")?;
            allot_origin::load::seed(&allot_origin::store::Store::new(conn), a.placements)
                .await
                .context("record the bench plans")
        })?;
    }
    let report = runtime
        .block_on(allot_origin::load::run(allot_origin::load::LoadOptions {
            addr: a.addr,
            key: a.key.into_bytes(),
            connections: a.connections,
            duration: Duration::from_secs(a.seconds),
            batch: a.batch,
            placements: a.placements,
        }))
        .map_err(anyhow::Error::msg)
        .context("load run")?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
