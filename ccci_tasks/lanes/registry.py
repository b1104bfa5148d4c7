"""The one registry of lanes that the runner, the janitor, the tasks, the CLI and the forge
read. A lane is registered once, in ``ccci_tasks.lanes`` (its package ``__init__``), which
Python runs before any module of the package: whoever imports this module sees every lane.
"""

from __future__ import annotations

from typing import Final

from ccci_tasks.errors import InvalidInput
from ccci_tasks.lanes.model import Lane, OrphanFn

LANES: Final[dict[str, Lane]] = {}


def register(lane: Lane) -> Lane:
    """Add ``lane``; a second lane under a name already taken is refused."""
    known = LANES.get(lane.name)
    if known is not None and known is not lane:
        raise InvalidInput(f"lane {lane.name!r} is registered already")
    if lane.entry is not None:
        for other in LANES.values():
            if other is not lane and other.entry is not None \
                    and other.entry.task == lane.entry.task:
                raise InvalidInput(f"lane {lane.name!r}: entry task {lane.entry.task!r} is "
                                   f"taken by lane {other.name!r}: give it another name")
    LANES[lane.name] = lane
    return lane


def unregister(name: str) -> None:
    """Drop the lane called ``name`` (a test's toy lane)."""
    LANES.pop(name, None)


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


def with_entry() -> list[Lane]:
    """The lanes that can be asked for from outside (an entry task), in registration order."""
    return [lane for lane in LANES.values() if lane.entry is not None]


def by_trigger(text: str) -> Lane | None:
    """The lane whose pull-request trigger is exactly ``text``; None for any other text."""
    for lane in LANES.values():
        if lane.pull_requests is not None and lane.pull_requests.trigger == text:
            return lane
    return None


def status_context(name: str) -> str | None:
    """The commit status context of lane ``name``; None when it does not report to PRs."""
    lane = LANES.get(name)
    if lane is None or lane.pull_requests is None:
        return None
    return lane.pull_requests.context


def falls_back_to(name: str) -> str | None:
    """The lane a run of lane ``name`` may become at submission, if it declares one."""
    lane = LANES.get(name)
    if lane is None or lane.pull_requests is None:
        return None
    return lane.pull_requests.falls_back_to


def orphans() -> dict[str, OrphanFn]:
    """Per resource kind: the janitor's clean-up of what a cut-off run left on it (the
    first lane that declares one for a kind gives it)."""
    out: dict[str, OrphanFn] = {}
    for lane in LANES.values():
        for kind, fn in lane.orphans.items():
            out.setdefault(kind, fn)
    return out
