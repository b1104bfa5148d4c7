#!/usr/bin/env bash
# `make up`: the whole system on the local Docker engine with the bundled example recipe.
# Starts the three workers, beat and Flower (127.0.0.1:5555) in the background, with logs
# and pid files in RUN_DIR (default ./run). `make down` stops them by pid.
# Also the forge bridge (webhooks, CCCI_BRIDGE_LISTEN, default 127.0.0.1:8787) and, unless
# CCCI_FORGE_URL names another forge, a local Gitea stand-in (127.0.0.1:FORGE_PORT, default
# 3300) holding the example recipe with an open PR #1, so the demo can show the forge; and,
# unless CCCI_KEYCLOAK_URL names another, a Keycloak admin API stand-in for per-run realms
# (127.0.0.1:KEYCLOAK_PORT, default 8180). The infra worker deploys the keycloak and traefik
# stand-in recipes as live-warm apps when it starts.
# On the first start it runs the demo: a cold run that seeds the custom-html canonical, then
# a quick run on a PR commit (CCCI_DEMO=0 skips it; rm run/demo.done runs it again).
# NODES=2 (`make up NODES=2`, up to 9) adds hosts on this machine: node n2 (n3, ...) is a rig
# node (scripts/node.sh: a Docker engine in swarm mode in a network namespace of its own) with
# the recipe images, its own state root (RUN_DIR/n2/state), a runs worker and a side-queue
# worker reaching the shared Redis through the node's relay. This machine's workers are
# node n1 (CCCI_NODE). `make down` stops them and the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN_DIR=${RUN_DIR:-$ROOT/run}
export RUN_DIR
NODES=${NODES:-1}
if ! [[ $NODES =~ ^[1-9]$ ]]; then
  echo "up: NODES=$NODES is invalid: give how many hosts to run on this machine, 1 to 9 (NODES=2: this machine and one rig node)" >&2
  exit 2
fi
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
FORGE_PORT=${FORGE_PORT:-3300}
if ! grep -q '^CCCI_WEBHOOK_SECRET=' "$env_file"; then  # env files of older versions too
  gen() { .venv/bin/python -c 'import secrets; print(secrets.token_hex(20))'; }
  maintainer_token=$(gen)
  {
    echo "CCCI_FORGE_URL=${CCCI_FORGE_URL:-http://127.0.0.1:$FORGE_PORT}"
    echo "CCCI_FORGE_TOKEN=${CCCI_FORGE_TOKEN:-$(gen)}"
    echo "CCCI_FORGE_OWNER=${CCCI_FORGE_OWNER:-recipes}"
    echo "CCCI_WEBHOOK_SECRET=${CCCI_WEBHOOK_SECRET:-$(gen)}"
    echo "CCCI_BRIDGE_LISTEN=${CCCI_BRIDGE_LISTEN:-127.0.0.1:8787}"
    echo "FAKE_FORGE_USERS=maintainer:$maintainer_token:write"
    echo "FAKE_FORGE_MAINTAINER_TOKEN=$maintainer_token"
  } >>"$env_file"
fi
if ! grep -q '^CCCI_NODE=' "$env_file"; then  # env files of older versions too
  echo "CCCI_NODE=${CCCI_NODE:-n1}" >>"$env_file"  # this machine's node, by a name that reads well
fi
KEYCLOAK_PORT=${KEYCLOAK_PORT:-8180}
if ! grep -q '^CCCI_KEYCLOAK_URL=' "$env_file"; then
  {
    echo "CCCI_KEYCLOAK_URL=${CCCI_KEYCLOAK_URL:-http://127.0.0.1:$KEYCLOAK_PORT}"
    echo "CCCI_KEYCLOAK_ADMIN_USER=${CCCI_KEYCLOAK_ADMIN_USER:-admin}"
    echo "CCCI_KEYCLOAK_ADMIN_PASSWORD=${CCCI_KEYCLOAK_ADMIN_PASSWORD:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(18))')}"
  } >>"$env_file"
fi
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a
mkdir -p "$CCCI_STATE_DIR"

echo "up: building the example recipes into $CCCI_RECIPES_DIR (kept when they hold their tags)"
.venv/bin/python examples/make_recipes.py --recipes-dir "$CCCI_RECIPES_DIR" --keep-existing

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
local_keycloak=""
if [ "$CCCI_KEYCLOAK_URL" = "http://127.0.0.1:$KEYCLOAK_PORT" ]; then
  local_keycloak=1
  kc_password_file="$RUN_DIR/keycloak-admin-password"
  (umask 077; printf '%s' "$CCCI_KEYCLOAK_ADMIN_PASSWORD" >"$kc_password_file")
  start keycloak "$PY" tests/fake_keycloak.py --port "$KEYCLOAK_PORT" \
    --user "$CCCI_KEYCLOAK_ADMIN_USER" --password-file "$kc_password_file"
