"""The nightly sweep (R8): infra to latest, a cold run on latest of every enrolled recipe,
then the stale warm data and the disk.

Steps: admit → reconcile_infra (a reconcile run of every ``CCCI_INFRA_APPS`` app) → cold_runs
(a cold run on latest of every enrolled recipe: each takes a run slot like any other run, so
they wait behind runs in flight, at most MAX_TESTS at once, and each green one promotes) →
prune_stale (warm data of recipes no longer enrolled, never a canonical a run holds) →
disk_prune (the gated prune of ``ccci_tasks.diskprune``) → finish (disk usage, verdict).

The sweep never blocks a worker while its runs go: ``reconcile_infra`` and ``cold_runs``
start child runs and *park* the sweep (``model.Park``); each child that ends records its
verdict here, and the last one resumes the sweep, whose remaining steps are planned anew from
its report. One red recipe does not stop it; its verdict is ``fail`` when any recipe was red.
No enrolled recipe, or an unreadable tests dir, ends it ``error`` with a ``sweep-empty``
alert: never a silent green. A sweep submitted while another is in flight is skipped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import ccci_tasks.lanes.cold as cold
import ccci_tasks.lanes.common as common
import ccci_tasks.lanes.reconcile as reconcile
from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.admission import Resource, RunSpec, Slots
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError, ConfigError, StateError
from ccci_tasks.lanes.model import (
    Command,
    Entry,
    Failure,
    Lane,
    Outcome,
    Park,
    RunCtx,
    RunSkipped,
    StepEnv,
    StepFn,
    Submission,
    Verdict,
)
from ccci_tasks.lanes.registry import register
from ccci_tasks.naming import Recipe, RunId
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform.base import Platform
from ccci_tasks.state import reports, sweeps
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.meta import enrolled_recipes

log = logging.getLogger(__name__)

NAME = "sweep"
RECIPE = Recipe("sweep")  # the "recipe" a sweep report names: the sweep is of every recipe
ALL_STEPS = ("admit", "reconcile_infra", "cold_runs", "prune_stale", "disk_prune", "finish")


class SweepEmpty(CcciError):
    """The sweep found nothing to test: no enrolled recipe, or no readable tests dir."""


def _report(settings: Settings, run_id: RunId) -> reports.RunReport:
    report = reports.load_report(settings.state_dir, run_id)
    if report is None:
        raise StateError(f"sweep {run_id} has no report")
    return report


# ----------------------------------------------------------------------------- prepare/plan


def prepare(settings: Settings, run_id: RunId, request: Mapping[str, Any]) -> Submission:
    for other in reports.list_reports(settings.state_dir):
        if other.lane == NAME and not other.finished and other.run_id != run_id:
            raise RunSkipped(f"sweep {other.run_id} is in flight (started "
                             f"{other.started_at:%Y-%m-%d %H:%M:%S} UTC)")
    if request.get("scheduled"):
        last = sweeps.last_completed(settings.state_dir, broker.client(settings))
        min_gap = timedelta(hours=settings.sweep_min_interval_h)
        if last is not None and utc_now() - last < min_gap:
            raise RunSkipped(f"a sweep completed at {last:%Y-%m-%d %H:%M:%S} UTC, less than "
                             f"{settings.sweep_min_interval_h:g} h ago")
    return Submission(NAME, RECIPE, None, (Resource.sweep(),), None)


def _remaining(report: reports.RunReport) -> tuple[str, ...]:
    extra = report.extra
    if "recipes" in extra:
        return ("prune_stale", "disk_prune", "finish")
    if "infra" in extra:
        return ("cold_runs", "prune_stale", "disk_prune", "finish")
    return ALL_STEPS


def plan(settings: Settings, spec: RunSpec) -> RunCtx:
    report = _report(settings, spec.run_id)
    return RunCtx(run_id=spec.run_id, lane=NAME, recipe=RECIPE, ref=None, domain=None,
                  token=spec.token, plan={"steps": list(_remaining(report))})


def steps(ctx: RunCtx) -> tuple[str, ...]:
    return tuple(ctx.plan.get("steps") or ALL_STEPS)


def undo(ctx: RunCtx, failure: Failure) -> tuple[str, ...]:
    return ()  # the sweep changes nothing itself; its child runs undo their own


def failure(ctx: RunCtx, step: str, exc: BaseException) -> Failure:
    if isinstance(exc, SweepEmpty):
        return Failure(step, "error", f"nothing to sweep: {exc}")
    return Failure(step, "error", f"{step}: {exc}")


def recover(settings: Settings, platform: Platform, spec: RunSpec) -> list[str]:
    return []  # nothing of its own is live; its child runs are runs of their own


def ready(settings: Settings, run_id: RunId) -> bool:
    """Parked until every child run it started has a verdict."""
    report = reports.load_report(settings.state_dir, run_id)
    if report is None:
        return False
    children = [*report.extra.get("infra", []), *report.extra.get("recipes", [])]
    return all(
        (child := reports.load_report(settings.state_dir, entry["run_id"])) is not None
        and child.finished
        for entry in children
    )


def on_child(settings: Settings, parent_id: RunId, child: reports.RunReport) -> None:
    """Record a child run's verdict (and a reconcile's outcome) in the sweep's report."""
    report = _report(settings, parent_id)
    changes: dict[str, Any] = {}
    for field, key in (("infra", "outcome"), ("recipes", "verdict")):
        entries = [dict(e) for e in report.extra.get(field, [])]
        for entry in entries:
            if entry.get("run_id") == child.run_id:
                entry["verdict"] = child.verdict
                if key == "outcome":
                    entry["outcome"] = child.extra.get("outcome") or child.verdict
                changes[field] = entries
    if changes:
        reports.set_fields(settings.state_dir, parent_id, **changes)


