#!/usr/bin/env bash
# Start the services ccci-tasks runs on, when they are not running already:
# redis-server on 127.0.0.1:6379, dockerd, and a single-node swarm on 127.0.0.1.
# Each process started here leaves its pid in RUN_DIR (default ./run) so `make down`
# stops exactly what was started, and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-$PWD/run}
mkdir -p "$RUN_DIR/logs"
REDIS_PORT=${REDIS_PORT:-6379}

wait_for() {  # wait_for SECONDS WHAT CMD...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "services: timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "services: starting redis-server on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN_DIR" \
    --logfile "$RUN_DIR/logs/redis.log" --daemonize yes --pidfile "$RUN_DIR/redis.pid"
  wait_for 20 "redis-server to answer PING on 127.0.0.1:$REDIS_PORT" \
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "services: no Docker engine answers and we are not root to start dockerd" >&2
    exit 3
  fi
  echo "services: starting dockerd"
  setsid dockerd >"$RUN_DIR/logs/dockerd.log" 2>&1 < /dev/null &
  echo $! >"$RUN_DIR/dockerd.pid"
  wait_for 90 "dockerd to answer on /var/run/docker.sock (log: $RUN_DIR/logs/dockerd.log)" docker info
fi

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
  echo "services: docker swarm init --advertise-addr 127.0.0.1"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
fi
