"""The lanes: each is one module that declares its ``Lane`` (``ccci_tasks.lanes.model``) and
registers it (``LANE = register(Lane(...))``).

Adding a lane is adding its module and its name to the one line below. The shared machinery
reads the lanes from ``ccci_tasks.lanes.registry``; Python runs this file before any module of
the package, so every lane is registered before anything can look one up.
"""

from __future__ import annotations

from ccci_tasks.lanes import cold, quick, reconcile, sweep  # noqa: F401  (each registers its lane)
from ccci_tasks.lanes.registry import LANES, get_lane, register, steps_by_queue

__all__ = ["LANES", "get_lane", "register", "steps_by_queue"]
