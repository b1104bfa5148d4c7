"""Celery tasks: thin wrappers over the modules of ``ccci_tasks``; no logic of their own.

The Drone bridge imports its entry points from here:
``from ccci_tasks.tasks import quick_run, cold_run, nightly_sweep, warm_reconcile``: each
lane's entry task by its short name (made from the lane's declaration, ``tasks.lanes``).
Loading this package registers the run hooks of the process (``tasks.wiring``).
"""

from celery import Task

from ccci_tasks import nodebeat  # noqa: F401  (a runs worker of this node beats)
from ccci_tasks.tasks import alerts, diag, forge, infra, lanes, wiring
from ccci_tasks.tasks.lanes import ENTRY_TASKS, janitor

wiring.wire()

__all__ = ["ENTRY_TASKS", "alerts", "diag", "forge", "infra", "janitor", "lanes"]


def __getattr__(name: str) -> Task:
    """The entry task called ``name`` (``quick_run``, ``cold_run``, ...)."""
    return lanes.__getattr__(name)
