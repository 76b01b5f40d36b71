#!/usr/bin/env bash
# Ingest benchmark: a local redis-server, the release origin, and the allot-load
# generator in a second process, all on this machine.
#
#   scripts/bench-ingest.sh            # 20 s per run
#   SECONDS_PER_RUN=30 SINGLE_CONNECTIONS=64 BATCH_CONNECTIONS=8 scripts/bench-ingest.sh
#
# Runs: single-event POSTs, then 100-event POSTs; after each, waits until the
# aggregator has caught up and prints Redis commands per event (INFO commandstats,
# top-level calls by clients and calls made inside Lua scripts), then
# `redis-benchmark -t incr -P 16` for scale. Signatures are made fresh per request
# (current second), so skew and replay checks stay on.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_SECS=${SECONDS_PER_RUN:-20}
SINGLE_CONNS=${SINGLE_CONNECTIONS:-32}
BATCH_CONNS=${BATCH_CONNECTIONS:-4}
LOAD_THREADS=${LOAD_THREADS:-1}
KEY="bench-ingest-key-0123456789abcdef"

cargo build --release -q -p allot-origin --bins
BIN=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
RPORT=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.05; done

cat >"$WORK/allot.toml" <<TOML
listen = "127.0.0.1:0"
[redis]
url = "redis://127.0.0.1:$RPORT"
[ingest]
keys = ["$KEY"]
[control]
# The bench records its plans as published itself (allot-load --seed-config); a control
# loop would withdraw placements that have no targets.
enabled = false
[log]
level = "warn"
TOML
# The "listening" line is logged at info; keep the rest at warn.
ALLOT_LOG_LEVEL="warn,allot_origin::startup=info" "$BIN/allot-origin" serve --config "$WORK/allot.toml" >"$WORK/origin.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '"listening"' "$WORK/origin.log" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep -o '"addr":"[^"]*"' "$WORK/origin.log" | head -1 | cut -d'"' -f4)
echo "origin on $ADDR, redis on $RPORT, $(nproc) cores, $(date -u)"

stats() { redis-cli -p "$RPORT" info commandstats | tr -d '\r' | grep '^cmdstat_' | sed 's/^cmdstat_\([^:]*\):calls=\([0-9]*\).*/\1 \2/'; }
drained() {
  local lag pending
  lag=$(redis-cli -p "$RPORT" xinfo groups allot:events | tr -d '\r' | awk 'f{print; exit} /^lag$/{f=1}')
  pending=$(redis-cli -p "$RPORT" xpending allot:events aggregator | head -1 | tr -d '\r')
  [ "${lag:-1}" = "0" ] && [ "${pending:-1}" = "0" ]
}

run() {
  local batch=$1 conns=$2
  stats >"$WORK/before"
  "$BIN/allot-load" --addr "$ADDR" --key "$KEY" --connections "$conns" --seconds "$RUN_SECS" \
    --batch "$batch" --threads "$LOAD_THREADS" --seed-config "$WORK/allot.toml" | tee "$WORK/report.json"
  for _ in $(seq 600); do drained && break; sleep 0.1; done
  stats >"$WORK/after"
  local events
  events=$(python3 -c "import json; r=json.load(open('$WORK/report.json')); print(r['events_accepted'])")
  if [ "$events" = "0" ]; then echo "no event was accepted: the run measured nothing" >&2; exit 1; fi
  python3 -c "import json; r=json.load(open('$WORK/report.json')); print(f\"  events accepted {r['events_accepted']}, dropped {r['events_dropped']}\")"
  python3 - "$WORK/before" "$WORK/after" "$events" <<'PY'
import sys
def load(p):
    return {k: int(v) for k, v in (l.split() for l in open(p) if l.strip())}
b, a, events = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
d = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0) > 0 and k != "info"}
# Inside Lua scripts: ingest's (EXISTS + SET of the replay memory, one XADD per entry)
# and the aggregator's (EXISTS + SET dedupe marker per stream entry, HINCRBYFLOAT and
# EXPIRE per window delta). Clients send the EVALSHAs, XREADGROUP, XACK and the
# catalogue's reads.
inside = sum(d.get(k, 0) for k in ("set", "exists", "xadd", "hincrbyfloat", "expire"))
total = sum(d.values())
print(f"  redis calls per event: {total / events:.2f} total "
      f"({(total - inside) / events:.2f} sent by clients, {inside / events:.2f} inside scripts)")
print("  by command:", ", ".join(f"{k}={v / events:.3f}" for k, v in sorted(d.items(), key=lambda x: -x[1])))
PY
}

echo "== single-event POSTs ($SINGLE_CONNS connections, ${RUN_SECS}s)"
run 1 "$SINGLE_CONNS"
echo "== 100-event POSTs ($BATCH_CONNS connections, ${RUN_SECS}s)"
run 100 "$BATCH_CONNS"
echo "== redis-benchmark -t incr -P 16"
redis-benchmark -p "$RPORT" -t incr -P 16 -n 2000000 -q | tr '\r' '\n' | grep -v '^$' | tail -1
