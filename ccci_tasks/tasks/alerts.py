"""The alerts queue (R4.2): relay each pending alert to the push targets, then archive it.

``relay_alert(alert_id)`` delivers one alert (``outbox.alerts``: every ``CCCI_ALERT_URLS``
target once, then ``alerts/seen/``), retrying with the outbox backoff (capped at
``CCCI_ALERT_RETRY_MAX_S``). ``relay_pending_alerts`` (beat, every 60 s) asks once for every
pending alert: one written while the broker was down, or whose retries were lost, is relayed
once it is back.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import get_settings
from ccci_tasks.outbox import sweep
from ccci_tasks.outbox.alerts import ALERTS
from ccci_tasks.tasks.outbox import deliver_or_retry


@app.task(  # type: ignore[untyped-decorator]
    bind=True, name=c.task_name(c.QUEUE_ALERTS, "relay_alert"), max_retries=None,
    ignore_result=True,
)
def relay_alert(self: Task, alert_id: str, retry: bool = True) -> str:
    """Relay one pending alert to the push targets, then move it to alerts/seen/."""
    return deliver_or_retry(self, ALERTS, alert_id, retry)


@app.task(name=c.task_name(c.QUEUE_ALERTS, "relay_pending_alerts"))  # type: ignore[untyped-decorator]
def relay_pending_alerts() -> dict[str, Any]:
    """Ask once for the relay of every pending alert (beat, every 60 s)."""
    result = sweep(ALERTS, get_settings())
    return {"pending": result.pending, "enqueued": result.enqueued}
