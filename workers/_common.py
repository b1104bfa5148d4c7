"""How every worker role starts: a prefork worker consuming its queues."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from ccci_tasks.config import get_settings
from ccci_tasks.constants import EXIT_USAGE
from ccci_tasks.errors import ConfigError


@dataclass(frozen=True)
class Role:
    """A worker role: the queue it consumes and how many processes it runs. A role that also
    consumes more queues (a node's own ``runs.<node>``) is named by the last of them
    (``runs.n2@<host>``), so two nodes on one machine have distinct worker names."""

    queue: str
    concurrency: int
    disable_prefetch: bool = False
    also: tuple[str, ...] = ()  # more queues it consumes (a node's own runs.<node>)

    @property
    def queues(self) -> list[str]:
        return [self.queue, *self.also]

    def argv(self) -> list[str]:
        """The ``celery worker`` arguments for this role (also used by the dev compose file)."""
        args = [
            "worker",
            "--pool=prefork",
            f"--queues={','.join(self.queues)}",
            f"--concurrency={self.concurrency}",
            f"--hostname={self.queues[-1]}@%h",
            "--prefetch-multiplier=1",
            "--task-events",
            "--loglevel=INFO",
        ]
        if self.disable_prefetch:
            args.append("--disable-prefetch")
        return args


def main(role: Callable[[], Role]) -> None:
    """Start the worker in this process (blocks until it stops). Failpoints are armed here,
    or the start is refused (exit 2) when they are malformed or set in production; bad
    ``CCCI_*`` settings refuse it too (exit 2, the message names the setting)."""
    from ccci_tasks import failpoints

    try:
        get_settings()
        chosen = role()
    except ConfigError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    failpoints.refuse_or_load()
    from ccci_tasks.celery_app import app

    app.worker_main(argv=[*chosen.argv(), *sys.argv[1:]])


def max_tests() -> int:
    return get_settings().max_tests
