#!/usr/bin/env bash
# The unit costs behind docs/capacity.md, measured on real processes: the origin binary
# (twice: data path and control replica), redis-server, s3s-fs and a KV bulk endpoint,
# all on free loopback ports (allot-capacity, capacity/src/run.rs). Runs 8 and 64
# campaigns (several minutes each), writes docs/capacity/unit-costs.json, then
# regenerates the tables of docs/capacity.md from it.
#
#   scripts/measure-unit-costs.sh            # release build
#   PROFILE=debug scripts/measure-unit-costs.sh   # the debug build CI has (no rebuild after CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=()
[ "$PROFILE" = release ] && flag=(--release)
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(date -u)"
cargo build "${flag[@]}" -q -p allot-origin --bin allot-origin --features allot-origin/failpoints
cargo test "${flag[@]}" -q -p allot-capacity --test unit_costs -- --ignored --nocapture measure_unit_costs
python3 scripts/capacity.py --write docs/capacity.md
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u)"
