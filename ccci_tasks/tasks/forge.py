"""Forge tasks on the alerts queue: act on a trigger, deliver the outbox, the beat sweep.

* ``forge_trigger(request)``: permission, PR head, fetch, enqueue, reply (``forge.trigger``).
  A forge or git failure is retried with the one backoff (2, 4, ... 32 s); after
  ``TRIGGER_MAX_RETRIES`` the PR is told why the run did not start.
* ``forge_deliver(stream)``: deliver one stream of the forge's outbox in order
  (``forge.relay``), retried with the outbox backoff (capped at 60 s) until delivered.
* ``forge_sweep()`` (beat, every 60 s): ``run_finished`` for watched runs that have a verdict,
  a one-attempt delivery of every stream with pending messages, pruning of old sent ones.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from celery import Task

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.backoff import backoff_s
from ccci_tasks.celery_app import app
from ccci_tasks.config import get_settings
from ccci_tasks.errors import BrokerError, ForgeError, InvalidInput, PlatformError
from ccci_tasks.forge import hooks
from ccci_tasks.forge.client import ForgeClient
from ccci_tasks.forge.relay import DELIVER_BACKOFF_MAX_S, FORGE
from ccci_tasks.forge.trigger import TriggerRequest, act, failed
from ccci_tasks.lanes.registry import get_lane
from ccci_tasks.outbox import publish
from ccci_tasks.outbox import sweep as sweep_outbox
from ccci_tasks.tasks.outbox import deliver_or_retry

log = logging.getLogger(__name__)

TRIGGER_MAX_RETRIES: Final = 5


def enqueue_run(lane: str, recipe: str, sha: str, run_id: str) -> None:
    """Publish the run's entry task under ``run_id`` (its submission tells the forge)."""
    entry = get_lane(lane).entry
    if entry is None:
        raise InvalidInput(f"lane {lane!r} cannot be asked for: it declares no entry task")
    app.send_task(c.task_name(entry.queue, entry.task), (recipe, sha), task_id=run_id)


@app.task(  # type: ignore[untyped-decorator]
    bind=True, name=c.task_name(c.QUEUE_ALERTS, "forge_trigger"),
    max_retries=TRIGGER_MAX_RETRIES,
)
def trigger(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Act on a !testme trigger: write access, PR head, fetch, enqueue the run, reply."""
    settings = get_settings()
    req = TriggerRequest.from_dict(request)
    try:
        with ForgeClient.from_settings(settings) as forge:
            result = act(settings, req, forge, broker.client(settings), enqueue_run)
    except (ForgeError, PlatformError, BrokerError) as exc:
        if self.request.retries >= TRIGGER_MAX_RETRIES:
            result = failed(settings, req, str(exc))
        else:
            countdown = backoff_s(self.request.retries, settings, DELIVER_BACKOFF_MAX_S)
            log.warning("trigger %s: %s; retry %d in %d s", req.run_id, exc,
                        self.request.retries + 1, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
    publish(FORGE, [req.comment_stream])
    return result.to_dict()


@app.task(  # type: ignore[untyped-decorator]
    bind=True, name=c.task_name(c.QUEUE_ALERTS, "forge_deliver"), max_retries=None,
    ignore_result=True,
)
def deliver(self: Task, stream: str, retry: bool = True) -> str:
    """Deliver the pending outbox messages of ``stream``, in order, each exactly once."""
    return deliver_or_retry(self, FORGE, stream, retry)


@app.task(name=c.task_name(c.QUEUE_ALERTS, "forge_sweep"))  # type: ignore[untyped-decorator]
def sweep() -> dict[str, Any]:
    """Verdicts of watched runs, one delivery attempt per pending stream, pruning (beat)."""
    settings = get_settings()
    finished = hooks.sweep_watched(settings)
    result = sweep_outbox(FORGE, settings)
    return {"finished": len(finished), "streams": result.pending, "pruned": result.pruned}
