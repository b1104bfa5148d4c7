"""Celery tasks: thin wrappers over the modules of ``ccci_tasks``; no logic of their own.

The Drone bridge imports its entry points from here:
``from ccci_tasks.tasks import quick_run, cold_run``.
"""

from ccci_tasks.tasks import diag

__all__ = ["diag"]
