#!/usr/bin/env bash
# Installs the Python tools the tests use into virtualenvs cached outside the repository:
# `venv` holds DuckDB (a third-party Parquet reader), moto_server (the Athena API),
# cfn-lint and checkov (infra/); `venv-schemathesis` holds schemathesis, the property-based
# API tester run against the origin's OpenAPI document (its own, so its dependencies and
# checkov's never have to agree); `venv-browser` holds Playwright for the console's
# browser test. Idempotent: a venv whose pinned set is installed is
# skipped. Progress goes to stderr.
set -euo pipefail

export ALLOT_CACHE="${ALLOT_CACHE:-$HOME/.cache/allot}"
PY="${PYTHON:-python3}"

log() { printf '[py-tools] %s\n' "$*" >&2; }

venv() { # dir, entry points to check (comma-separated), pins...
  local dir="$1" bins="$2"; shift 2
  local stamp="$dir/.allot-pins" want
  want="$(printf '%s\n' "$@")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dir/bin/python" ]]; then
    return 0
  fi
  if [[ ! -x "$dir/bin/python" ]]; then
    log "creating $dir"
    "$PY" -m venv "$dir"
  fi
  log "installing $*"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  # Fail loudly here rather than in a test if an entry point is missing.
  local bin
  for bin in ${bins//,/ }; do
    [[ -x "$dir/bin/$bin" ]] || { log "missing $dir/bin/$bin"; exit 1; }
  done
  printf '%s' "$want" > "$stamp"
}

venv "$ALLOT_CACHE/venv" moto_server,cfn-lint,checkov \
  "duckdb==1.4.4" "moto[server]==5.2.5" "cfn-lint==1.58.0" "checkov==3.3.30"
"$ALLOT_CACHE/venv/bin/python" -c 'import duckdb' >/dev/null
venv "$ALLOT_CACHE/venv-schemathesis" schemathesis "schemathesis==4.32.5"
# Playwright drives Debian's chromium (scripts/tools.sh browser); its own browser
# download is never used.
venv "$ALLOT_CACHE/venv-browser" python "playwright==1.65.0"
log "ok"
