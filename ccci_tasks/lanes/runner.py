"""Running lanes: submit, admit and launch, execute each step fenced, undo, end.

``submit`` checks a request with its lane's ``prepare`` and queues it (or refuses it at once,
verdict ``error``, reason ``refused: ...``). ``dispatch`` observes what is live on the engine,
admits what fits (``slots``) and launches each admitted run as a Celery chain of its lane's
steps. ``execute_step`` runs one step: it checks the run is still on, counts deliveries
(a step whose delivery keeps killing its worker ends the run), renews the lease, runs the
lane's function against a fenced platform while a heartbeat keeps the lease alive, and records
the step. A failed step launches the lane's undo as its own chain (each undo step is attempted
and recorded like any step); the last step of either chain ends the run: verdict, resources
released, hooks told, the next runs admitted.

The runner never asks which lane it runs: everything particular lives in the lane's module.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import Task

import ccci_tasks.lanes.placement as placement
from ccci_tasks import constants as c
from ccci_tasks import enqueue, failpoints, hooks, naming, redact, stonith
from ccci_tasks.admission import RunSpec, Slots, keep_alive
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import CcciError, LeaseLost, PlatformError
from ccci_tasks.lanes.fence import Fence, FencedPlatform, journal_path
from ccci_tasks.lanes.model import (
    Failure,
    Lane,
    Outcome,
    Park,
    RunCtx,
    RunSkipped,
    StepEnv,
    Submitted,
)
from ccci_tasks.lanes.recipes import recipe_repo
from ccci_tasks.lanes.registry import get_lane
from ccci_tasks.naming import Domain, Parsed, Recipe, Ref, RunId
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform import Platform, get_platform
from ccci_tasks.redact import Redactor
from ccci_tasks.state import outputs, reports
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.meta import load_meta
from ccci_tasks.state.outputs import StepOutput

P = TypeVar("P", bound=Parsed)
log = logging.getLogger(__name__)

DELIVERIES_TTL_S = 24 * 3600


# ----------------------------------------------------------------------------- submit


def submit(
    settings: Settings, run_id: RunId, lane_name: str, request: Mapping[str, Any],
    parent: RunId | None = None,
) -> Submitted:
    """Check and queue a run. Any refusal ends the run at once with verdict ``error``."""
    state = settings.state_dir
    reports.create_report(state, run_id, lane_name if isinstance(lane_name, str) else "x",
                          _or_none(Recipe, request.get("recipe")),
                          _or_none(Ref, request.get("ref")))
    try:
        lane = get_lane(lane_name)
        prepared = lane.prepare(settings, run_id, request)
    except RunSkipped as exc:
        reports.set_fields(state, run_id, skipped=str(exc))
        ended = reports.end_report(state, run_id, "pass", f"skipped: {exc}")
        if ended is not None:
            hooks.run_finished(settings, ended)
        log.info("run %s skipped: %s", run_id, exc)
        return Submitted(run_id, lane_name, "pass", f"skipped: {exc}")
    except CcciError as exc:
        return _refuse(settings, run_id, lane_name, f"refused: {exc}")
    except Exception as exc:  # a bug must not leave a run "running" forever
        log.exception("run %s: submission failed", run_id)
        return _refuse(settings, run_id, lane_name,
                       f"refused: unexpected {type(exc).__name__}: {exc}")
    spec = RunSpec(run_id=run_id, lane=prepared.lane, recipe=prepared.recipe, ref=prepared.ref,
                   resources=prepared.resources, parent=parent, pin=prepared.pin)
    report = reports.update_report(state, run_id, lane=prepared.lane, domain=prepared.domain,
                                   recipe=prepared.recipe, ref=prepared.ref,
                                   reason=prepared.note)
    if parent is not None:
        report = reports.set_fields(state, run_id, parent=parent)
    try:
        Slots.from_settings(settings).enqueue(spec)
    except CcciError as exc:
        return _refuse(settings, run_id, prepared.lane, f"refused: {exc}")
    hooks.run_queued(settings, report)
    dispatch(settings)
    placement.wake(settings, prepared.pin)
    return Submitted(run_id, prepared.lane, None, prepared.note)


def _or_none(kind: type[P], value: object) -> P | None:
    """``value`` as ``kind`` for the report of a refused request, or None when it is bad
    (the lane's ``prepare`` says why)."""
    try:
        return kind(value)
    except CcciError:
        return None


def _refuse(settings: Settings, run_id: RunId, lane: str, reason: str) -> Submitted:
    reason = redact.for_settings(settings).text(reason)
    ended = reports.end_report(settings.state_dir, run_id, "error", reason)
    if ended is not None:
        hooks.run_finished(settings, ended)
    return Submitted(run_id, lane, "error", reason)


# ----------------------------------------------------------------------------- admission


def observe_live(settings: Settings) -> list[str]:
    """The deployed apps of this system that take a slot (cold apps and canonicals under
    our base domain; never live-warm infra apps), as ``cold:<hex>`` / ``warm:<recipe>``."""
    out = []
    for app in get_platform(settings).live_apps():
        if not app.deployed or naming.parse_domain(app.domain, settings.base_domain) is None:
            continue
        if app.kind == "cold" and app.run:
            out.append(f"cold:{app.run}")
        elif app.kind == "warm":
            out.append(f"warm:{app.recipe}")
    return out


def dispatch(settings: Settings) -> list[str]:
    """Admit every pending run that fits now and launch it. Never waits for anything."""
    slots = Slots.from_settings(settings)
    try:
        live = observe_live(settings)
    except PlatformError as exc:  # without the engine's truth, admit nothing
        log.warning("admission postponed: cannot observe the Docker engine: %s", exc)
        return []
    launched: list[str] = []
    for spec in slots.admit(live):
        lane = get_lane(spec.lane)
        try:
            ctx = lane.plan(settings, spec)
        except CcciError as exc:
            log.warning("run %s could not be planned: %s", spec.run_id, exc)
            end_run(settings, spec.run_id, spec.token, "error", f"planning: {exc}",
                    dispatch_next=False)
            continue
        reports.mark_admitted(settings.state_dir, spec.run_id)
        try:
            launch(lane, ctx, lane.steps(ctx), node=spec.node or settings.node)
        except Exception as exc:  # broker trouble: the run waits for the next dispatch
            log.warning("run %s could not be launched (%s); back in the queue", spec.run_id, exc)
            slots.requeue(spec.run_id, spec.token)
            continue
        launched.append(spec.run_id)
    return launched


def _argsrepr(ctx: RunCtx) -> str:
    return repr((ctx.recipe, ctx.lane, ctx.run_id[:8]))


def launch(lane: Lane, ctx: RunCtx, names: tuple[str, ...], *, node: str,
           undo: bool = False) -> None:
    """Start ``names`` as one Celery chain on the lane's queue (by task name: the runner
    never imports the task modules); a lane of the runs queue runs on ``node``'s own
    ``runs.<node>``, where the run was admitted (R15)."""
    data = ctx.to_dict()
    queue = c.runs_queue(node) if lane.queue == c.QUEUE_RUNS else None
    enqueue.chain([enqueue.Call(c.task_name(lane.queue, name), (data,), {"undo": undo},
                                argsrepr=_argsrepr(ctx),
                                kwargsrepr=repr({"undo": undo} if undo else {}))
                   for name in names], queue=queue)



# ----------------------------------------------------------------------------- steps


def _stop_chain(task: Task) -> None:
    """This step is the last one of its chain: nothing after it is published."""
    task.request.chain = None
    task.request.callbacks = None


def _deliveries(slots: Slots, run_id: str, name: str, undo: bool) -> int:
    key = f"{c.KEY_DELIVERIES}{run_id}:{'undo:' if undo else ''}{name}"
    with slots.broker(f"counting the deliveries of step {name} of run {run_id}"):
        pipe = slots.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, DELIVERIES_TTL_S)
        count, _ = pipe.execute()
    return int(count)


