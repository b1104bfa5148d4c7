"""The lanes: the one registry the runner, the janitor, the tasks and the CLI read.

Each lane is one module that declares a ``Lane`` (``ccci_tasks.lanes.model``); adding a lane
is adding its module here.
"""

from __future__ import annotations

from typing import Final

from ccci_tasks.errors import InvalidInput
from ccci_tasks.lanes import cold, quick, reconcile, sweep
from ccci_tasks.lanes.model import Lane

LANES: Final[dict[str, Lane]] = {
    lane.name: lane for lane in (quick.LANE, cold.LANE, reconcile.LANE, sweep.LANE)
}


def get_lane(name: str) -> Lane:
    """The lane called ``name``; ``InvalidInput`` naming the known lanes otherwise."""
    try:
        return LANES[name]
    except (KeyError, TypeError):
        raise InvalidInput(
            f"lane {name!r} is unknown: expected one of {', '.join(sorted(LANES))}"
        ) from None


def steps_by_queue() -> dict[str, set[str]]:
    """Every step name of every lane (main and undo), per queue: one Celery task each."""
    out: dict[str, set[str]] = {}
    for lane in LANES.values():
        out.setdefault(lane.queue, set()).update(lane.functions)
    return out


__all__ = ["LANES", "Lane", "get_lane", "steps_by_queue"]
