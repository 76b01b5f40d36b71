#!/usr/bin/env bash
# The demo: installs what is missing (idempotent, cached in ~/.cache/allot), builds the
# origin, the edge worker and the demo driver, then runs the whole system on this
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
cargo build --release --quiet -p allot-origin -p allot-e2e --bins
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET/release/allot-demo" "$@"
