# One entry point for the checks: CI (.ci/run) runs `make lint` and `make test`.
.PHONY: up down reset test lint bench bench-broker bench-hosts soak bootstrap pr-commit

bootstrap:
	scripts/bootstrap.sh

# NODES=2 (up to 9): more hosts on this machine, each a rig node with its own workers.
NODES ?= 1
up:
	NODES=$(NODES) scripts/up.sh

down:
	scripts/down.sh

# Start from scratch: down, this system's apps off the engine, run/ .state/ recipes/ gone.
reset:
	scripts/reset.sh

test: bootstrap
	.venv/bin/pytest

# mypy checks the files pyproject.toml lists (the package, ccci_rig, workers, tests, bench, the
# example recipes' scripts), then each example recipe's tests on their own (same module names).
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy --strict
	for tests in examples/tests-recipes/*/; do .venv/bin/mypy --strict "$$tests" || exit 1; done

bench: bootstrap
	scripts/services.sh
	.venv/bin/python -m bench

# What the broker costs per run and per host (Redis commands, bytes, memory); about 6 minutes.
# Only the per-host part (each process idle, the node beat): .venv/bin/python -m bench.broker --hosts-only
bench-broker: bootstrap
	scripts/services.sh
	.venv/bin/python -m bench.broker

# The nightly sweep of 8 recipes on one host, then on two (a rig node: needs root), and a node
# lost mid-sweep; about 12 minutes. ARGS: more options (python -m bench.hosts --help).
bench-hosts: bootstrap
	scripts/services.sh
	.venv/bin/python -m bench.hosts $(ARGS)

# N quick and cold runs, each hit by one random fault of FAULTS (comma-separated, or all:
# sigkill, sigstop, failpoint, flushall, broker-restart, dockerd-restart). dockerd-restart
# restarts this machine's one Docker engine: leave it out where others use the engine.
N ?= 10
FAULTS ?= all
soak: bootstrap
	scripts/services.sh
	.venv/bin/python -m bench.soak --runs $(N) --faults $(FAULTS)

# A PR-like commit in a recipe of the local system; prints its sha for `ccci quick`.
# A recipe with migrations (notes-pg) gets a new migration; BAD=1: one that deletes rows, then fails.
RECIPE ?= custom-html
pr-commit: bootstrap
	.venv/bin/python scripts/pr_commit.py $(RECIPE) $(if $(BAD),--bad)
