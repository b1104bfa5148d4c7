"""Start order is not a crash loop (R12.2): which failed tasks count toward one.

A real recipe's app often exits while its database boots (it cannot connect yet) and the
platform restarts it until the database accepts; a worker exits until the app has migrated the
schema. Those failures are the stack starting in some order, not a service that keeps failing.
The rule, for every failed task of a service S (since the current deploy):

    it counts toward a crash loop only if, when it failed, every other service of the stack
    was up, and had been since before it failed.

Another service O is *up* when all its desired tasks of the current spec run; it is up since
its youngest such task started running. Swarm keeps a task with a healthcheck ``starting``
until the check passes, so a database with a healthcheck is up once it accepts connections;
one without a healthcheck is taken as up ``DEPENDENCY_SETTLE_S`` after its task started
running (no sign of readiness is available, and a database's first boot takes seconds).

Two refinements keep crash loops fast:

* an O that is itself failing (down, with failures of its own since the deploy) excuses
  nobody: when the database crash-loops, the app's failures count and so do the database's,
  instead of each waiting for the other for ever;
* a rejected task (a missing image, a missing secret) always counts: it never started.

A service that keeps failing once the rest of the stack runs is therefore red after
``CRASH_LOOP_FAILURES`` counted failures, as a single-service app is. The rule is pure: it
reads only the facts below, so the deploy wait and the disk prune apply the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["DEPENDENCY_SETTLE_S", "Failed", "ServiceProgress", "counted_failures"]

DEPENDENCY_SETTLE_S: Final = 10.0


@dataclass(frozen=True)
class Failed:
    """One failed or rejected task: when (engine clock, ns) and which state."""

    at_ns: int
    state: str  # "failed" | "rejected"


@dataclass(frozen=True)
class ServiceProgress:
    """One service of a stack as the rule sees it."""

    name: str
    failures: tuple[Failed, ...]  # since the current deploy
    up_since_ns: int | None  # all desired tasks run since then; None: not up
    healthchecked: bool = False


def _excuses(other: ServiceProgress, at_ns: int, settle_ns: int) -> bool:
    """Whether ``other`` explains a failure at ``at_ns`` as start order."""
    if other.up_since_ns is None:
        return not other.failures  # still starting; a failing one excuses nobody
    ready_ns = other.up_since_ns + (0 if other.healthchecked else settle_ns)
    return ready_ns > at_ns


def counted_failures(
    services: Sequence[ServiceProgress], settle_s: float = DEPENDENCY_SETTLE_S
) -> dict[str, tuple[int, int]]:
    """Per service: (failures that count toward a crash loop, failures excused as start
    order)."""
    settle_ns = int(settle_s * 1e9)
    out: dict[str, tuple[int, int]] = {}
    for service in services:
        others = [o for o in services if o.name != service.name]
        counted = excused = 0
        for failure in service.failures:
            if failure.state != "rejected" and any(
                _excuses(o, failure.at_ns, settle_ns) for o in others
            ):
                excused += 1
            else:
                counted += 1
        out[service.name] = (counted, excused)
    return out
