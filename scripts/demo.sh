#!/usr/bin/env bash
# The demo: installs what is missing (idempotent, cached in ~/.cache/allot), builds the
# origin, the report runner, the edge worker and the demo driver, then runs the whole system on this
# machine (redis-server, s3s-fs, origin, edge worker in workerd with a local KV) and drives
# synthetic traffic through it, printing the convergence live. Ctrl-C stops everything.
# Arguments go to allot-demo (see `--help`): --rps, --seconds, --period, --platforms,
# --countries.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ALLOT_CACHE="${ALLOT_CACHE:-$HOME/.cache/allot}"
bash scripts/tools.sh redis >&2
bash scripts/tools.sh worker >&2
bash scripts/tools.sh s3 >&2
bash scripts/build-worker.sh >&2
log() { printf '[demo] %s\n' "$*" >&2; }
# Cargo's own progress lines go to the terminal: a first build compiles for minutes.
log "building the origin and the demo driver (release; a first build takes a few minutes)"
cargo build --release -p allot-origin -p allot-e2e --bins
log "building allot-report, which prints the delivery report at the end (its embedded SQL engine is the longest part of a first build)"
cargo build --release -p allot-report --bins
log "starting the system"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET/release/allot-demo" "$@"
