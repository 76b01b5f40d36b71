//! The analysts' canned reports: SQL files run on Athena or on the embedded engine.
//!
//! The SQL lives in `reports/*.sql` at the repository root (compiled in here), written
//! in the subset both Athena (Trino) and DataFusion accept, over one table `events`
//! partitioned by `dt` and `hour` (strings, as partition projection yields them). The
//! only parameters are the inclusive day range, substituted after [`Day`] has parsed
//! them, so nothing user-supplied reaches the SQL unchecked.

use std::path::PathBuf;
use std::str::FromStr;

use allot_archive::ArchiveConfig;
use allot_archive::partition::Day;

use crate::ReportError;
pub use crate::table::Format;
use crate::table::ResultTable;

/// A canned report.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub name: &'static str,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every report, by name.
pub const REPORTS: &[Report] = &[
    Report {
        name: "delivery",
        description: "estimated delivery and share (95 % CI) per placement, campaign and day",
        sql: include_str!("../../reports/delivery.sql"),
    },
    Report {
        name: "sampling",
        description: "sample volume and sample rate per placement and hour",
        sql: include_str!("../../reports/sampling.sql"),
    },
    Report {
        name: "plan_versions",
        description: "plan versions in use per placement and hour",
        sql: include_str!("../../reports/plan_versions.sql"),
    },
];

/// The report names, for usage messages.
pub fn names() -> Vec<&'static str> {
    REPORTS.iter().map(|r| r.name).collect()
}

pub fn find(name: &str) -> Result<&'static Report, ReportError> {
    REPORTS
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ReportError::Argument(format!("unknown report {name:?} (known: {})", names().join(", "))))
}

/// The report's SQL for the inclusive day range, without comment lines.
pub fn sql(name: &str, from: Day, to: Day) -> Result<String, ReportError> {
    if from > to {
        return Err(ReportError::Argument(format!("--from {from} is after --to {to}")));
    }
    let report = find(name)?;
    let body: Vec<&str> = report.sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
    Ok(body.join("\n").replace("{{from}}", &from.to_string()).replace("{{to}}", &to.to_string()))
}

/// Which engine runs the SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Athena,
    Local,
}

impl FromStr for Engine {
    type Err = ReportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "athena" => Ok(Self::Athena),
            "local" => Ok(Self::Local),
            _ => Err(ReportError::Argument(format!("unknown engine {s:?} (athena or local)"))),
        }
    }
}

/// One `report` invocation.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    pub name: String,
    pub from: Day,
    pub to: Day,
    pub engine: Engine,
    pub format: Format,
    /// For the local engine: read the archive from this directory (laid out like the
    /// bucket under the prefix, i.e. containing `events/`) instead of from S3.
    pub archive_dir: Option<PathBuf>,
}

/// Runs a report and returns its result.
pub async fn query(req: &ReportRequest, cfg: &ArchiveConfig) -> Result<ResultTable, ReportError> {
    let sql = sql(&req.name, req.from, req.to)?;
    match req.engine {
        Engine::Athena => crate::athena::query(cfg, &sql).await,
        #[cfg(feature = "local-engine")]
        Engine::Local => crate::local::query(cfg, req.archive_dir.as_deref(), &sql).await,
        #[cfg(not(feature = "local-engine"))]
        Engine::Local => Err(ReportError::Local("built without the local-engine feature".into())),
    }
}

/// Runs a report and renders it in the requested format.
pub async fn run(req: &ReportRequest, cfg: &ArchiveConfig) -> Result<String, ReportError> {
    Ok(query(req, cfg).await?.render(req.format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_checked_days_and_strips_comments() {
        let (from, to) = ("2026-01-01".parse().unwrap(), "2026-01-31".parse().unwrap());
        for name in names() {
            let sql = sql(name, from, to).unwrap();
            assert!(sql.contains("'2026-01-01'") && sql.contains("'2026-01-31'"), "{name}");
            assert!(!sql.contains("{{") && !sql.contains("--"), "{name}: {sql}");
            assert!(sql.contains("FROM events"), "{name}");
        }
        assert!(sql("delivery", to, from).unwrap_err().to_string().contains("after"));
        assert!(sql("nope", from, to).unwrap_err().to_string().contains("known: delivery, sampling, plan_versions"));
        assert!("trino".parse::<Engine>().is_err());
    }
}
