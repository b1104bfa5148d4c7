"""What else happens when a run is queued or ends: told to the parts that registered.

Every run goes through ``run_queued`` once (when it enters the FIFO) and ``run_finished``
once (when its verdict is written, by whoever writes it: its last step, its undo, a refusal
at the door, the janitor). The parts that care (the forge's statuses, the platform's per-run
files, a parent run waiting for its children) register here, once per process, in one place:
``ccci_tasks.tasks.wiring``, which every process that queues or ends runs loads. This module
imports none of them. A hook never raises: a forge or a push target that is down must not
change a run's verdict; each hook keeps its own durable outbox.
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

_QUEUED: list[Hook] = []
_FINISHED: list[Hook] = []


def _add(hooks: list[Hook], hook: Hook) -> Hook:
    if hook not in hooks:  # registering twice (a module loaded again) calls it once
        hooks.append(hook)
    return hook


def on_queued(hook: Hook) -> Hook:
    """Call ``hook(settings, report)`` whenever a run is queued (in registration order)."""
    return _add(_QUEUED, hook)


def on_finished(hook: Hook) -> Hook:
    """Call ``hook(settings, report)`` whenever a run's verdict is written."""
    return _add(_FINISHED, hook)


def registered() -> dict[str, list[Hook]]:
    """The hooks of this process, by event (for checks and ``ccci check``)."""
    return {"queued": list(_QUEUED), "finished": list(_FINISHED)}


def _call(hooks: list[Hook], settings: Settings, report: RunReport, what: str) -> None:
    for hook in list(hooks):
        try:
            hook(settings, report)
        except Exception:
            log.exception("run %s: the %s hook %s failed", report.run_id, what,
                          getattr(hook, "__qualname__", hook))


def run_queued(settings: Settings, report: RunReport) -> None:
    _call(_QUEUED, settings, report, "queued")


def run_finished(settings: Settings, report: RunReport) -> None:
    _call(_FINISHED, settings, report, "finished")