fi
start worker-runs "$PY" -m workers.runs
start worker-infra "$PY" -m workers.infra
start worker-alerts "$PY" -m workers.alerts
# Beat keeps its schedule and lock in Redis (ccci_tasks/beat.py): another host's beat on the
# same broker would stand by and take over, never fire twice.
start beat "$PY" -m celery -A ccci_tasks.celery_app beat --loglevel=INFO
FLOWER_BASIC_AUTH="$CCCI_FLOWER_USER:$CCCI_FLOWER_PASSWORD" \
  start flower "$PY" -m celery -A ccci_tasks.celery_app flower \
  --address=127.0.0.1 --port=5555 --enable_events=False
start bridge "$PY" -m workers.bridge
processes=(worker-runs worker-infra worker-alerts beat flower bridge)
[ -n "$local_keycloak" ] && processes+=(keycloak)
local_forge=""
if [ "$CCCI_FORGE_URL" = "http://127.0.0.1:$FORGE_PORT" ]; then
  local_forge=1
  start forge "$PY" tests/fake_forge.py --port "$FORGE_PORT" --git-root "$RUN_DIR/forge-git" \
    --recipes-dir "$CCCI_RECIPES_DIR" --hook-url "http://$CCCI_BRIDGE_LISTEN/hooks/forge" \
    --recipe custom-html
  processes+=(forge)
fi

# Wait until Flower answers and sees the three workers.
deadline=$((SECONDS + 90))
until .venv/bin/python - "$CCCI_FLOWER_USER" "$CCCI_FLOWER_PASSWORD" <<'PY' 2>/dev/null
import sys, httpx
r = httpx.get("http://127.0.0.1:5555/api/workers?refresh=1", auth=(sys.argv[1], sys.argv[2]), timeout=5)
names = r.json() if r.status_code == 200 else {}
sys.exit(0 if sum(1 for n in names if n.split("@")[0].split(".")[0] in ("runs", "infra", "alerts")) >= 3 else 1)
PY
do
  if [ $SECONDS -ge $deadline ]; then
    echo "up: timed out after 90 s waiting for Flower on 127.0.0.1:5555 to list the runs, infra and alerts workers; see $RUN_DIR/logs/" >&2
    exit 3
  fi
  sleep 1
done
# Wait until the bridge (and the local forge) answer.
deadline=$((SECONDS + 30))
until .venv/bin/python - "http://$CCCI_BRIDGE_LISTEN/healthz" \
    ${local_forge:+"$CCCI_FORGE_URL/api/v1/version"} <<'PY' 2>/dev/null
import sys, httpx
sys.exit(0 if all(httpx.get(u, timeout=2).status_code == 200 for u in sys.argv[1:]) else 1)
PY
do
  if [ $SECONDS -ge $deadline ]; then
    echo "up: timed out after 30 s waiting for the bridge on $CCCI_BRIDGE_LISTEN${local_forge:+ and the forge stand-in on $CCCI_FORGE_URL}; see $RUN_DIR/logs/" >&2
    exit 3
  fi
  sleep 0.5
done
for name in "${processes[@]}"; do
  if ! kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    echo "up: $name exited after start; see $RUN_DIR/logs/$name.log" >&2
    exit 3
  fi
done
CCCI=$ROOT/.venv/bin/ccci