# ----------------------------------------------------------------------------- steps


def _start(
    env: StepEnv, ctx: RunCtx, lane: Lane, names: list[Recipe], field: str, key: str,
    *, outcome: bool = False,
) -> list[dict[str, Any]]:
    """Record, then queue, a child run of ``lane`` for each of ``names``; each entry of
    ``field`` names its child under ``key`` (and has an ``outcome`` if asked)."""
    if env.submit is None:
        raise CcciError(f"sweep {ctx.run_id}: this step cannot start runs (no submit)")
    started = []
    for name in names:
        child = RunId(str(uuid.uuid4()))
        entry: dict[str, Any] = {"run_id": child, "verdict": None, key: name}
        if outcome:
            entry["outcome"] = None
        started.append(entry)
    # Recorded before the children are queued, so every child's end finds its entry.
    env.fence.check(f"start {len(names)} {lane.name} run(s)")
    reports.set_fields(env.settings.state_dir, ctx.run_id, **{field: started})
    for entry in started:
        submitted = env.submit(entry["run_id"], lane.name, {"recipe": entry[key]}, ctx.run_id)
        if submitted.verdict is not None:  # refused at the door: already ended
            log.warning("sweep %s: %s run of %s: %s", ctx.run_id, lane.name, entry[key],
                        submitted.reason)
    return started


def reconcile_infra(env: StepEnv, ctx: RunCtx) -> str | Park:
    """R8.1 first: roll the live-warm infra to latest (a reconcile run per app)."""
    apps = env.settings.infra_app_list()
    if not apps:
        reports.set_fields(env.settings.state_dir, ctx.run_id, infra=[])
        return "no live-warm apps (CCCI_INFRA_APPS is empty)"
    started = _start(env, ctx, reconcile.LANE, apps, "infra", "app", outcome=True)
    return Park(f"reconciling {', '.join(apps)} ({len(started)} run(s)); parked until done")


def cold_runs(env: StepEnv, ctx: RunCtx) -> Park:
    """A cold run on latest of every enrolled recipe, each through the run slots."""
    try:
        enrolled = enrolled_recipes(env.settings.tests_dir)
    except ConfigError as exc:
        why = f"the tests dir cannot be read: {exc}"
        _sweep_empty_alert(env.settings, why)
        raise SweepEmpty(why) from exc
    if not enrolled:
        why = (f"no recipe is enrolled (WARM_CANONICAL = True) under "
               f"{env.settings.tests_dir}: the sweep would test nothing")
        _sweep_empty_alert(env.settings, why)
        raise SweepEmpty(why)
    started = _start(env, ctx, cold.LANE, enrolled, "recipes", "recipe")
    return Park(f"cold runs on latest of {', '.join(enrolled)} ({len(started)} run(s)); "
                "parked until done")


