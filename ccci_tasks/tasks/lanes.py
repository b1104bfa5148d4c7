"""Lane tasks: the entry points, one task per step name and queue, and the janitor.

Every lane with an ``Entry`` gets its entry task ``ccci.<queue>.<task>``, made here from the
declaration: its parameters are those of the lane's ``Entry.request`` (the Drone bridge calls
``quick_run.delay(recipe, ref)`` / ``cold_run.delay(recipe, ref)``, beat
``nightly_sweep.delay(scheduled=True)``); it checks the request, queues the run and returns
at once (its result says it was queued or why it was refused); the AsyncResult id is the run
id. The run entries run on the side queue (``alerts``), never behind a run's step on the
``runs`` queue: a submission is checked and queued (or refused) within seconds whatever is
running. Each step of a lane is its own task (``ccci.<queue>.<step>``) so Flower shows where
a run is; the step tasks are made from the lane registry, and run the step of the lane named
in their run context.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any

from celery import Task

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import get_settings
from ccci_tasks.lanes import janitor as janitor_mod
from ccci_tasks.lanes import runner
from ccci_tasks.lanes.model import Lane
from ccci_tasks.lanes.registry import steps_by_queue, with_entry
from ccci_tasks.naming import RunId
from ccci_tasks.platform import get_platform


def _run_id(task: Task) -> RunId:
    return RunId(str(task.request.id or uuid.uuid4()))  # the Celery task id: parsed here


def entry_task(lane: Lane) -> Task:
    """The Celery entry task of ``lane`` (registered once; asked again, the same task)."""
    entry = lane.entry
    if entry is None:
        raise ValueError(f"lane {lane.name!r} declares no entry")
    name = c.task_name(entry.queue, entry.task)
    if name in app.tasks:
        known: Task = app.tasks[name]
        return known

    def submit(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        request = entry.request(*args, **kwargs)
        return runner.submit(get_settings(), _run_id(self), lane.name, request).to_dict()

    params = inspect.signature(entry.request).parameters.values()
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    submit.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
    submit.__name__ = submit.__qualname__ = entry.task
    submit.__doc__ = entry.request.__doc__
    task: Task = app.task(bind=True, name=name)(submit)
    return task


# Lane name -> its entry task, for every lane that has one.
ENTRY_TASKS: dict[str, Task] = {lane.name: entry_task(lane) for lane in with_entry()}


def entry_of(lane: Lane) -> Task:
    """The entry task of ``lane`` (made now for a lane registered after this module)."""
    if lane.name not in ENTRY_TASKS:
        ENTRY_TASKS[lane.name] = entry_task(lane)
    return ENTRY_TASKS[lane.name]


def by_task_name(short: str) -> Task | None:
    """The entry task whose short name (``quick_run``, ...) is ``short``, if any."""
    for task in ENTRY_TASKS.values():
        if task.name.rsplit(".", 1)[-1] == short:
            return task
    return None


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


@app.task(name=c.task_name(c.QUEUE_RUNS, "dispatch"))  # type: ignore[untyped-decorator]
def dispatch() -> list[str]:
    """Admit and launch what fits on this node now (R15: sent to a node's ``runs.<node>``
    to wake it when a run it may take was queued or something it waits for was freed)."""
    return runner.dispatch(get_settings())


# On the side queue: the infra pool runs reconcile steps, and a stopped step there must not
# hold up the round that kills it.
@app.task(name=c.task_name(c.QUEUE_ALERTS, "janitor"))  # type: ignore[untyped-decorator]
def janitor() -> dict[str, Any]:
    """Clean up after dead and forgotten runs, end lost reports, admit queued runs."""
    settings = get_settings()
    return janitor_mod.run(settings, get_platform(settings)).to_dict()


def __getattr__(name: str) -> Task:
    """``quick_run``, ``cold_run``, ``warm_reconcile``, ``nightly_sweep``, ...: the entry
    tasks by their short names."""
    task = by_task_name(name)
    if task is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return task
