# One entry point for the checks: CI (.ci/run) runs `make lint` and `make test`.
.PHONY: up down reset test lint bench bootstrap pr-commit

bootstrap:
	scripts/bootstrap.sh

up:
	scripts/up.sh

down:
	scripts/down.sh

# Start from scratch: down, this system's apps off the engine, run/ .state/ recipes/ gone.
reset:
	scripts/reset.sh

test: bootstrap
	.venv/bin/pytest

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy --strict ccci_tasks

bench: bootstrap
	scripts/services.sh
	.venv/bin/python -m bench

# A PR-like commit in a recipe of the local system; prints its sha for `ccci quick`.
# A recipe with migrations (notes-pg) gets a new migration; BAD=1: one that deletes rows, then fails.
RECIPE ?= custom-html
pr-commit: bootstrap
	.venv/bin/python scripts/pr_commit.py $(RECIPE) $(if $(BAD),--bad)
