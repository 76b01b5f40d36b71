//! The `allot-origin` binary: parse arguments, load config, run.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "allot-origin", version, about = "allot's origin service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ingest, admin and the control loop.
    Serve {
        /// TOML config file; ALLOT_* environment variables override it.
        #[arg(long, short, default_value = "allot.toml")]
        config: String,
    },
    /// Run a canned report over the archive (`reports/*.sql`) on Athena or locally.
    Report {
        #[command(flatten)]
        args: allot_archive::cli::ReportArgs,
        /// TOML config file (its `[archive]` section); ALLOT_* environment variables override it.
        #[arg(long, short, default_value = "allot.toml")]
        config: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config } => {
            let config = allot_origin::Config::load(&config).context("loading config")?;
            allot_origin::telemetry::init(&config.log);
            let running = allot_origin::start(config).await.context("starting")?;
            allot_origin::startup::wait_for_signal().await;
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
        Command::Report { args, config } => {
            // A report needs only the archive section; `--list` and `--archive-dir` need
            // no config at all.
            let archive = match allot_origin::Config::load(&config) {
                Ok(c) => c.archive,
                Err(_) if args.list || args.archive_dir.is_some() => None,
                Err(e) => return Err(e).context("loading config"),
            };
            print!("{}", args.run(archive.as_ref()).await?);
            Ok(())
        }
    }
}
