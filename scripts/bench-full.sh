#!/usr/bin/env bash
# The whole path under open-loop load, every process on this machine: the load
# generator → the edge worker (as built by scripts/build-worker.sh) in workerd with a
# local KV → the origin binary, control loop live, archiver embedded → Redis with its
# append-only file → the S3 server (s3s-fs). Prints the figures as Markdown tables
# (docs/performance.md, "The full path"), with the machine, the date and the load
# average around the run.
#
#   scripts/bench-full.sh                                   # 10,000 requests/s for 5 minutes
#   RATE=4000,6000,8000,10000 DURATION=60 scripts/bench-full.sh   # a step per rate
#   DURATION=30 scripts/bench-full.sh --copies 2 --json /tmp/full.json
#   scripts/bench-full.sh --edge workerd                    # the edge in plain workerd, not Miniflare
#
# Environment: RATE (requests/s, a comma-separated list runs a step per rate, default
# 10000), DURATION (measured seconds per step, default 300), WARMUP (seconds before
# each step, default 10), PERIOD (control period, seconds, default 5), CONCURRENCY
# (requests in flight at most, default 256), QUIET_RATE and QUIET_SECONDS (a low-rate
# stretch after the steps: how the sample rate follows traffic down; default 25 for 60
# s). Further arguments go to `allot-full-path` (see its --help).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

bash scripts/tools.sh redis >&2
bash scripts/tools.sh s3 >&2
bash scripts/py-tools.sh >&2
bash scripts/build-worker.sh >&2
cargo build --release -q -p allot-origin --bin allot-origin -p allot-e2e --bin allot-full-path >&2

echo "# The full path: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
echo "- Date: $(date -u)"
echo "- Load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- Command: RATE=${RATE:-10000} DURATION=${DURATION:-300} scripts/bench-full.sh $*"
echo
"$CARGO_TARGET_DIR/release/allot-full-path" \
  --rates "${RATE:-10000}" --seconds "${DURATION:-300}" --warmup "${WARMUP:-10}" --period "${PERIOD:-5}" \
  --concurrency "${CONCURRENCY:-256}" --quiet-rate "${QUIET_RATE:-25}" --quiet-seconds "${QUIET_SECONDS:-60}" "$@"
echo "- Load average after: $(cut -d' ' -f1-3 /proc/loadavg); date: $(date -u)"
