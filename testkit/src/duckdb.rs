//! DuckDB (from PyPI, in the tools virtualenv): a third-party Parquet reader, so tests
//! check the archive as analysts' tools see it, not as the writer thinks it is.

use std::process::Command;

use anyhow::{Context, bail};

use crate::process::venv_bin;

/// Runs `sql` and returns its rows, each value as DuckDB's Python client gives it in
/// JSON (times and other non-JSON types as text).
pub fn try_query(sql: &str) -> anyhow::Result<Vec<Vec<serde_json::Value>>> {
    let script = "import duckdb, json, sys\n\
                  rows = duckdb.sql(sys.argv[1]).fetchall()\n\
                  print(json.dumps([list(r) for r in rows], default=str))";
    let out = Command::new(venv_bin("python")).args(["-c", script, sql]).output().context("run python")?;
    if !out.status.success() {
        bail!("duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("duckdb's rows as JSON")
}

/// [`try_query`], panicking on failure (in a test, the clearest report).
pub fn query(sql: &str) -> Vec<Vec<serde_json::Value>> {
    try_query(sql).unwrap_or_else(|e| panic!("{e:#}\nquery: {sql}"))
}
