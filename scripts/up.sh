#!/usr/bin/env bash
# `make up`: the whole system on the local Docker engine with the bundled example recipe.
# Starts the three workers, beat and Flower (127.0.0.1:5555) in the background, with logs
# and pid files in RUN_DIR (default ./run). `make down` stops them by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN_DIR=${RUN_DIR:-$ROOT/run}
export RUN_DIR
mkdir -p "$RUN_DIR/logs"
chmod 700 "$RUN_DIR"

scripts/bootstrap.sh
scripts/services.sh

# Settings for this local system (an operator's own CCCI_* environment wins).
env_file="$RUN_DIR/ccci.env"
if [ ! -f "$env_file" ]; then
  umask 077
  {
    echo "CCCI_BROKER_URL=${CCCI_BROKER_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/0}"
    echo "CCCI_STATE_DIR=${CCCI_STATE_DIR:-$ROOT/.state}"
    echo "CCCI_RECIPES_DIR=${CCCI_RECIPES_DIR:-$ROOT/recipes}"
    echo "CCCI_TESTS_DIR=${CCCI_TESTS_DIR:-$ROOT/examples/tests-recipes}"
    echo "CCCI_BASE_DOMAIN=${CCCI_BASE_DOMAIN:-ci.localhost}"
    echo "CCCI_MAX_TESTS=${CCCI_MAX_TESTS:-1}"
    echo "CCCI_FLOWER_USER=${CCCI_FLOWER_USER:-ccci}"
    echo "CCCI_FLOWER_PASSWORD=${CCCI_FLOWER_PASSWORD:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(18))')}"
  } >"$env_file"
fi
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
mkdir -p "$CCCI_STATE_DIR"

echo "up: building the example recipes into $CCCI_RECIPES_DIR"
.venv/bin/python examples/make_recipes.py --recipes-dir "$CCCI_RECIPES_DIR"

start() {  # start NAME CMD...: run CMD in its own process group, unless already running
  local name=$1; shift
  local pidfile="$RUN_DIR/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "up: $name already running (pid $(cat "$pidfile"))"
    return
  fi
  setsid "$@" >>"$RUN_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
  echo "up: started $name (pid $!, log $RUN_DIR/logs/$name.log)"
}

PY=$ROOT/.venv/bin/python
start worker-runs "$PY" -m workers.runs
start worker-infra "$PY" -m workers.infra
start worker-alerts "$PY" -m workers.alerts
start beat "$PY" -m celery -A ccci_tasks.celery_app beat --loglevel=INFO
FLOWER_BASIC_AUTH="$CCCI_FLOWER_USER:$CCCI_FLOWER_PASSWORD" \
  start flower "$PY" -m celery -A ccci_tasks.celery_app flower \
  --address=127.0.0.1 --port=5555 --enable_events=False

# Wait until Flower answers and sees the three workers.
deadline=$((SECONDS + 90))
until .venv/bin/python - "$CCCI_FLOWER_USER" "$CCCI_FLOWER_PASSWORD" <<'PY' 2>/dev/null
import sys, httpx
r = httpx.get("http://127.0.0.1:5555/api/workers?refresh=1", auth=(sys.argv[1], sys.argv[2]), timeout=5)
names = r.json() if r.status_code == 200 else {}
sys.exit(0 if sum(1 for n in names if n.split("@")[0] in ("runs", "infra", "alerts")) >= 3 else 1)
PY
do
  if [ $SECONDS -ge $deadline ]; then
    echo "up: timed out after 90 s waiting for Flower on 127.0.0.1:5555 to list the runs, infra and alerts workers; see $RUN_DIR/logs/" >&2
    exit 3
  fi
  sleep 1
done
for name in worker-runs worker-infra worker-alerts beat flower; do
  if ! kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    echo "up: $name exited after start; see $RUN_DIR/logs/$name.log" >&2
    exit 3
  fi
done
cat <<MSG
up: ccci-tasks is running.
  Flower:   http://127.0.0.1:5555  (user $CCCI_FLOWER_USER, password in $env_file)
  logs:     $RUN_DIR/logs/
  settings: $env_file
  try:      set -a; . $env_file; set +a; .venv/bin/ccci status
  stop:     make down
MSG
