"""The lanes: each is one module that declares a ``Lane`` (``ccci_tasks.lanes.model``).

Adding a lane is adding its module and one line below. The shared machinery reads them from
``ccci_tasks.lanes.registry``; Python runs this file before any module of the package, so
every lane is registered before anything can look one up.
"""

from __future__ import annotations

from ccci_tasks.lanes import cold, quick, reconcile, sweep
from ccci_tasks.lanes.registry import LANES, get_lane, register, steps_by_queue

register(quick.LANE)
register(cold.LANE)
register(reconcile.LANE)
register(sweep.LANE)

__all__ = ["LANES", "get_lane", "register", "steps_by_queue"]