def prune_stale(env: StepEnv, ctx: RunCtx) -> str:
    """R5.4: drop the warm data of recipes no longer enrolled (never a held canonical)."""
    import ccci_tasks.lanes.stale as stale

    held = {lease.spec.canonical for lease in Slots.from_settings(env.settings).occupying()
            if lease.spec and lease.spec.canonical}
    env.fence.check("prune the warm data of recipes no longer enrolled")
    removed = stale.prune_stale(env.settings, env.platform, held)
    recipes = sorted({item.split(":", 1)[1].rstrip("/").rsplit("/", 1)[-1]
                      for item in removed if item.startswith("state:")})
    reports.set_fields(env.settings.state_dir, ctx.run_id, pruned_stale=recipes)
    return f"pruned the warm data of {', '.join(recipes) or 'no recipe'}"


def disk_prune(env: StepEnv, ctx: RunCtx) -> str:
    """R9.2: the gated prune of dangling images, stopped containers and old build cache."""
    from ccci_tasks import diskprune

    in_flight = [lease.run_id for lease in Slots.from_settings(env.settings).occupying()
                 if lease.run_id != ctx.run_id]
    env.fence.check("prune the disk")
    result = diskprune.run(env.settings, in_flight, dry_run=False)
    reports.set_fields(env.settings.state_dir, ctx.run_id, prune=result,
                       disk_used_pct=result.get("disk_used_pct"))
    log.info("sweep %s: disk %s%% used of %s", ctx.run_id, result.get("disk_used_pct"),
             env.settings.prune_path)
    return f"disk {result.get('disk_used_pct')}% used; prune: {result.get('why')}"


def _refreshed(settings: Settings, run_id: RunId) -> reports.RunReport:
    """The sweep's report with every child's verdict read from the child's own report."""
    report = _report(settings, run_id)
    changes = {}
    for field in ("infra", "recipes"):
        entries = []
        for entry in report.extra.get(field, []):
            child = reports.load_report(settings.state_dir, entry["run_id"])
            entry = {**entry, "verdict": child.verdict if child else "error"}
            if field == "infra":
                entry["outcome"] = (child.extra.get("outcome") if child else None) \
                    or entry["verdict"]
            entries.append(entry)
        changes[field] = entries
    return reports.set_fields(settings.state_dir, run_id, **changes)


def finish(env: StepEnv, ctx: RunCtx) -> Outcome:
    report = _refreshed(env.settings, ctx.run_id)
    recipes = report.extra.get("recipes", [])
    red = [r["recipe"] for r in recipes if r.get("verdict") != "pass"]
    verdict: Verdict = "fail" if red else "pass"
    sweeps.record_completed(env.settings.state_dir, ctx.run_id, verdict,
                            broker.client(env.settings))
    green = len(recipes) - len(red)
    detail = (f"{green} of {len(recipes)} recipe(s) green"
              + (f"; red: {', '.join(red)}" if red else "")
              + f"; disk {report.extra.get('disk_used_pct')}% used")
    return Outcome(detail, verdict, detail)


def _sweep_empty_alert(settings: Settings, reason: str) -> None:
    try:
        write_alert(settings.state_dir, "sweep-empty", "sweep",
                    "the nightly sweep found nothing to test", reason)
    except CcciError as exc:
        log.error("could not write the sweep-empty alert: %s", exc)


FUNCTIONS: dict[str, StepFn] = {
    "admit": common.admit, "reconcile_infra": reconcile_infra, "cold_runs": cold_runs,
    "prune_stale": prune_stale, "disk_prune": disk_prune, "finish": finish,
}

def request(scheduled: bool = False) -> dict[str, Any]:
    """Queue the nightly sweep (R8); returns at once. ``scheduled`` (beat) skips it when a
    sweep completed a short while ago; a sweep already in flight is always skipped."""
    return {"scheduled": bool(scheduled)}


ENTRY = Entry(task="nightly_sweep", queue=c.QUEUE_INFRA, request=request, command=Command(
    NAME, "Fire the nightly sweep now (infra, a cold run of every enrolled recipe, prune).",
    timeout_s=6 * 3600.0,
))

LANE = register(Lane(
    name=NAME, queue="infra", prepare=prepare, plan=plan, steps=steps, undo=undo,
    functions=FUNCTIONS, failure=failure, recover=recover, needs_repo=False,
    ready=ready, on_child=on_child, entry=ENTRY,
))