class PoisonStep(CcciError):
    """A step whose deliveries keep killing its worker."""


def _interrupter() -> Callable[[], None]:
    """A callback that raises ``LeaseLost`` in the calling thread at its next bytecode: a
    step that lost its lease (seen by the heartbeat thread) stops waiting at once instead of
    running out its timeout; its fenced mutations would be refused anyway."""
    ident = threading.get_ident()

    def interrupt() -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                   ctypes.py_object(LeaseLost))

    return interrupt


def execute_step(task: Task, name: str, ctx_data: Mapping[str, Any], *, undo: bool) -> Any:
    """Run one step of a run; see the module docstring."""
    settings = get_settings()
    ctx = RunCtx.from_dict(ctx_data)
    lane = get_lane(ctx.lane)
    state = settings.state_dir
    report = reports.load_report(state, ctx.run_id)
    slots = Slots.from_settings(settings)
    if report is None or report.finished:
        _stop_chain(task)
        # Its end was cut off between the verdict and the release: finish that part.
        if report is not None and slots.end(ctx.run_id, ctx.token):
            dispatch(settings)
        return {"step": name, "stopped": "the run has ended"}
    deliveries = _deliveries(slots, ctx.run_id, name, undo)
    fence = Fence(slots, ctx.run_id, ctx.token, journal_path(state, ctx.run_id))
    # Recorded as the run's holder before the first check (so whoever sees the lease gone
    # also sees this process, and kills it before the resources change hands).
    with stonith.holding(state, settings.node, ctx.run_id, ctx.token, name) as holder, \
            failpoints.in_step(ctx.run_id, name):
        if not slots.renew(ctx.run_id, ctx.token, holder):
            _stop_chain(task)
            return {"step": name, "stopped": "the run lost its lease; the janitor cleans up"}
        return _run_step(task, settings, lane, ctx, name, fence, deliveries, undo=undo)


