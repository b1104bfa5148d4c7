"""Who is told when a run is queued or ends: the one place the run hooks are registered.

Every process that queues or ends runs (the Celery workers, the CLI and the Drone bridge
through ``ccci_tasks.tasks``) loads this package, whose ``__init__`` calls ``wire``.
In order: a parent run waiting for this one (a sweep), the forge (commit statuses, the
verdict comment, the finish notification), the platform (per-run files).
"""

from __future__ import annotations

from ccci_tasks import forge, hooks, platform
from ccci_tasks.lanes import runner


def wire() -> None:
    """Register the run hooks of this process (idempotent)."""
    hooks.on_queued(forge.run_queued)
    hooks.on_finished(runner.child_finished)
    hooks.on_finished(forge.run_finished)
    hooks.on_finished(platform.run_finished)
