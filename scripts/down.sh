#!/usr/bin/env bash
# `make down`: stop exactly the processes `make up` started (by their pid files in RUN_DIR),
# and the nodes `make up NODES=2` started.
set -uo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-$PWD/run}
export RUN_DIR
[ -d "$RUN_DIR" ] || { echo "down: nothing to stop ($RUN_DIR does not exist)"; exit 0; }

stop() {  # stop NAME: TERM the process group, wait, then KILL
  local name=$1 pidfile="$RUN_DIR/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "down: $name (pid $pid) ignored SIGTERM for 30 s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
    echo "down: stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

# The nodes `make up NODES=2` started on this machine: their workers, then the node (its
# stacks, swarm, engine, namespace; scripts/node.sh).
for marker in "$RUN_DIR"/nodes/*/.ccci-node; do
  [ -f "$marker" ] || continue
  node=$(basename "$(dirname "$marker")")
  stop "worker-runs-$node"
  stop "worker-alerts-$node"
  scripts/node.sh stop "$node" || echo "down: node $node did not stop cleanly; see $RUN_DIR/nodes/$node/logs/"
done
for name in bridge forge keycloak flower beat worker-runs worker-infra worker-alerts; do stop "$name"; done
# Services that `make up` had to start itself (never ones that were already running);
# `make reset` keeps them until it has removed the system's apps from the engine.
[ "${DOWN_KEEP_SERVICES:-0}" = 1 ] && exit 0
if [ -f "$RUN_DIR/redis.pid" ]; then stop redis; fi
if [ -f "$RUN_DIR/dockerd.pid" ]; then stop dockerd; fi
