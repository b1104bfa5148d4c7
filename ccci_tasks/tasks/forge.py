"""Forge tasks on the alerts queue: act on a trigger, deliver the outbox, the beat sweep.

* ``forge_trigger(request)``: permission, PR head, fetch, enqueue, reply (``forge.trigger``).
  A forge or git failure is retried (2, 4, ... 32 s); after ``TRIGGER_MAX_RETRIES`` the PR is
  told why the run did not start.
* ``forge_deliver(stream)``: deliver one outbox stream in order (``forge.relay``); a message
  not taken is retried with exponential backoff capped at 60 s (and below a quarter of the
  visibility timeout), until delivered. ``retry=False`` makes one attempt (the sweep's).
* ``forge_sweep()`` (beat, every 60 s): ``run_finished`` for watched runs that have a verdict,
  a one-attempt delivery of every stream with pending messages, pruning of old sent ones.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Final

import redis
from celery import Task

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import AlertRelayError, BrokerError, ForgeError, PlatformError
from ccci_tasks.forge import hooks, outbox, relay
from ccci_tasks.forge.client import ForgeClient
from ccci_tasks.forge.trigger import TriggerRequest, act, failed
from ccci_tasks.push import apprise_notify

log = logging.getLogger(__name__)

DELIVER_BACKOFF_MAX_S: Final = 60
TRIGGER_MAX_RETRIES: Final = 5
SENT_KEEP_S: Final = 30 * 24 * 3600


def backoff_s(retries: int, settings: Settings, cap_s: int = DELIVER_BACKOFF_MAX_S) -> int:
    """2, 4, 8, ... seconds, capped at ``cap_s`` and a quarter of the visibility timeout."""
    cap = max(1, min(cap_s, settings.visibility_timeout_s // 4))
    return int(min(cap, 2 ** min(retries + 1, 20)))


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def _client(settings: Settings) -> redis.Redis:
    return _redis(settings.broker_url.get_secret_value())


def enqueue_run(lane: str, recipe: str, sha: str, run_id: str) -> None:
    """Publish the run's entry task under ``run_id`` (its submission tells the forge)."""
    app.send_task(c.task_name(c.QUEUE_ALERTS, f"{lane}_run"), (recipe, sha), task_id=run_id)


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
            result = act(settings, req, forge, _client(settings), enqueue_run)
    except (ForgeError, PlatformError, BrokerError) as exc:
        if self.request.retries >= TRIGGER_MAX_RETRIES:
            result = failed(settings, req, str(exc))
        else:
            countdown = backoff_s(self.request.retries, settings)
            log.warning("trigger %s: %s; retry %d in %d s", req.run_id, exc,
                        self.request.retries + 1, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
    deliver.apply_async((req.comment_stream,), retry=False)
    return result.to_dict()


@app.task(  # type: ignore[untyped-decorator]
    bind=True, name=c.task_name(c.QUEUE_ALERTS, "forge_deliver"), max_retries=None,
    ignore_result=True,
)
def deliver(self: Task, stream: str, retry: bool = True) -> str:
    """Deliver the pending outbox messages of ``stream``, in order, each exactly once."""
    settings = get_settings()
    outbox.validate_stream(stream)
    try:
        result = relay.deliver_stream(settings, _client(settings), stream, notify=apprise_notify)
    except (ForgeError, AlertRelayError, BrokerError, redis.RedisError) as exc:
        if not retry:
            log.warning("%s; the next forge_sweep tries again", exc)
            return "failed"
        countdown = backoff_s(self.request.retries, settings)
        log.warning("%s; retry %d in %d s", exc, self.request.retries + 1, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    if result.outcome == "busy" and retry:
        raise self.retry(countdown=backoff_s(self.request.retries, settings))
    return result.outcome


@app.task(name=c.task_name(c.QUEUE_ALERTS, "forge_sweep"))  # type: ignore[untyped-decorator]
def sweep() -> dict[str, Any]:
    """Verdicts of watched runs, one delivery attempt per pending stream, pruning (beat)."""
    settings = get_settings()
    finished = hooks.sweep_watched(settings)
    streams = outbox.streams(settings.state_dir)
    for stream in streams:
        deliver.apply_async((stream,), {"retry": False})
    pruned = outbox.prune_sent(settings.state_dir, SENT_KEEP_S)
    return {"finished": len(finished), "streams": len(streams), "pruned": pruned}