def _run_step(
    task: Task, settings: Settings, lane: Lane, ctx: RunCtx, name: str, fence: Fence,
    deliveries: int, *, undo: bool,
) -> Any:
    state, slots = settings.state_dir, fence.slots
    started_at, t0 = utc_now(), time.monotonic()
    reports.start_step(state, ctx.run_id, name, task.request.id, started_at, undo=undo)
    if not task.request.called_directly:
        # Not a "task-*" event: those change the task's state in Flower, and a running step
        # must stay STARTED there.
        task.send_event(c.STEP_EVENT, run_id=ctx.run_id, step=name, lane=ctx.lane,
                        recipe=ctx.recipe, domain=ctx.domain, undo=undo)
    result: str | Outcome | Park
    output = StepOutput()
    try:
        with keep_alive(slots, ctx.run_id, ctx.token, on_lost=_interrupter()):
            if deliveries > settings.poison_max_deliveries:
                raise PoisonStep(
                    f"step {name} was delivered {deliveries - 1} times and each delivery "
                    "ended with its worker killed (out of memory? a crash?); giving up"
                )
            env = _env(settings, lane, ctx, fence, output)
            try:
                result = lane.function(name)(env, ctx)
            except LeaseLost:
                raise
            except Exception:
                _stack_logs(env.platform, ctx, output)
                raise
    except LeaseLost as exc:
        log.warning("run %s step %s stopped: %s", ctx.run_id, name, exc)
        _stop_chain(task)
        return {"step": name, "stopped": str(exc)}
    except Exception as exc:
        if not fence.renew():  # lost meanwhile: nothing more from this step
            _stop_chain(task)
            return {"step": name, "stopped": "the run lost its lease; the janitor cleans up"}
        redactor = run_redactor(settings, ctx.domain, ctx.recipe)
        problem = redactor.text(str(exc))
        _keep_output(settings, ctx, name, task.request.id, undo, output, problem, redactor)
        reports.record_step(state, ctx.run_id, name, task.request.id, started_at,
                            time.monotonic() - t0, False, problem, undo=undo)
        if undo:  # every undo step is attempted: note the problem, go on
            log.error("run %s: undo step %s failed: %s", ctx.run_id, name, problem)
            _after_undo_step(settings, lane, ctx, name)
            return {"step": name, "problem": problem}
        _stop_chain(task)
        failure = lane.failure(ctx, name, exc)
        _start_undo(settings, lane, ctx,
                    dataclasses.replace(failure, reason=redactor.text(failure.reason)))
        raise StepFailed(f"step {name} failed: {problem}") from None
    if not fence.renew():
        _stop_chain(task)
        return {"step": name, "stopped": "the run lost its lease; the janitor cleans up"}
    redactor = run_redactor(settings, ctx.domain, ctx.recipe)
    detail = redactor.text(result if isinstance(result, str) else result.detail)
    _keep_output(settings, ctx, name, task.request.id, undo, output, detail, redactor)
    reports.record_step(state, ctx.run_id, name, task.request.id, started_at,
                        time.monotonic() - t0, True, detail, undo=undo)
    if isinstance(result, Park):
        _stop_chain(task)
        stonith.release(ctx.run_id)
        if slots.park(ctx.run_id, ctx.token) and lane.ready(settings, ctx.run_id):
            resume(settings, ctx.run_id)  # its children were quicker than its parking
        return {"step": name, "parked": detail}
    if undo:
        _after_undo_step(settings, lane, ctx, name,
                         result if isinstance(result, Outcome) else None)
    elif name == lane.steps(ctx)[-1]:
        if isinstance(result, Outcome):
            end_run(settings, ctx.run_id, ctx.token, result.verdict, result.reason or detail)
        else:
            summary = lane.summary(ctx, detail) if lane.summary else detail
            end_run(settings, ctx.run_id, ctx.token, "pass", summary)
    return {"step": name, "detail": detail}


