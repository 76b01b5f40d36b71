//! The one error type of the archive crate.
//!
//! Every failure the archiver can meet is one variant here, with a message
//! that names what went wrong; binaries turn it into an exit status and a line on stderr.

/// Why an archive or report operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("s3: {0}")]
    S3(String),
    #[error("parquet encoding: {0}")]
    Parquet(String),
    #[error("consumer name: {0}")]
    Lock(String),
    #[error("the operation was stopped by shutdown")]
    Shutdown,
}
