#!/usr/bin/env bash
# The test command: installs what is missing (idempotent, cached in ~/.cache/allot), then
# runs the format and lint checks, the core's wasm32 build, every Rust test (core, sim,
# origin, archive, end-to-end), and the worker's tests in real workerd. Every step runs even
# if an earlier one failed; the last line is the overall count, and the exit code is
# non-zero if anything failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ALLOT_CACHE="${ALLOT_CACHE:-$HOME/.cache/allot}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
LOG="$(mktemp -d)"
trap 'rm -rf "$LOG"' EXIT
failed_steps=()

step() { # name, command...
  local name="$1"; shift
  printf '\n==> %s\n' "$name"
  if "$@" 2>&1 | tee "$LOG/$name.log"; then
    return 0
  fi
  failed_steps+=("$name")
  return 1
}

step install bash -c 'bash scripts/tools.sh all && bash scripts/py-tools.sh' || {
  echo "installing the toolchain failed; nothing else can run" >&2
  exit 1
}

step fmt cargo fmt --all --check
step clippy cargo clippy --all-targets -- -D warnings
step clippy-worker cargo clippy -p allot-worker --target wasm32-unknown-unknown -- -D warnings
step core-wasm32 cargo build -p allot-core --target wasm32-unknown-unknown
# The end-to-end tests run the built worker and the origin binary.
step worker-build bash scripts/build-worker.sh
step bins cargo build --bins --features allot-origin/failpoints
step rust-tests cargo test --no-fail-fast
step worker-tests bash scripts/test-worker.sh

# One closing count over every runner.
passed=0; failed=0
for f in "$LOG"/*.log; do
  while read -r p q; do
    passed=$((passed + p)); failed=$((failed + q))
  done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$f")
  # node --test closes with "# pass N" and "# fail N".
  p=$(awk '/^# pass [0-9]+$/ {s += $3} END {print s + 0}' "$f")
  q=$(awk '/^# fail [0-9]+$/ {s += $3} END {print s + 0}' "$f")
  passed=$((passed + p)); failed=$((failed + q))
done
echo
if ((${#failed_steps[@]})); then
  echo "failed steps: ${failed_steps[*]}"
fi
echo "summary: $passed passed, $failed failed"
((${#failed_steps[@]} == 0))
