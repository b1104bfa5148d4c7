"""Submitting, admitting, launching and ending runs.

``submit`` validates a request and queues it as a ``RunSpec`` in the run-slot FIFO;
``dispatch`` admits what fits (MAX_TESTS, one run per canonical) and launches each admitted
run as a Celery chain of step tasks; ``end_run`` is the sacred part every run goes through,
pass or fail: clean up, drop the realm, release the slot, write the verdict, admit the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ccci_tasks import naming
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, CcciError, InvalidInput, RunFailed
from ccci_tasks.lanes import plan
from ccci_tasks.lanes.plan import RunCtx
from ccci_tasks.platform import get_platform
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.slots import RunSpec, Slots
from ccci_tasks.state import canonical, reports, warmsnap
from ccci_tasks.state.meta import load_meta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    run_id: str
    lane: str
    verdict: str | None  # "error" when refused at the door
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "lane": self.lane, "verdict": self.verdict,
                "reason": self.reason}


def recipe_repo(settings: Settings, recipe: str) -> RecipeRepo:
    """The recipe's repository, or ``InvalidInput`` naming the recipe when there is none."""
    naming.validate_recipe(recipe)
    path = settings.recipes_dir / recipe
    if not (path / ".git").exists():
        raise InvalidInput(
            f"unknown recipe {recipe!r}: no git repository at {path}; "
            "check the name or add the recipe to CCCI_RECIPES_DIR"
        )
    return RecipeRepo(path, recipe)


def usable_canonical(settings: Settings, recipe: str) -> tuple[canonical.Canonical | None, str]:
    """The recipe's known-good canonical if a quick run can use it, else why not."""
    registry = canonical.read_registry(settings.state_dir, recipe)
    if registry is None:
        return None, f"no canonical for {recipe}"
    if registry.status != "known-good":
        return None, f"canonical of {recipe} is {registry.status}, not known-good"
    manifest = warmsnap.read_current(settings.state_dir, recipe)
    if manifest is None:
        return None, f"canonical of {recipe} has no snapshot"
    if manifest.version != registry.version:
        return None, (
            f"canonical of {recipe} is inconsistent: registry {registry.version}, "
            f"snapshot {manifest.version}"
        )
    return registry, ""


def submit(settings: Settings, run_id: str, lane: plan.Lane, recipe: Any, ref: Any) -> Submitted:
    """Validate and queue a run. Bad input ends the run at once with verdict ``error``."""
    state = settings.state_dir
    reports.create_report(state, run_id, lane, recipe if isinstance(recipe, str) else None,
                          ref if isinstance(ref, str) else None)
    try:
        spec, note = _spec_for(settings, run_id, lane, recipe, ref)
    except (InvalidInput, AppNotFound) as exc:
        reports.finish_report(state, run_id, "error", f"refused: {exc}")
        return Submitted(run_id, lane, "error", f"refused: {exc}")
    domain = (naming.warm_domain(spec.recipe, settings.base_domain) if spec.lane == "quick"
              else naming.cold_domain(spec.recipe, plan.run_hex(run_id), settings.base_domain))
    reports.update_report(state, run_id, lane=spec.lane, domain=domain,
                          reason=note or None)
    slots = Slots.from_settings(settings)
    slots.enqueue(spec)
    dispatch(settings)
    return Submitted(run_id, spec.lane, None, note or None)


def _spec_for(
    settings: Settings, run_id: str, lane: plan.Lane, recipe: Any, ref: Any
) -> tuple[RunSpec, str]:
    if not isinstance(recipe, str):
        raise InvalidInput(f"recipe {recipe!r} is not a string")
    if ref is not None and not isinstance(ref, str):
        raise InvalidInput(f"ref {ref!r} is not a string")
    naming.validate_recipe(recipe)
    if ref is not None:
        naming.validate_ref(ref)
    repo = recipe_repo(settings, recipe)
    if ref is not None:
        repo.commit(ref)  # the ref must exist in the recipe's repository
    elif repo.latest() is None:
        raise InvalidInput(f"recipe {recipe!r} has no version tags: nothing to test as latest")
    meta = load_meta(settings.tests_dir, recipe)
    note = ""
    if lane == "quick":
        if ref is None:
            raise InvalidInput("a quick run needs a ref (the PR head) to upgrade to")
        registry, why = usable_canonical(settings, recipe)
        if registry is None:
            note = f"{why}: fell back to a full cold run"
            lane = "cold"
        else:
            return RunSpec(run_id=run_id, lane="quick", recipe=recipe, ref=ref,
                           canonical=recipe), note
    promote = plan.should_promote(lane, ref, meta.warm_canonical)
    return RunSpec(run_id=run_id, lane="cold", recipe=recipe, ref=ref,
                   canonical=recipe if promote else None), note


