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
    /// Check a configuration (the file and the environment) without starting: exits 1
    /// with the reason if the origin would refuse it.
    CheckConfig {
        /// TOML config file; ALLOT_* environment variables override it.
        #[arg(long, short, default_value = "allot.toml")]
        config: String,
        /// List every ALLOT_* variable and the key it sets, instead.
        #[arg(long)]
        list_env: bool,
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
        Command::CheckConfig { list_env: true, .. } => {
            for (var, setting) in allot_origin::config::env::settings() {
                println!("{var:<44} {}", setting.path);
            }
            Ok(())
        }
        Command::CheckConfig { config, .. } => {
            let (_, applied) = allot_origin::Config::load_explained(&config).context("checking config")?;
            println!("{config}: ok");
            for (var, path) in applied {
                println!("  {path} from {var}");
            }
            Ok(())
        }
    }
}
