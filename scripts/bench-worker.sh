#!/usr/bin/env bash
# Throughput of the edge worker against a minimal JS worker, side by side in one
# `workerd serve` (bench/workerd.capnp), warm isolates, wrk -t1 -c32 on loopback.
# Rounds alternate between the two so that background load hits both alike; the
# summary is the median of the rounds. Prints rps, p99, the ratio and the Wasm size.
# With MINIFLARE=1 each round also measures the same worker served through Miniflare
# (bench/miniflare.mjs), as the end-to-end stack and the demo serve it, so the cost of
# that hosting is told from the worker's own. With OPEN_LOOP_RATES (e.g. 5000,10000)
# both workers are then also measured at those constant arrival rates, open-loop
# (`allot-edge-latency`): wrk's p99 is each worker's at its own saturation, mostly
# queueing, while at one rate both keep up with it is the worker's own latency.
#
#   scripts/bench-worker.sh            (ROUNDS=3 DURATION=10s by default)
#   MINIFLARE=1 scripts/bench-worker.sh
#   OPEN_LOOP_RATES=5000,10000 scripts/bench-worker.sh   (OPEN_LOOP_CONCURRENCY: 256)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"

DATE="$(sed -n '0,/^compatibility_date = "\(.*\)"$/s//\1/p' wrangler.toml)"
grep -q "^const compatibilityDate :Text = \"$DATE\";" bench/workerd.capnp || {
  echo "bench/workerd.capnp must run the worker at wrangler.toml's compatibility date ($DATE)" >&2
  exit 1
}
bash scripts/build-worker.sh
bash scripts/tools.sh wrk
if [[ -n "${OPEN_LOOP_RATES:-}" ]]; then
  [[ "$DURATION" =~ ^[0-9]+s$ && "$OPEN_LOOP_RATES" =~ ^[0-9]+(,[0-9]+)*$ ]] || {
    echo "bench: with OPEN_LOOP_RATES, DURATION must be whole seconds (10s) and the rates like 5000,10000" >&2
    exit 1
  }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  cargo build --release -q -p allot-e2e --bin allot-edge-latency
fi

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
ALLOT_PORT="$(free_port)"
MINIMAL_PORT="$(free_port)"

LOG="$(mktemp)"
node_modules/.bin/workerd serve bench/workerd.capnp \
  --socket-addr "allot=127.0.0.1:$ALLOT_PORT" --socket-addr "minimal=127.0.0.1:$MINIMAL_PORT" >"$LOG" 2>&1 &
WORKERD=$!
MF=""
trap 'kill "$WORKERD" $MF 2>/dev/null; wait "$WORKERD" $MF 2>/dev/null; rm -f "$LOG" "$LOG.mf"' EXIT

AD_URL="http://127.0.0.1:$ALLOT_PORT/v1/ad?placement=bench&platform=ios&country=DE"
MINIMAL_URL="http://127.0.0.1:$MINIMAL_PORT/"
for _ in $(seq 1 100); do
  curl -sf "$AD_URL" >/dev/null && curl -sf "$MINIMAL_URL" >/dev/null && break
  kill -0 "$WORKERD" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$AD_URL" >/dev/null || { echo "bench: the worker does not answer" >&2; cat "$LOG" >&2; exit 1; }

# Warm both isolates (plan cache, JIT).
wrk -t1 -c32 -d3s "$AD_URL" >/dev/null
wrk -t1 -c32 -d3s "$MINIMAL_URL" >/dev/null

# The same worker through Miniflare, and that Miniflare's workerd (a descendant of node).
if [[ "${MINIFLARE:-0}" == 1 ]]; then
  node bench/miniflare.mjs >"$LOG.mf" 2>&1 &
  MF=$!
  for _ in $(seq 1 300); do grep -q '^listening' "$LOG.mf" && break; sleep 0.1; done
  grep -q '^listening' "$LOG.mf" || { echo "bench: Miniflare did not start" >&2; cat "$LOG.mf" >&2; exit 1; }
  MF_URL="$(sed -n 's/^listening //p' "$LOG.mf")/v1/ad?placement=bench&platform=ios&country=DE"
  descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
  MF_WORKERD="$(for p in $(descendants "$MF"); do grep -q workerd "/proc/$p/comm" && echo "$p"; done | head -1)"
  [[ -n "$MF_WORKERD" ]] || { echo "bench: no workerd below Miniflare" >&2; exit 1; }
  curl -sf "$MF_URL" >/dev/null || { echo "bench: the worker under Miniflare does not answer" >&2; exit 1; }
  wrk -t1 -c32 -d3s "$MF_URL" >/dev/null
fi

