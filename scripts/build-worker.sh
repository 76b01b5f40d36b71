#!/usr/bin/env bash
# Builds the edge worker (worker/) into worker/build/: index_bg.wasm and index.js, the
# worker's own entry module (worker/entry.mjs) bundled with wasm-bindgen's glue. That
# pair is what workerd loads (wrangler.toml, bench/workerd.capnp, the tests). Installs
# what is missing first.
#
# The steps are those of workers-rs' worker-build except the last: cargo (profile
# `wasm`), wasm-bindgen (module target, with the reset function the entry module uses
# to replace a trapped instance), wasm-opt, then esbuild bundles worker/entry.mjs
# instead of worker-build's generated entry, which costs every request a
# `WorkerEntrypoint` and two `Proxy`s (docs/performance.md, "Edge worker").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${ALLOT_CACHE:-$HOME/.cache/allot}/tools"

bash "$ROOT/scripts/tools.sh" worker

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/worker/build"
BINDGEN="$OUT/bindgen"

# `wasm` is the profile in the root Cargo.toml (opt-level 3, fat LTO, one codegen unit,
# `panic = "abort"`, stripped). The variable makes wasm-bindgen's macros use js-sys'
# futures, as worker-build does.
(cd "$ROOT/worker" && WASM_BINDGEN_USE_JS_SYS=1 cargo build --lib --profile wasm \
  --target wasm32-unknown-unknown >&2)

rm -rf "$OUT"
mkdir -p "$BINDGEN"
# --experimental-reset-state-function: `__wbg_reset_state()` instantiates the module
# afresh; closures of the old instance refuse to run after it.
"$TOOLS/bin/wasm-bindgen" "$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm/allot_worker.wasm" \
  --out-dir "$BINDGEN" --out-name index --target module --no-typescript \
  --experimental-reset-state-function

# The features workerd runs, listed rather than --all-features so that no newer
# encoding is emitted before workerd supports it (worker-build's list). --debuginfo
# keeps the names section for stack traces.
"$ROOT/node_modules/.bin/wasm-opt" -Oz \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-bulk-memory --enable-multivalue --enable-reference-types --enable-exception-handling \
  --debuginfo "$BINDGEN/index_bg.wasm" -o "$OUT/index_bg.wasm"

# workerd imports a .wasm module as a compiled WebAssembly.Module by default, so the
# glue's source-phase import becomes a plain one (worker-build does the same).
"$ROOT/node_modules/.bin/esbuild" "$ROOT/worker/entry.mjs" --bundle --format=esm --minify \
  --external:./index_bg.wasm --external:'cloudflare:*' --log-level=warning \
  --outfile="$OUT/index.js"
sed -i 's/import source \([A-Za-z_$][A-Za-z0-9_$]*\) from/import \1 from/' "$OUT/index.js"
grep -q 'from"./index_bg.wasm"\|from "./index_bg.wasm"' "$OUT/index.js" \
  || { echo "build-worker: the bundle does not import ./index_bg.wasm" >&2; exit 1; }
rm -rf "$BINDGEN"

wasm="$OUT/index_bg.wasm"
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "worker built: $wasm ($raw bytes raw, $gz bytes gzipped)"
