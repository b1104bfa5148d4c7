"""Lane tasks: the entry points, one task per step, the chain error callback, the janitor.

The Drone bridge calls ``quick_run.delay(recipe, ref)`` / ``cold_run.delay(recipe, ref)``:
they validate, queue the run and return at once; the AsyncResult id is the run id.
Each step of a lane is its own task (``ccci.runs.<step>``) so Flower shows where a run is.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Task, chain

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import get_settings
from ccci_tasks.lanes import janitor as janitor_mod
from ccci_tasks.lanes import runner
from ccci_tasks.lanes.plan import FINISH_COLD, RunCtx, steps_for
from ccci_tasks.lanes.steps import STEPS, StepEnv, StepFn
from ccci_tasks.platform import get_platform
from ccci_tasks.slots import Slots
from ccci_tasks.state import reports
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.meta import load_meta

log = logging.getLogger(__name__)
FINISH_STEPS = ("finish_quick", FINISH_COLD)


def _run_id(task: Task) -> str:
    return str(task.request.id or uuid.uuid4())


@app.task(bind=True, name=c.task_name(c.QUEUE_RUNS, "quick_run"))  # type: ignore[untyped-decorator]
def quick_run(self: Task, recipe: str, ref: str) -> dict[str, Any]:
    """Queue a quick run of ``recipe`` upgraded in place to ``ref``; returns at once."""
    return runner.submit(get_settings(), _run_id(self), "quick", recipe, ref).to_dict()


@app.task(bind=True, name=c.task_name(c.QUEUE_RUNS, "cold_run"))  # type: ignore[untyped-decorator]
def cold_run(self: Task, recipe: str, ref: str | None = None) -> dict[str, Any]:
    """Queue a full cold run of ``recipe`` at ``ref`` (None: latest); returns at once."""
    return runner.submit(get_settings(), _run_id(self), "cold", recipe, ref).to_dict()


def run_step(task: Task, name: str, fn: StepFn, ctx_data: dict[str, Any]) -> dict[str, Any]:
    """Run one step of a run: guard, heartbeat, progress, record; re-raise failures."""
    settings = get_settings()
    ctx = RunCtx.from_dict(ctx_data)
    report = reports.load_report(settings.state_dir, ctx.run_id)
    if report is None or report.finished:
        return {"step": name, "skipped": "the run has already ended"}
    slots = Slots.from_settings(settings)
    if not slots.holds(ctx.run_id):
        return {"step": name, "skipped": "the run no longer holds a slot (the janitor reaps it)"}
    progress = {"run_id": ctx.run_id, "step": name, "lane": ctx.lane, "recipe": ctx.recipe,
                "domain": ctx.domain}
    if not task.request.called_directly:
        task.send_event("task-progress", **progress)
        task.update_state(state="PROGRESS", meta=progress)
    started_at, t0 = utc_now(), time.monotonic()
    with slots.keep_alive(ctx.run_id):
        try:
            env = StepEnv(settings, get_platform(settings, run_id=ctx.run_id),
                          load_meta(settings.tests_dir, ctx.recipe),
                          runner.recipe_repo(settings, ctx.recipe))
            detail = fn(env, ctx)
        except Exception as exc:
            reports.record_step(settings.state_dir, ctx.run_id, name, task.request.id,
                                started_at, time.monotonic() - t0, False, str(exc))
            raise
    reports.record_step(settings.state_dir, ctx.run_id, name, task.request.id, started_at,
                        time.monotonic() - t0, True, detail)
    if name in FINISH_STEPS:
        runner.end_run(settings, ctx, "pass", detail)
    return {"step": name, "detail": detail}


def _step_task(name: str, fn: StepFn) -> Task:
    def step(self: Task, ctx: dict[str, Any]) -> dict[str, Any]:
        return run_step(self, name, fn, ctx)

    step.__name__ = step.__qualname__ = name
    step.__doc__ = fn.__doc__
    task: Task = app.task(bind=True, name=c.task_name(c.QUEUE_RUNS, name))(step)
    return task


STEP_TASKS: dict[str, Task] = {name: _step_task(name, fn) for name, fn in STEPS.items()}


@app.task(name=c.task_name(c.QUEUE_RUNS, "on_run_error"))  # type: ignore[untyped-decorator]
def on_run_error(request: Any, exc: BaseException, traceback: Any, ctx: dict[str, Any]) -> None:
    """Chain error callback (called inline by the worker): the sacred part of a failed run."""
    failed = str(getattr(request, "task", "") or "").rsplit(".", 1)[-1] or None
    runner.fail_run(get_settings(), RunCtx.from_dict(ctx), failed, exc)


def launch_chain(ctx: RunCtx) -> None:
    """Start an admitted run: its steps as one chain, with the error callback on each."""
    data = ctx.to_dict()
    steps = [STEP_TASKS[name].si(data) for name in steps_for(ctx)]
    chain(*steps).on_error(on_run_error.s(data)).apply_async()


@app.task(name=c.task_name(c.QUEUE_INFRA, "janitor"))  # type: ignore[untyped-decorator]
def janitor() -> dict[str, Any]:
    """Reap what crashed runs left, free their slots and admit queued runs."""
    settings = get_settings()
    return janitor_mod.run(settings, get_platform(settings)).to_dict()
