//! `allot-report NAME --from DAY --to DAY [--engine athena|local] [--format table|csv|json]
//! [--config FILE]`: runs a canned report (`reports/*.sql`). The configuration is the
//! origin's TOML (its `[archive]` table) or that section alone as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_report::cli::ReportArgs;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "allot-report", about = "Run one of allot's canned reports on Athena or locally")]
struct Args {
    #[command(flatten)]
    report: ReportArgs,
    /// The origin's TOML configuration (its `[archive]` table), or the archive section as
    /// a `.json` file. Not needed for `--list` or the local engine over `--archive-dir`.
    #[arg(long, env = "ALLOT_REPORT_CONFIG")]
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
    let cfg = args.config.as_deref().map(allot_report::config::load).transpose()?;
    print!("{}", args.report.run(cfg.as_ref()).await?);
    Ok(())
}
