#!/usr/bin/env bash
# Runs the archive writer's and the report runner's tests with everything they need: s3s-fs (scripts/tools.sh s3),
# redis-server, and the Python tools (DuckDB, moto_server, cfn-lint, checkov) in the cached
# venv. Each install step is skipped when already done. Extra arguments go to cargo test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/tools.sh redis
bash scripts/tools.sh s3
bash scripts/py-tools.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo test -p allot-archive -p allot-report "$@"
