//! `allot-report NAME --from DAY --to DAY [--engine athena|local] [--format table|csv|json]`:
//! runs a canned report (`reports/*.sql`). The origin's `report` subcommand calls the same
//! library function; this binary exists for analysts' machines and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use allot_archive::report::{self, ReportRequest};
use allot_archive::{ArchiveConfig, Engine, Format};
use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "allot-report", about = "Run one of allot's canned reports on Athena or locally")]
struct Args {
    /// Report name (see --list).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// First day, inclusive (YYYY-MM-DD, UTC).
    #[arg(long, required_unless_present = "list")]
    from: Option<String>,
    /// Last day, inclusive (YYYY-MM-DD, UTC).
    #[arg(long, required_unless_present = "list")]
    to: Option<String>,
    #[arg(long, default_value = "athena")]
    engine: String,
    #[arg(long, default_value = "table")]
    format: String,
    /// Archive configuration (JSON, see ArchiveConfig).
    #[arg(long, env = "ALLOT_ARCHIVE_CONFIG")]
    config: Option<PathBuf>,
    /// Local engine only: read the archive from this directory instead of S3.
    #[arg(long)]
    archive_dir: Option<PathBuf>,
    /// List the reports and exit.
    #[arg(long)]
    list: bool,
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
    if args.list {
        for r in report::REPORTS {
            println!("{:<14} {}", r.name, r.description);
        }
        return Ok(());
    }
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            ArchiveConfig::from_json(&text)?
        }
        None if args.archive_dir.is_some() => ArchiveConfig::new("unused"),
        None => anyhow::bail!("--config (or ALLOT_ARCHIVE_CONFIG) is required"),
    };
    let req = ReportRequest {
        name: args.name.unwrap_or_default(),
        from: args.from.unwrap_or_default().parse()?,
        to: args.to.unwrap_or_default().parse()?,
        engine: args.engine.parse::<Engine>()?,
        format: args.format.parse::<Format>()?,
        archive_dir: args.archive_dir,
    };
    print!("{}", report::run(&req, &cfg).await?);
    Ok(())
}
