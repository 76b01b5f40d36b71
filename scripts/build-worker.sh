#!/usr/bin/env bash
# Builds the edge worker (worker/) into worker/build/: the Wasm module plus the JS shim
# workerd loads (worker/build/worker/shim.mjs). Installs what is missing first.
#
# worker-build would download wasm-bindgen, wasm-opt and esbuild; it is pointed at the
# cached wasm-bindgen and at the npm-installed binaryen and esbuild instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${ALLOT_CACHE:-$HOME/.cache/allot}/tools"

bash "$ROOT/scripts/tools.sh" worker

export PATH="$TOOLS/bin:$PATH"
export WASM_BINDGEN_BIN="$TOOLS/bin/wasm-bindgen"
export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$ROOT/node_modules/.bin/esbuild"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

cd "$ROOT/worker"
# `wasm` is the size-optimised profile in the root Cargo.toml.
worker-build --profile wasm "$@" >&2

wasm="$ROOT/worker/build/index_bg.wasm"
[[ -f "$wasm" ]] || { echo "build-worker: $wasm was not produced" >&2; exit 1; }
raw=$(stat -c %s "$wasm")
gz=$(gzip -9 -c "$wasm" | wc -c)
echo "worker built: $wasm ($raw bytes raw, $gz bytes gzipped)"
