//! The one error type of the report runner.

use allot_archive::ArchiveError;

/// Why a report could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("athena: {0}")]
    Athena(String),
    #[error("athena query {query_id} {state}: {reason}")]
    QueryFailed { query_id: String, state: String, reason: String },
    #[error("local engine: {0}")]
    Local(String),
}
