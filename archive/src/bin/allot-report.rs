//! `allot-report NAME --from DAY --to DAY [--engine athena|local] [--format table|csv|json]`:
//! runs a canned report (`reports/*.sql`). The origin's `report` subcommand takes the same
//! arguments ([`allot_archive::cli::ReportArgs`]); this binary exists for analysts'
//! machines, with the archive configuration as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_archive::ArchiveConfig;
use allot_archive::cli::ReportArgs;
use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "allot-report", about = "Run one of allot's canned reports on Athena or locally")]
struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// Archive configuration (JSON, see ArchiveConfig).
    #[arg(long, env = "ALLOT_ARCHIVE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(ArchiveConfig::from_json(&text)?)
        }
        None => None,
    };
    print!("{}", args.report.run(cfg.as_ref()).await?);
    Ok(())
}
