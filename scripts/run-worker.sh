#!/usr/bin/env bash
# Runs the edge worker locally in workerd (wrangler dev) with a real local KV, persisted
# under .wrangler/state. wrangler builds the worker through wrangler.toml's [build].
#
#   scripts/run-worker.sh                 serve on 127.0.0.1:${PORT:-8787}
#   scripts/run-worker.sh seed PLAN.json  put a plan into the local KV (plan:{placement})
#
# Environment: PORT, ORIGIN_URL (where sampled events go), INGEST_KEY and PUSH_KEYS (the
# secrets shared with the origin), EDGE_KEY (the edges' own secret: sampling and
# impression tokens), HEALTH_KEY (shows /healthz's event counters) — development keys by
# default, in production `wrangler secret put` —
# and CORS_ORIGINS (browser origins allowed on the public routes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/tools.sh worker

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
STATE="$ROOT/.wrangler/state"
WRANGLER="$ROOT/node_modules/.bin/wrangler"

case "${1:-serve}" in
  seed)
    shift
    [[ $# -ge 1 ]] || { echo "usage: $0 seed PLAN.json..." >&2; exit 2; }
    for file in "$@"; do
      placement="$(node -e 'const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); if (typeof p.placement !== "string") process.exit(1); console.log(p.placement)' "$file")" \
        || { echo "$file: not a plan with a placement" >&2; exit 1; }
      "$WRANGLER" kv key put --binding PLANS --local --persist-to "$STATE" "plan:$placement" --path "$file"
      echo "seeded plan:$placement from $file"
    done
    ;;
  serve)
    exec "$WRANGLER" dev --local --ip 127.0.0.1 --port "${PORT:-8787}" \
      --persist-to "$STATE" --show-interactive-dev-session=false --log-level "${LOG_LEVEL:-warn}" \
      --var "INGEST_KEY:${INGEST_KEY:-dev-ingest-key-not-for-production}" \
      --var "PUSH_KEYS:${PUSH_KEYS:-dev-push-key-not-for-production}" \
      ${CORS_ORIGINS:+--var "CORS_ORIGINS:$CORS_ORIGINS"} \
      --var "EDGE_KEY:${EDGE_KEY:-dev-edge-key-not-for-production}" \
      --var "HEALTH_KEY:${HEALTH_KEY:-dev-health-key-not-for-production}" \
      ${ORIGIN_URL:+--var "ORIGIN_URL:$ORIGIN_URL"}
    ;;
  *) echo "usage: $0 [serve | seed PLAN.json...]" >&2; exit 2 ;;
esac
