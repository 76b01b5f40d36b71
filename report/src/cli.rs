//! The `allot-report` command line.

use std::path::PathBuf;

use allot_archive::ArchiveConfig;

use crate::ReportError;
use crate::report::{self, ReportRequest};

/// `NAME --from DAY --to DAY [--engine athena|local] [--format table|csv|json]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Report name (see --list).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// First day, inclusive (YYYY-MM-DD, UTC).
    #[arg(long, required_unless_present = "list")]
    pub from: Option<String>,
    /// Last day, inclusive (YYYY-MM-DD, UTC).
    #[arg(long, required_unless_present = "list")]
    pub to: Option<String>,
    /// `athena`, or `local` for the embedded engine over the archive.
    #[arg(long, default_value = "athena")]
    pub engine: String,
    /// `table`, `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Local engine only: read the archive from this directory instead of S3.
    #[arg(long)]
    pub archive_dir: Option<PathBuf>,
    /// List the reports and exit.
    #[arg(long)]
    pub list: bool,
}

impl ReportArgs {
    /// Runs the report (or lists them) and returns what to print. `cfg` may be absent
    /// only for `--list` and for the local engine over `--archive-dir`.
    pub async fn run(self, cfg: Option<&ArchiveConfig>) -> Result<String, ReportError> {
        if self.list {
            return Ok(report::REPORTS.iter().map(|r| format!("{:<14} {}\n", r.name, r.description)).collect());
        }
        let unused;
        let cfg = match cfg {
            Some(cfg) => cfg,
            None if self.archive_dir.is_some() => {
                unused = ArchiveConfig::new("unused");
                &unused
            }
            None => return Err(ReportError::Argument("no archive is configured".into())),
        };
        let req = ReportRequest {
            name: self.name.unwrap_or_default(),
            from: self.from.unwrap_or_default().parse()?,
            to: self.to.unwrap_or_default().parse()?,
            engine: self.engine.parse()?,
            format: self.format.parse()?,
            archive_dir: self.archive_dir,
        };
        report::run(&req, cfg).await
    }
}
