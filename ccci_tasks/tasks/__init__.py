"""Celery tasks: thin wrappers over the modules of ``ccci_tasks``; no logic of their own.

The Drone bridge imports its entry points from here:
``from ccci_tasks.tasks import quick_run, cold_run``.
"""

from ccci_tasks.tasks import alerts, diag, forge, infra, lanes
from ccci_tasks.tasks.infra import nightly_sweep, warm_reconcile
from ccci_tasks.tasks.lanes import cold_run, janitor, quick_run

__all__ = [
    "alerts",
    "cold_run",
    "diag",
    "forge",
    "infra",
    "janitor",
    "lanes",
    "nightly_sweep",
    "quick_run",
    "warm_reconcile",
]
