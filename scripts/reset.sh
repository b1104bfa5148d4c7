#!/usr/bin/env bash
# `make reset`: start the local system from scratch. Stops what `make up` started, removes
# every app of its base domain from the engine (live-warm infra apps, canonicals, leftovers
# of cold runs: services, volumes, secrets), then deletes run/, the state root and the
# example recipe repositories. Apps of other base domains are left alone.
# Removing only run/ and the state root would leave the infra apps running without their
# config, and the next reconcile would (rightly) refuse to touch them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN_DIR=${RUN_DIR:-$ROOT/run}
export RUN_DIR

DOWN_KEEP_SERVICES=1 scripts/down.sh
if [ -f "$RUN_DIR/ccci.env" ] && [ -x .venv/bin/python ]; then
  (set -a; . "$RUN_DIR/ccci.env"; set +a; .venv/bin/python scripts/reset_apps.py)
else
  echo "reset: no $RUN_DIR/ccci.env: no app of this system to remove from the engine"
fi
scripts/down.sh
state_dir=$( (grep -E '^CCCI_STATE_DIR=' "$RUN_DIR/ccci.env" 2>/dev/null || true) | tail -n 1 | cut -d= -f2-)
if [ -n "$state_dir" ] && [ "$state_dir" != "$ROOT/.state" ]; then
  echo "reset: the state root $state_dir is not the checkout's own; left in place"
fi
rm -rf "$RUN_DIR" "$ROOT/.state" "$ROOT/recipes"
echo "reset: removed $RUN_DIR, $ROOT/.state and $ROOT/recipes; \`make up\` starts afresh"
