"""What every outbox's delivery task does: deliver one stream, retry with the one backoff.

A message not taken (the sender's ``InfraError``), a Redis failure or a stream another relay
holds (``busy``) is retried after ``Outbox.countdown_s`` (2, 4, 8, ... s, capped per outbox
and below a quarter of the visibility timeout, so a waiting retry is never redelivered as a
duplicate), until delivered. ``retry=False`` makes one attempt: beat's sweep asks every
minute, so its asks must not each start a retry chain of their own.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task

from ccci_tasks import broker
from ccci_tasks.config import get_settings
from ccci_tasks.errors import InfraError
from ccci_tasks.outbox import Outbox, deliver


def deliver_or_retry(task: Task, box: Outbox[Any], stream: str, retry: bool) -> str:
    """Run by ``task`` (bound): deliver ``stream`` of ``box``; return the outcome."""
    log = logging.getLogger(task.__module__)
    settings = get_settings()
    client = broker.client(settings)
    try:
        result = deliver(box, settings, client, stream, box.sender(settings, client))
    except (InfraError, redis.RedisError) as exc:
        if not retry:
            log.warning("%s; the next sweep of the %s outbox tries again", exc, box.name)
            return "failed"
        countdown = box.countdown_s(task.request.retries, settings)
        log.warning("%s; retry %d in %d s", exc, task.request.retries + 1, countdown)
        raise task.retry(exc=exc, countdown=countdown) from exc
    if result.outcome == "busy" and retry:
        raise task.retry(countdown=box.countdown_s(task.request.retries, settings))
    return result.outcome
