#!/usr/bin/env bash
# One node of the several-hosts rig: a second Docker engine in swarm mode in a network
# namespace of its own, with a relay to the host's loopback services. See ccci_rig/.
#   scripts/node.sh start NAME [--relay PORT ...]   (idempotent; prints its DOCKER_HOST)
#   scripts/node.sh stop NAME                       (stacks, swarm, engine, namespace, files)
#   scripts/node.sh status NAME | images NAME IMAGE... [--recipe DIR] | exec NAME -- CMD...
# Files under $RUN_DIR/nodes/NAME (RUN_DIR defaults to ./run). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" -m ccci_rig "$@"