# A workerd's CPU time so far, in clock ticks (user + system, all threads).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/${1:-$WORKERD}/stat"; }
HZ="$(getconf CLK_TCK)"

# "rps p99_ms non2xx cpu_us_per_request" of one wrk run. The other worker is idle
# meanwhile, so workerd's CPU time is this worker's; unlike rps, it barely moves when
# other processes compete for the cores.
measure() {
  local t0 out t1
  t0="$(cpu_ticks "${2:-}")"
  out="$(wrk -t1 -c32 -d"$DURATION" --latency "$1")"
  t1="$(cpu_ticks "${2:-}")"
  echo "$out" | awk -v ticks="$((t1 - t0))" -v hz="$HZ" '
    /Requests\/sec:/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    $1 == "99%" {
      v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); p99 = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v); p99 = v }
      else if (v ~ /s$/) { sub(/s$/, "", v); p99 = v * 1000 }
    }
    /requests in/ { n = $1 }
    END { printf "%.0f %.2f %d %.1f\n", rps, p99, bad + 0, ticks * 1e6 / hz / n }'
}

declare -a A_RPS A_P99 A_CPU M_RPS M_P99 M_CPU F_RPS F_P99 F_CPU
printf '%-6s %10s %10s %10s %12s %10s %10s %7s\n' round allot_rps allot_p99 allot_cpu minimal_rps min_p99 min_cpu ratio
for r in $(seq 1 "$ROUNDS"); do
  read -r a_rps a_p99 a_bad a_cpu < <(measure "$AD_URL")
  read -r m_rps m_p99 _ m_cpu < <(measure "$MINIMAL_URL")
  [[ "$a_bad" == 0 ]] || { echo "bench: $a_bad non-2xx answers from the worker" >&2; exit 1; }
  A_RPS+=("$a_rps"); A_P99+=("$a_p99"); A_CPU+=("$a_cpu"); M_RPS+=("$m_rps"); M_P99+=("$m_p99"); M_CPU+=("$m_cpu")
  printf '%-6s %10s %8sms %8sus %12s %8sms %8sus %7.2f\n' "$r" "$a_rps" "$a_p99" "$a_cpu" "$m_rps" "$m_p99" "$m_cpu" \
    "$(awk -v a="$a_rps" -v m="$m_rps" 'BEGIN { print a / m }')"
  if [[ -n "$MF" ]]; then
    read -r f_rps f_p99 f_bad f_cpu < <(measure "$MF_URL" "$MF_WORKERD")
    [[ "$f_bad" == 0 ]] || { echo "bench: $f_bad non-2xx answers under Miniflare" >&2; exit 1; }
    F_RPS+=("$f_rps"); F_P99+=("$f_p99"); F_CPU+=("$f_cpu")
    printf '%-6s %10s %8sms %8sus   (the worker through Miniflare)\n' "$r" "$f_rps" "$f_p99" "$f_cpu"
  fi
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
a="$(median "${A_RPS[@]}")"; m="$(median "${M_RPS[@]}")"
printf '%-6s %10s %8sms %8sus %12s %8sms %8sus %7.2f\n' median "$a" "$(median "${A_P99[@]}")" "$(median "${A_CPU[@]}")" \
  "$m" "$(median "${M_P99[@]}")" "$(median "${M_CPU[@]}")" "$(awk -v a="$a" -v m="$m" 'BEGIN { print a / m }')"
if [[ -n "$MF" ]]; then
  printf '%-6s %10s %8sms %8sus   (the worker through Miniflare)\n' median "$(median "${F_RPS[@]}")" \
    "$(median "${F_P99[@]}")" "$(median "${F_CPU[@]}")"
fi
echo "(cpu: workerd CPU time per request; rps ratio = allot / minimal)"

wasm=worker/build/index_bg.wasm
echo "wasm: $(stat -c %s "$wasm") bytes raw, $(gzip -9 -c "$wasm" | wc -c) bytes gzipped"
echo "events at the sink: $(curl -s -H 'authorization: Bearer bench-health-key-0123456789abcdef' "http://127.0.0.1:$ALLOT_PORT/healthz")"

if [[ -n "${OPEN_LOOP_RATES:-}" ]]; then
  echo
  echo "open-loop, ${OPEN_LOOP_RATES} requests/s, $ROUNDS rounds of $DURATION per worker and rate:"
  "$CARGO_TARGET_DIR/release/allot-edge-latency" --rates "$OPEN_LOOP_RATES" --rounds "$ROUNDS" \
    --seconds "${DURATION%s}" --concurrency "${OPEN_LOOP_CONCURRENCY:-256}" --edge "allot=http://127.0.0.1:$ALLOT_PORT" --edge "minimal=http://127.0.0.1:$MINIMAL_PORT"
fi