def plan_run(settings: Settings, spec: RunSpec) -> RunCtx:
    """Turn an admitted spec into the run's plan, from what is observed now."""
    repo = recipe_repo(settings, spec.recipe)
    meta = load_meta(settings.tests_dir, spec.recipe)
    hexid = plan.run_hex(spec.run_id)
    warm = naming.warm_domain(spec.recipe, settings.base_domain)
    target = repo.latest()
    if spec.lane == "quick":
        registry, why = usable_canonical(settings, spec.recipe)
        if registry is None:
            raise AppNotFound(f"quick run cannot start: {why}")
        return RunCtx(run_id=spec.run_id, lane="quick", recipe=spec.recipe, ref=spec.ref,
                      domain=warm, run_hex=hexid, target_version=target,
                      known_good=registry.version, warm_domain=warm, deps=meta.deps)
    registry = canonical.read_registry(settings.state_dir, spec.recipe)
    base, skip = plan.upgrade_base(registry.version if registry else None, repo.versions(),
                                   target, spec.ref)
    return RunCtx(
        run_id=spec.run_id, lane="cold", recipe=spec.recipe, ref=spec.ref,
        domain=naming.cold_domain(spec.recipe, hexid, settings.base_domain), run_hex=hexid,
        target_version=target, base_version=base, upgrade_skip=skip,
        promote=spec.canonical is not None, warm_domain=warm, deps=meta.deps,
    )


def dispatch(settings: Settings) -> list[str]:
    """Admit every pending run that fits now and launch it. Never waits for a slot."""
    from ccci_tasks.tasks.lanes import launch_chain

    slots = Slots.from_settings(settings)
    launched = []
    for spec in slots.admit():
        try:
            ctx = plan_run(settings, spec)
        except CcciError as exc:
            log.warning("run %s could not be planned: %s", spec.run_id, exc)
            reports.finish_report(settings.state_dir, spec.run_id, "error", f"planning: {exc}")
            slots.release(spec.run_id)
            slots.forget(spec.run_id)
            continue
        launch_chain(ctx)
        launched.append(spec.run_id)
    return launched


# ----------------------------------------------------------------------------- ending


def cleanup(settings: Settings, ctx: RunCtx, failed_step: str | None) -> list[str]:
    """Undo what a failed run left. Every part is attempted; problems are returned."""
    platform = get_platform(settings, run_id=ctx.run_id)
    problems: list[str] = []

    def attempt(what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            problems.append(f"{what}: {exc}")

    if ctx.lane == "quick":
        attempt("undeploy canonical", platform.undeploy, ctx.domain)
        attempt("restore known-good snapshot", warmsnap.restore, platform,
                settings.state_dir, ctx.recipe, ctx.domain)
    else:
        if failed_step not in plan.PROMOTE_STEPS:
            attempt("teardown", platform.remove, ctx.domain)
        if ctx.promote and ctx.warm_domain and failed_step in plan.PROMOTE_STEPS:
            attempt("undeploy canonical", platform.undeploy, ctx.warm_domain)
            if warmsnap.read_current(settings.state_dir, ctx.recipe) is not None:
                attempt("restore old known-good", warmsnap.restore, platform,
                        settings.state_dir, ctx.recipe, ctx.warm_domain)
    if ctx.realm is not None:
        from ccci_tasks import realms

        attempt(f"delete realm {ctx.realm}", realms.delete_realm, settings, ctx.realm)
    return problems


def end_run(settings: Settings, ctx: RunCtx, verdict: str, reason: str | None) -> None:
    """Release the slot, write the verdict and admit the next run. Idempotent."""
    slots = Slots.from_settings(settings)
    report = reports.load_report(settings.state_dir, ctx.run_id)
    if report is not None and report.reason and not report.finished:
        # A note set at submission (e.g. "fell back to a full cold run") stays in front.
        reason = f"{report.reason}; {reason}" if reason else report.reason
    reports.finish_report(settings.state_dir, ctx.run_id, verdict, reason)
    slots.release(ctx.run_id)
    slots.forget(ctx.run_id)
    dispatch(settings)


def fail_run(settings: Settings, ctx: RunCtx, failed_step: str | None, exc: BaseException) -> None:
    """The error path of every lane: the sacred cleanup, then ``end_run``."""
    report = reports.load_report(settings.state_dir, ctx.run_id)
    if report is not None and report.finished:
        return  # already ended (an errback delivered twice, or the janitor got here first)
    with Slots.from_settings(settings).keep_alive(ctx.run_id):  # cleanup may take a while
        problems = cleanup(settings, ctx, failed_step)
    if failed_step in plan.PROMOTE_STEPS:
        verdict = "pass"
        reason = f"green, but promotion failed at {failed_step}: {exc}; known-good unchanged"
    else:
        verdict = "fail" if isinstance(exc, RunFailed) else "error"
        reason = f"{failed_step}: {exc}" if failed_step else str(exc)
    if problems:
        reason += "; cleanup problems: " + "; ".join(problems)
        from ccci_tasks.state.alerts import write_alert

        try:
            write_alert(settings.state_dir, "restore-failed", ctx.recipe,
                        f"cleanup after run {ctx.run_id} was incomplete", "\n".join(problems))
        except CcciError as alert_exc:
            log.error("could not write alert: %s", alert_exc)
    end_run(settings, ctx, verdict, reason)
