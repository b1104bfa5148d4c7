"""How every worker role starts: a prefork worker consuming exactly one queue."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ccci_tasks.config import get_settings


@dataclass(frozen=True)
class Role:
    """A worker role: the queue it consumes and how many processes it runs."""

    queue: str
    concurrency: int
    disable_prefetch: bool = False
    also: tuple[str, ...] = ()  # more queues it consumes (a node's own runs.<node>)

    def argv(self) -> list[str]:
        """The ``celery worker`` arguments for this role (also used by the dev compose file)."""
        args = [
            "worker",
            "--pool=prefork",
            f"--queues={','.join((self.queue, *self.also))}",
            f"--concurrency={self.concurrency}",
            f"--hostname={self.queue}@%h",
            "--prefetch-multiplier=1",
            "--task-events",
            "--loglevel=INFO",
        ]
        if self.disable_prefetch:
            args.append("--disable-prefetch")
        return args


def main(role: Role) -> None:
    """Start the worker in this process (blocks until it stops). Failpoints are armed here,
    or the start is refused (exit 2) when they are malformed or set in production."""
    from ccci_tasks import failpoints

    failpoints.refuse_or_load()
    from ccci_tasks.celery_app import app

    app.worker_main(argv=[*role.argv(), *sys.argv[1:]])


def max_tests() -> int:
    return get_settings().max_tests
