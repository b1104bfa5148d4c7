"""Lane tasks: the entry points, one task per step name and queue, and the janitor.

The Drone bridge calls ``quick_run.delay(recipe, ref)`` / ``cold_run.delay(recipe, ref)``:
they check the request, queue the run and return at once (their result says it was queued or
why it was refused); the AsyncResult id is the run id. The entry tasks run on the side queue
(``alerts``), never behind a run's step on the ``runs`` queue: a submission is checked and
queued (or refused) within seconds whatever is running. Each step of a lane is its own task
(``ccci.<queue>.<step>``) so Flower shows where a run is; the step tasks are made from the
lane registry, and run the step of the lane named in their run context.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import get_settings
from ccci_tasks.lanes import janitor as janitor_mod
from ccci_tasks.lanes import runner, steps_by_queue
from ccci_tasks.naming import RunId
from ccci_tasks.platform import get_platform


def _run_id(task: Task) -> RunId:
    return RunId(str(task.request.id or uuid.uuid4()))  # the Celery task id: parsed here


@app.task(bind=True, name=c.task_name(c.QUEUE_ALERTS, "quick_run"))  # type: ignore[untyped-decorator]
def quick_run(self: Task, recipe: str, ref: str) -> dict[str, Any]:
    """Queue a quick run of ``recipe`` upgraded in place to ``ref``; returns at once."""
    return runner.submit(get_settings(), _run_id(self), "quick",
                         {"recipe": recipe, "ref": ref}).to_dict()


@app.task(bind=True, name=c.task_name(c.QUEUE_ALERTS, "cold_run"))  # type: ignore[untyped-decorator]
def cold_run(self: Task, recipe: str, ref: str | None = None) -> dict[str, Any]:
    """Queue a full cold run of ``recipe`` at ``ref`` (None: latest); returns at once."""
    return runner.submit(get_settings(), _run_id(self), "cold",
                         {"recipe": recipe, "ref": ref}).to_dict()


def _step_task(queue: str, name: str) -> Task:
    def step(self: Task, ctx: dict[str, Any], undo: bool = False) -> Any:
        return runner.execute_step(self, name, ctx, undo=undo)

    step.__name__ = step.__qualname__ = name
    step.__doc__ = f"The step {name!r} of the run named in its context."
    task: Task = app.task(bind=True, name=c.task_name(queue, name))(step)
    return task


STEP_TASKS: dict[str, Task] = {
    c.task_name(queue, name): _step_task(queue, name)
    for queue, names in steps_by_queue().items()
    for name in sorted(names)
}


# On the side queue: the infra pool runs reconcile steps, and a stopped step there must not
# hold up the round that kills it.
@app.task(name=c.task_name(c.QUEUE_ALERTS, "janitor"))  # type: ignore[untyped-decorator]
def janitor() -> dict[str, Any]:
    """Clean up after dead and forgotten runs, end lost reports, admit queued runs."""
    settings = get_settings()
    return janitor_mod.run(settings, get_platform(settings)).to_dict()
