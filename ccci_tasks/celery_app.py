"""The one Celery app.

Queues ``runs``, ``infra`` and ``alerts``, routed by task name (``ccci.<queue>.<name>``)
in ``task_routes`` rather than by per-call options: options given to ``chain.apply_async``
reach only the first step, while ``task_routes`` applies to every step a worker publishes.
This node's own queue ``runs.<node>`` (``CCCI_NODE``, R15) is declared too: its runs worker
consumes it beside ``runs``.

Time limits: each step has a soft limit (``CCCI_STEP_SOFT_TIME_LIMIT_S``, default 3300 s)
and a hard limit (``CCCI_STEP_HARD_TIME_LIMIT_S``, default 3600 s). The Redis
``visibility_timeout`` (``CCCI_VISIBILITY_TIMEOUT_S``, default 14400 s) is longer than the
longest hard limit, so an acked-late step is never redelivered while it still runs.
``Settings`` refuses a configuration that breaks either ordering.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu.entity import Queue

from ccci_tasks import constants as c
from ccci_tasks.config import Settings, get_settings

TASK_ROUTES: dict[str, dict[str, str]] = {
    f"{c.TASK_PREFIX}.{queue}.*": {"queue": queue} for queue in c.QUEUES
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Everything Celery needs, copied from ``Settings`` in this one place."""
    broker = settings.broker_url.get_secret_value()
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": broker,
        "result_backend": broker,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout_s,
        "broker_connection_retry_on_startup": True,
        # and this node's own runs queue (R15: a run's steps go to the node that admitted it;
        # other nodes' queues are added when a task is sent there, ``enqueue``)
        "task_queues": [Queue(name, routing_key=name)  # type: ignore[no-untyped-call]
                        for name in (*c.QUEUES, c.runs_queue(settings.node))],
        "task_default_queue": c.QUEUE_RUNS,
        "task_routes": TASK_ROUTES,
        "task_create_missing_queues": False,
        # Reliability: a step lost with its worker is redelivered, and is idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.step_soft_time_limit_s,
        "task_time_limit": settings.step_hard_time_limit_s,
        # Flower: every task is visible with its arguments and progress.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_extended": True,
        "result_expires": 7 * 24 * 3600,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": settings.timezone,
        "enable_utc": True,
        # Beat: RedBeat with our resilience (ccci_tasks.beat), its keys under ccci:beat:.
        "beat_scheduler": "ccci_tasks.beat:Scheduler",
        "beat_max_loop_interval": settings.beat_max_interval_s,
        "redbeat_redis_url": broker,
        "redbeat_redis_options": {},  # not the broker's transport options
        "redbeat_key_prefix": c.KEY_BEAT_PREFIX,
        "redbeat_lock_key": c.KEY_BEAT_LOCK,
        "redbeat_lock_timeout": settings.beat_lock_timeout_s,
        "worker_hijack_root_logger": False,
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("ccci_tasks", include=["ccci_tasks.tasks"])
    celery.conf.update(celery_config(settings))
    from beat_schedule import beat_schedule

    celery.conf.beat_schedule = beat_schedule(settings)
    return celery


app = create_app()


@worker_init.connect  # type: ignore[untyped-decorator]
def _arm_failpoints(**_: Any) -> None:
    """A worker started as ``celery worker`` arms (or refuses) its failpoints too."""
    from ccci_tasks import failpoints

    failpoints.refuse_or_load()
