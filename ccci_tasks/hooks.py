"""What else happens when a run is queued or ends: told to the parts that care.

Every run goes through ``run_queued`` once (when it enters the FIFO) and ``run_finished``
once (when its verdict is written, by whoever writes it: its last step, its undo, a refusal
at the door, the janitor). A hook never raises: a forge or a push target that is down must
not change a run's verdict; each hook keeps its own durable outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccci_tasks.config import Settings
    from ccci_tasks.state.reports import RunReport

log = logging.getLogger(__name__)

Hook = Callable[["Settings", "RunReport"], None]


def _queued_hooks() -> list[Hook]:
    from ccci_tasks import forge

    return [forge.run_queued]


def _finished_hooks() -> list[Hook]:
    from ccci_tasks import forge, platform
    from ccci_tasks.lanes.runner import child_finished

    return [child_finished, forge.run_finished, platform.run_finished]


def _call(hooks: list[Hook], settings: Settings, report: RunReport, what: str) -> None:
    for hook in hooks:
        try:
            hook(settings, report)
        except Exception:
            log.exception("run %s: the %s hook %s failed", report.run_id, what,
                          getattr(hook, "__qualname__", hook))


def run_queued(settings: Settings, report: RunReport) -> None:
    _call(_queued_hooks(), settings, report, "queued")


def run_finished(settings: Settings, report: RunReport) -> None:
    _call(_finished_hooks(), settings, report, "finished")