PAGES=${CCCI_PUBLIC_URL:-http://$CCCI_BRIDGE_LISTEN}
# demo_run WHAT ARGS...: run `ccci ARGS --wait --json` (steps live on stderr), then print the
# verdict and the run's page.
demo_run() {
  local what=$1 report
  shift
  report=$("$CCCI" "$@" --wait --json) || echo "up: the demo's $what did not pass (see above)"
  printf '%s' "$report" | "$PY" -c '
import json, sys
try:
    report = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
what, pages = sys.argv[1], sys.argv[2]
print("up: %s: verdict %s; its page: %s/runs/%s" % (what, report.get("verdict"), pages, report["run_id"]))
' "$what" "$PAGES"
}
if [ "${CCCI_DEMO:-1}" != "0" ] && [ ! -f "$RUN_DIR/demo.done" ]; then
  echo
  echo "up: the demo, 1/2: a cold run of custom-html on latest; green, it seeds the canonical"
  demo_run "cold run" cold custom-html
  echo
  echo "up: the demo, 2/2: a PR commit (make pr-commit), then a quick run on it"
  sha=$("$PY" scripts/pr_commit.py custom-html)
  demo_run "quick run" quick custom-html "$sha"
  touch "$RUN_DIR/demo.done"
  echo
fi

# More hosts on this machine (NODES=2..9), once the local system runs (and its demo ran there):
# rig nodes n2.., each with its engine, the recipe images, its state root and its runs and
# side-queue workers.
wait_nodes_up() {  # wait_nodes_up NAME...: every node beats (`ccci status --json`)
  local deadline=$((SECONDS + 120)) seen
  until seen=$("$CCCI" status --json 2>/dev/null | "$PY" -c '
import json, sys
up = {n["node"] for n in json.load(sys.stdin)["nodes"] if n["state"] == "up"}
missing = [n for n in sys.argv[1:] if n not in up]
print(" ".join(missing))
sys.exit(1 if missing else 0)
' "$@"); do
    if [ $SECONDS -ge $deadline ]; then
      echo "up: timed out after 120 s waiting for node(s) ${seen:-$*} to beat (\`ccci status\` lists the nodes); see $RUN_DIR/logs/" >&2
      exit 3
    fi
    sleep 1
  done
}
relay=(--relay "${REDIS_PORT:-6379}")
[ -n "$local_keycloak" ] && relay+=(--relay "$KEYCLOAK_PORT")
[ -n "$local_forge" ] && relay+=(--relay "$FORGE_PORT")
nodes=("$CCCI_NODE")
for i in $(seq 2 "$NODES"); do
  node=n$i
  [ "$node" = "$CCCI_NODE" ] && { echo "up: this machine's node is named $node too (CCCI_NODE); rename it" >&2; exit 2; }
  scripts/node.sh start "$node" "${relay[@]}"
  docker_host=$(scripts/node.sh status "$node" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["docker_host"])')
  recipes=()
  for repo in "$CCCI_RECIPES_DIR"/*/; do
    [ -d "$repo/.git" ] && recipes+=(--recipe "$repo")
  done
  if [ ${#recipes[@]} -gt 0 ] && ! scripts/node.sh images "$node" "${recipes[@]}"; then
    echo "up: could not copy the recipe images into node $node (see above); its runs would not deploy" >&2
    exit 3
  fi
  mkdir -p "$RUN_DIR/$node/state"
  node_env=(env "CCCI_NODE=$node" "CCCI_DOCKER_HOST=$docker_host" "CCCI_STATE_DIR=$RUN_DIR/$node/state")
  start "worker-runs-$node" scripts/node.sh exec "$node" -- "${node_env[@]}" "$PY" -m workers.runs
  start "worker-alerts-$node" scripts/node.sh exec "$node" -- "${node_env[@]}" "$PY" -m workers.alerts \
    "--hostname=alerts.$node@%h"
  processes+=("worker-runs-$node" "worker-alerts-$node")
  nodes+=("$node")
done
wait_nodes_up "${nodes[@]}"
for name in "${processes[@]}"; do
  if ! kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    echo "up: $name exited after start; see $RUN_DIR/logs/$name.log" >&2
    exit 3
  fi
done

cat <<MSG
up: ccci-tasks is running.
  Flower:   http://127.0.0.1:5555  (user $CCCI_FLOWER_USER, password in $env_file)
  bridge:   http://$CCCI_BRIDGE_LISTEN/hooks/forge  (forge webhooks, signed with CCCI_WEBHOOK_SECRET)
  runs:     $PAGES/runs  (each run's page; commit statuses link there)   metrics: $PAGES/metrics
  forge:    $CCCI_FORGE_URL  (owner $CCCI_FORGE_OWNER${local_forge:+; a local Gitea stand-in: $CCCI_FORGE_OWNER/custom-html has an open PR #1})
  keycloak: $CCCI_KEYCLOAK_URL  (admin API for per-run realms${local_keycloak:+; a local stand-in})
  nodes:    ${nodes[*]}  (this machine is $CCCI_NODE; \`.venv/bin/ccci status\` shows each node's slots)
  logs:     $RUN_DIR/logs/
  settings: $env_file  (the ccci command finds it; no need to source it)
  try:      .venv/bin/ccci status; .venv/bin/ccci runs list; .venv/bin/ccci runs show <run id>
            sha=\$(make -s pr-commit); .venv/bin/ccci quick custom-html \$sha --wait
  stop:     make down
MSG
if [ -n "$local_forge" ]; then
  api="$CCCI_FORGE_URL/api/v1/repos/$CCCI_FORGE_OWNER/custom-html"
  cat <<MSG
  forge demo (as the maintainer of the stand-in; after: set -a; . $env_file; set +a):
            curl -s -H "Authorization: token \$FAKE_FORGE_MAINTAINER_TOKEN" -H 'Content-Type: application/json' \\
              -d '{"body": "!testme --quick"}' $api/issues/1/comments
            then the bot's reply:  curl -s -H "Authorization: token \$FAKE_FORGE_MAINTAINER_TOKEN" $api/issues/1/comments
            and the PR head's statuses: $api/statuses/<head.sha of $api/pulls/1>
MSG
fi