def _env(settings: Settings, lane: Lane, ctx: RunCtx, fence: Fence,
         output: StepOutput) -> StepEnv:
    platform = FencedPlatform(get_platform(settings, run_id=ctx.run_id), fence)
    repo = recipe_repo(settings, ctx.recipe) if lane.needs_repo else None
    def submit_child(run_id: RunId, lane_name: str, request: Mapping[str, Any],
                     parent: RunId | None) -> Submitted:
        return submit(settings, run_id, lane_name, request, parent=parent)

    return StepEnv(settings, platform, fence, load_meta(settings.tests_dir, ctx.recipe), repo,
                   output, submit_child)


# ----------------------------------------------------------------------------- output

STACK_LOG_LINES = 100


class StepFailed(CcciError):
    """A step failed (its Celery task ends FAILURE with this, redacted, message)."""


def run_redactor(settings: Settings, domain: Domain | None, recipe: Recipe | None
                 ) -> Redactor:
    """The settings' secrets and the generated secrets of the run's app and of its recipe's
    canonical."""
    domains = [domain]
    if recipe is not None:
        domains.append(naming.warm_domain(recipe, settings.base_domain))
    try:
        platform = get_platform(settings)
    except CcciError as exc:
        log.warning("no platform to read app secrets from: %s", exc)
        return redact.for_settings(settings)
    return redact.for_run(settings, platform, domains)


def _stack_logs(platform: Platform, ctx: RunCtx, output: StepOutput) -> None:
    """A failed step keeps the last log lines of every service of its stack."""
    if ctx.domain is None:
        return
    try:
        logs = platform.service_logs(ctx.domain, STACK_LOG_LINES)
    except Exception as exc:  # the step's own failure matters more
        output.section(f"service logs of {ctx.domain}", f"unavailable: {exc}", first=True)
        return
    if not logs:
        output.section(f"service logs of {ctx.domain}", "no service is deployed", first=True)
    for service, text in reversed(logs.items()):
        output.section(f"{service}: last {STACK_LOG_LINES} log lines", text or "(no output)",
                       first=True)


def _keep_output(settings: Settings, ctx: RunCtx, name: str, task_id: str | None, undo: bool,
                 output: StepOutput, detail: str, redactor: Redactor) -> None:
    output.section("result", detail)
    try:
        outputs.keep(settings.state_dir, ctx.run_id, name, task_id, undo, output, redactor)
    except (OSError, ValueError) as exc:
        log.warning("run %s: the output of step %s is not kept: %s", ctx.run_id, name, exc)


