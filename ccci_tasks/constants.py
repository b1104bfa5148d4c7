"""Names shared across the system: queues, task names, Redis keys, Docker labels.

Every Redis key prefix, queue name and label key lives here and nowhere else.
"""

from __future__ import annotations

from typing import Final

# Queues. Routing is by task name prefix (see ``celery_app.TASK_ROUTES``).
QUEUE_RUNS: Final = "runs"
QUEUE_INFRA: Final = "infra"
QUEUE_ALERTS: Final = "alerts"
QUEUES: Final = (QUEUE_RUNS, QUEUE_INFRA, QUEUE_ALERTS)

# Task-name prefixes: a task named ``ccci.runs.deploy`` goes to queue ``runs``.
TASK_PREFIX: Final = "ccci"


def runs_queue(node: str) -> str:
    """The runs queue of one node (R15): the steps of every run admitted on it."""
    return f"{QUEUE_RUNS}.{node}"


def task_name(queue: str, name: str) -> str:
    """The registered name of a task that runs on ``queue``."""
    return f"{TASK_PREFIX}.{queue}.{name}"


# Redis keys (all under one prefix so tests and operators can find them).
REDIS_PREFIX: Final = "ccci:"
KEY_SLOTS: Final = REDIS_PREFIX + "slots:leases"  # zset run_id -> lease expiry (epoch s)
KEY_PENDING: Final = REDIS_PREFIX + "slots:pending"  # list of run ids, FIFO
KEY_RUN_SPEC: Final = REDIS_PREFIX + "run:"  # + run_id -> hash {lane, recipe, ref, ...}
KEY_FENCE: Final = REDIS_PREFIX + "slots:fence"  # counter: fencing tokens only grow
# Several hosts (R15): zset node -> its last beat (server seconds), and + node -> hash of
# what it publishes (max_tests, live apps, canonicals, workers, seen); see nodes.py.
KEY_NODES: Final = REDIS_PREFIX + "nodes"
KEY_NODE: Final = REDIS_PREFIX + "node:"
KEY_DELIVERIES: Final = REDIS_PREFIX + "deliveries:"  # + run_id:step -> deliveries of a step
KEY_RELAY_DONE: Final = REDIS_PREFIX + "relay:done:"  # + alert id[:target] -> 1 (idempotency)
KEY_RELAY_LOCK: Final = REDIS_PREFIX + "relay:lock:"  # + alert id -> token (one relay)
KEY_SWEEP_LAST: Final = REDIS_PREFIX + "sweep:last-success"
# celery beat (RedBeat): + entry name -> hash {definition, meta: last run}; + ":schedule" zset
# and ":statics" set; the lock held by the one beat that fires.
KEY_BEAT_PREFIX: Final = REDIS_PREFIX + "beat:"
KEY_BEAT_LOCK: Final = KEY_BEAT_PREFIX + "lock"
# The forge bridge (R11).
KEY_FORGE_DELIVERY: Final = REDIS_PREFIX + "forge:delivery:"  # + webhook delivery id -> run id
KEY_FORGE_ENQUEUED: Final = REDIS_PREFIX + "forge:enqueued:"  # + run id -> 1 (run published)
KEY_FORGE_DONE: Final = REDIS_PREFIX + "forge:done:"  # + outbox key[:target] -> 1 (delivered)
KEY_FORGE_LOCK: Final = REDIS_PREFIX + "forge:lock:"  # + outbox stream -> token (one relay)

# The event every step sends when it starts (run_id, step, lane, recipe, domain, undo).
STEP_EVENT: Final = "ccci-step"

# Docker labels set on every object the system creates.
LABEL_RUN: Final = "ccci.run"  # 6-hex run id of a cold app, absent on warm apps
LABEL_KIND: Final = "ccci.kind"  # cold | warm | infra
LABEL_RECIPE: Final = "ccci.recipe"
LABEL_DOMAIN: Final = "ccci.domain"
KINDS: Final = ("cold", "warm", "infra")

# Co-op Cloud (abra) labels on the app service.
STACK_NAMESPACE_LABEL: Final = "com.docker.stack.namespace"


def version_label(stack: str) -> str:
    return f"coop-cloud.{stack}.version"


def chaos_version_label(stack: str) -> str:
    return f"coop-cloud.{stack}.chaos-version"


# Exit codes of the ``ccci`` CLI (INTERFACES.md).
EXIT_OK: Final = 0
EXIT_RED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INFRA: Final = 3
