#!/usr/bin/env bash
# Installs the Python tools the archive tests use (DuckDB as a third-party Parquet reader,
# moto_server as the Athena API, cfn-lint and checkov for infra/) into a virtualenv cached
# outside the repository. Idempotent: skipped when the pinned set is already installed.
# Prints nothing on success except progress on stderr; the venv is $ALLOT_CACHE/venv.
set -euo pipefail

export ALLOT_CACHE="${ALLOT_CACHE:-$HOME/.cache/allot}"
VENV="$ALLOT_CACHE/venv"
PINS=(
  "duckdb==1.4.4"
  "moto[server]==5.2.5"
  "cfn-lint==1.58.0"
  "checkov==3.3.30"
)
STAMP="$VENV/.allot-pins"
WANT="$(printf '%s\n' "${PINS[@]}")"

log() { printf '[py-tools] %s\n' "$*" >&2; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

PY="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
log "installing ${PINS[*]}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
# Fail loudly here rather than in a test if an entry point is missing.
for bin in moto_server cfn-lint checkov; do
  [[ -x "$VENV/bin/$bin" ]] || { log "missing $VENV/bin/$bin"; exit 1; }
done
"$VENV/bin/python" -c 'import duckdb' >/dev/null
printf '%s' "$WANT" > "$STAMP"
log "ok"