def _start_undo(settings: Settings, lane: Lane, ctx: RunCtx, failure: Failure) -> None:
    names = lane.undo(ctx, failure)
    if not names:
        end_run(settings, ctx.run_id, ctx.token, failure.verdict, failure.reason)
        return
    launch(lane, ctx.with_failure(failure), names, node=settings.node, undo=True)


def _after_undo_step(
    settings: Settings, lane: Lane, ctx: RunCtx, name: str, outcome: Outcome | None = None
) -> None:
    """After the last undo step, end the run: the failure's verdict and reason (or the
    ``Outcome`` the last undo step returned), with the undo's problems and an alert."""
    assert ctx.failure is not None
    if name != lane.undo(ctx, ctx.failure)[-1]:
        return
    report = reports.load_report(settings.state_dir, ctx.run_id)
    problems = [f"{s.name}: {s.detail}" for s in (report.steps if report else ())
                if s.undo and not s.ok]
    verdict = outcome.verdict if outcome is not None else ctx.failure.verdict
    reason = outcome.reason or outcome.detail if outcome is not None else ctx.failure.reason
    if problems:
        reason += "; cleanup problems: " + "; ".join(problems)
        try:
            write_alert(settings.state_dir, "restore-failed", ctx.recipe,
                        f"cleanup after run {ctx.run_id} was incomplete", "\n".join(problems))
        except CcciError as exc:
            log.error("could not write alert: %s", exc)
    end_run(settings, ctx.run_id, ctx.token, verdict, reason)


# ----------------------------------------------------------------------------- parking


def resume(settings: Settings, run_id: RunId) -> bool:
    """Continue a parked run: first in line again, then admitted and planned anew."""
    if not Slots.from_settings(settings).unpark(run_id):
        return False
    log.info("run %s resumes", run_id)
    dispatch(settings)
    placement.wake(settings)
    return True


def child_finished(settings: Settings, child: reports.RunReport) -> None:
    """A run that a parent run started has ended: tell the parent's lane; resume the
    parent once it is ready."""
    parent_text = child.extra.get("parent")
    if not isinstance(parent_text, str):
        return
    parent_id = RunId(parent_text)  # read back from the child's report
    parent = reports.load_report(settings.state_dir, parent_id)
    if parent is None or parent.finished:
        return
    lane = get_lane(parent.lane)
    lane.on_child(settings, parent_id, child)
    if parent_id in Slots.from_settings(settings).parked() and lane.ready(settings, parent_id):
        resume(settings, parent_id)


# ----------------------------------------------------------------------------- ending


def end_run(
    settings: Settings, run_id: RunId, token: int, verdict: str, reason: str | None,
    *, dispatch_next: bool = True,
) -> None:
    """While the run still holds its lease: write the verdict (the first one wins), release
    its resources and forget it (one broker step that checks the token), tell the hooks,
    admit the next runs. Idempotent; a run that lost its lease is left to the janitor."""
    state = settings.state_dir
    report = reports.load_report(state, run_id)
    if report is not None and report.reason and not report.finished:
        # A note set at submission (e.g. "fell back to a full cold run") stays in front.
        reason = f"{report.reason}; {reason}" if reason else report.reason
    if reason and report is not None:
        reason = run_redactor(settings, report.domain, report.recipe).text(reason)
    failpoints.fire("before-verdict")
    slots = Slots.from_settings(settings)
    if not slots.renew(run_id, token):
        log.warning("run %s lost its lease before its verdict %s; the janitor ends it",
                    run_id, verdict)
        return
    ended = reports.end_report(state, run_id, verdict, reason) if report is not None else None
    stonith.release(run_id)
    slots.end(run_id, token)
    if ended is not None:
        hooks.run_finished(settings, ended)
    if dispatch_next:
        dispatch(settings)
        if slots.pending():  # what waited for this run's resources may go elsewhere
            placement.wake(settings)
