"""The one small interface through which the package puts work on a queue.

Everything below the task layer (lanes, the state root, the forge) enqueues by task *name*
through here and never imports the task modules or the Celery app at import time, so no
import circle runs through Celery. Routing comes from the task name (``ccci.<queue>.<name>``,
see ``celery_app``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    """One task to publish: its name, arguments and how Flower shows them."""

    name: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    argsrepr: str | None = None
    kwargsrepr: str | None = None


def _known(app: Any, queue: str) -> str:
    """``queue``, defined in this process's queues (another node's ``runs.<node>``), since
    queues are not created on first use (``task_create_missing_queues`` is off)."""
    from kombu.entity import Queue

    if queue not in app.amqp.queues:
        app.amqp.queues.add(Queue(queue, routing_key=queue))  # type: ignore[no-untyped-call]
    return queue


def load() -> None:
    """Load the Celery app now: a process that must answer quickly (the webhook) publishes
    later without paying for it then."""
    from ccci_tasks.celery_app import app  # noqa: F401


def send(call: Call, *, task_id: str | None = None, retry: bool = False,
         ignore_result: bool = False, queue: str | None = None) -> str:
    """Publish ``call`` once (no publish retries unless ``retry``); returns its task id.
    ``queue`` overrides the queue its name routes to (a node's own ``runs.<node>``)."""
    from ccci_tasks.celery_app import app

    options: dict[str, Any] = {"task_id": task_id, "retry": retry}
    if queue is not None:
        options["queue"] = _known(app, queue)
    if ignore_result:
        options["ignore_result"] = True
    if call.argsrepr is not None:
        options["argsrepr"] = call.argsrepr
    if call.kwargsrepr is not None:
        options["kwargsrepr"] = call.kwargsrepr
    result = app.send_task(call.name, tuple(call.args), dict(call.kwargs), **options)
    return str(result.id)


def chain(calls: Sequence[Call], *, queue: str | None = None) -> None:
    """Publish ``calls`` as one Celery chain, each step immutable (it ignores the result of
    the step before it); ``queue`` overrides the queue of every step."""
    from celery import chain as celery_chain

    from ccci_tasks.celery_app import app

    sigs = []
    for call in calls:
        sig = app.signature(call.name, args=tuple(call.args), kwargs=dict(call.kwargs),
                            immutable=True)
        sig = sig.set(argsrepr=call.argsrepr, kwargsrepr=call.kwargsrepr)
        if queue is not None:
            sig = sig.set(queue=_known(app, queue))
        sigs.append(sig)
    celery_chain(*sigs).apply_async()
