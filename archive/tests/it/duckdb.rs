//! DuckDB (from PyPI, in the tools virtualenv): a third-party Parquet reader, so the
//! tests check the archive as analysts' tools see it, not as the writer thinks it is.

use std::process::Command;

use allot_testkit::process::venv_bin;

/// Runs `sql` and returns its rows.
pub fn query(sql: &str) -> Vec<Vec<serde_json::Value>> {
    let script = "import duckdb, json, sys\n\
                  rows = duckdb.sql(sys.argv[1]).fetchall()\n\
                  print(json.dumps([list(r) for r in rows], default=str))";
    let out = Command::new(venv_bin("python")).args(["-c", script, sql]).output().expect("run python");
    assert!(out.status.success(), "duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("duckdb json")
}
