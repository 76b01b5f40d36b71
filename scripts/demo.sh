#!/usr/bin/env bash
# The demo: installs what is missing (idempotent, cached in ~/.cache/allot), builds the
# origin, the edge worker and the demo driver (the report runner in the background), then runs the whole system on this
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
log "building the origin and the demo driver (release; a first build compiles about 300 crates, 6 to 12 minutes on two cores; later runs take seconds)"
cargo build --release -p allot-origin -p allot-e2e --bins
# The report runner embeds a SQL engine, several more minutes on a first build: it builds
# in the background at low priority while the demo runs, and the demo prints its report
# at the end if it is ready by then.
REPORT_LOG="$ALLOT_CACHE/demo-report-build.log"
log "building allot-report in the background (nice 19; log: $REPORT_LOG)"
nohup nice -n 19 cargo build --release -p allot-report --bins >"$REPORT_LOG" 2>&1 &
log "starting the system"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET/release/allot-demo" "$@"
