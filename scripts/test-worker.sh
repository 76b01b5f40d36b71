#!/usr/bin/env bash
# Tests the edge worker: installs what is missing, builds it, runs the Wasm-only unit
# tests under Node (wasm-bindgen-test), then the HTTP tests (node --test) against the
# built worker in real workerd with a real local KV and a signature-checking origin.
# Exits non-zero if anything fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${ALLOT_CACHE:-$HOME/.cache/allot}/tools"
cd "$ROOT"

bash scripts/build-worker.sh

echo "== wasm-bindgen-test (allot-worker, wasm32 under Node)"
PATH="$TOOLS/bin:$PATH" \
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --target wasm32-unknown-unknown -p allot-worker --lib

echo "== worker HTTP tests (node --test worker/tests/)"
# One file at a time: each starts its own workerd, and the machine has two cores.
node --test --test-concurrency=1 worker/tests/
