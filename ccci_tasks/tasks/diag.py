"""Diagnostic tasks, one per queue: where did this task run, and from which queue?

``ccci check`` and the routing tests use them; they touch nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app


def _where(task: Task) -> dict[str, Any]:
    info = task.request.delivery_info or {}
    return {
        "hostname": task.request.hostname,
        "routing_key": info.get("routing_key"),
        "exchange": info.get("exchange"),
    }


@app.task(bind=True, name=c.task_name(c.QUEUE_RUNS, "ping"))  # type: ignore[untyped-decorator]
def ping_runs(self: Task) -> dict[str, Any]:
    """Answer from the runs worker."""
    return _where(self)


@app.task(bind=True, name=c.task_name(c.QUEUE_INFRA, "ping"))  # type: ignore[untyped-decorator]
def ping_infra(self: Task) -> dict[str, Any]:
    """Answer from the infra worker."""
    return _where(self)


@app.task(bind=True, name=c.task_name(c.QUEUE_ALERTS, "ping"))  # type: ignore[untyped-decorator]
def ping_alerts(self: Task) -> dict[str, Any]:
    """Answer from the alerts worker."""
    return _where(self)
