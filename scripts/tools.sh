#!/usr/bin/env bash
# Installs the build and run tools allot needs, into a cache outside the repository so
# that fresh clones (CI) reuse them. Idempotent: every step is skipped when the right
# version is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ALLOT_CACHE="${ALLOT_CACHE:-$HOME/.cache/allot}"
TOOLS="$ALLOT_CACHE/tools"
mkdir -p "$TOOLS/bin"

WASM_BINDGEN_VERSION=0.2.130
S3S_FS_VERSION=0.14.1

log() { printf '[tools] %s\n' "$*" >&2; }

cargo_tool() { # name version binary [extra args...]
  local name="$1" version="$2" bin="$3"; shift 3
  local stamp="$TOOLS/.$name-$version"
  if [[ -f "$stamp" && -x "$TOOLS/bin/$bin" ]]; then return 0; fi
  log "installing $name $version (cached in $TOOLS)"
  CARGO_TARGET_DIR="$ALLOT_CACHE/tool-target" \
    cargo install "$name" --version "$version" --root "$TOOLS" "$@"
  touch "$stamp"
}

need_wasm_target() {
  rustup target list --installed | grep -qx wasm32-unknown-unknown \
    || rustup target add wasm32-unknown-unknown
}

need_redis() {
  command -v redis-server >/dev/null && return 0
  log "installing redis-server"
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
}

need_wrk() {
  command -v wrk >/dev/null && return 0
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
}

need_npm() {
  # package-lock.json pins wrangler, workerd, binaryen and esbuild.
  local stamp="$ROOT/node_modules/.allot-lock-hash"
  local hash; hash="$(sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then return 0; fi
  log "npm ci"
  (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$hash" > "$stamp"
}

worker_tools() {
  need_wasm_target
  cargo_tool wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen
  need_npm
}

# promtool checks the alert rules (ops/prometheus). Debian's prometheus package ships it;
# only the binary is extracted into the cache, so no Prometheus server is installed.
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1
need_promtool() {
  local stamp="$TOOLS/.promtool-$PROMETHEUS_DEB_VERSION"
  if [[ -f "$stamp" && -x "$TOOLS/bin/promtool" ]]; then return 0; fi
  log "extracting promtool from Debian's prometheus $PROMETHEUS_DEB_VERSION (cached in $TOOLS)"
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download -qq "prometheus=$PROMETHEUS_DEB_VERSION" 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq "prometheus=$PROMETHEUS_DEB_VERSION"; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$TOOLS/bin/promtool"
  rm -rf "$tmp"
  touch "$stamp"
}

# A real browser for the console's test: Debian's chromium, driven by Playwright.
need_browser() {
  command -v chromium >/dev/null && return 0
  log "installing chromium"
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
}

s3_tools() {
  cargo_tool s3s-fs "$S3S_FS_VERSION" s3s-fs --features binary
}

case "${1:-all}" in
  wasm) need_wasm_target ;;
  redis) need_redis ;;
  worker) worker_tools ;;
  s3) s3_tools ;;
  wrk) need_wrk ;;
  promtool) need_promtool ;;
  browser) need_browser ;;
  all) need_wasm_target; need_redis; worker_tools; s3_tools; need_promtool; need_browser ;;
  *) echo "usage: $0 [wasm|redis|worker|s3|wrk|promtool|browser|all]" >&2; exit 2 ;;
esac
