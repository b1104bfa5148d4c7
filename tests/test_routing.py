"""Routing: every queue's tasks run on that queue's worker process and no other."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Workers

from ccci_tasks import constants as c

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("queue", c.QUEUES)
def test_task_runs_on_its_queue_worker(celery_app: Any, workers: Workers, queue: str) -> None:
    """A ccci.<queue>.ping sent by name only is delivered from <queue> to <queue>'s worker."""
    results = [celery_app.send_task(c.task_name(queue, "ping")) for _ in range(3)]
    for result in results:
        where = result.get(timeout=30)
        assert where["routing_key"] == queue
        assert where["hostname"] == workers.hostname(queue)


def test_each_worker_consumes_only_its_queue(celery_app: Any, workers: Workers) -> None:
    """inspect active_queues: each role's worker consumes exactly its own queue; the runs
    worker also its node's own queue runs.<node> (R15)."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.nodes import runs_queue

    node_queue = runs_queue(get_settings().node)
    active = celery_app.control.inspect(timeout=5).active_queues() or {}
    for queue in c.QUEUES:
        names = sorted(q["name"] for q in active[workers.hostname(queue)])
        assert names == ([queue, node_queue] if queue == c.QUEUE_RUNS else [queue])


def test_runs_worker_concurrency_is_max_tests(celery_app: Any, workers: Workers) -> None:
    """The runs worker has CCCI_MAX_TESTS processes; infra and alerts have one each."""
    stats = celery_app.control.inspect(timeout=5).stats() or {}
    assert stats[workers.hostname("runs")]["pool"]["max-concurrency"] == 1
    assert stats[workers.hostname("infra")]["pool"]["max-concurrency"] == 1
    assert stats[workers.hostname("alerts")]["pool"]["max-concurrency"] == 1


def test_tasks_still_routed_after_the_broker_lost_its_data(
    celery_app: Any, workers: Workers, redis_url: str
) -> None:
    """After FLUSHALL (a Redis restarted without its data), a task sent by name still
    reaches its queue's worker: routing needs no binding table in Redis."""
    import redis

    for queue in c.QUEUES:  # the producer has declared its queues before the flush
        celery_app.send_task(c.task_name(queue, "ping")).get(timeout=30)
    redis.Redis.from_url(redis_url).flushall()
    for queue in c.QUEUES:
        where = celery_app.send_task(c.task_name(queue, "ping")).get(timeout=30)
        assert where["routing_key"] == queue
        assert where["hostname"] == workers.hostname(queue)
