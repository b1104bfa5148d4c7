"""The quick lane (R6): the canonical, upgraded in place to the PR head, tested, put back.

Steps: admit → verify (the snapshot against its manifest, R6.9; a cut-off change of the
canonical is undone first) → deploy_canonical (warm boot at known-good, after an intent record
says the canonical's data may change) → health_check → realm_create → upgrade (chaos deploy of
the ref, once) → assert_upgrade → overlay_upgrade → overlay_custom → restore (undeploy at once
and put the known-good data back, pass or fail) → realm_delete.

Holds a run slot, the canonical, and each live-warm app it depends on (shared). A quick run
never promotes; with no usable canonical it is queued as a cold run instead (R6.6); with a
corrupt one it is refused, the canonical is quarantined and the operators alerted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ccci_tasks.lanes.canon as canon_mod
import ccci_tasks.lanes.cold as cold
import ccci_tasks.lanes.common as common
import ccci_tasks.lanes.placement as placement
from ccci_tasks import constants as c
from ccci_tasks import naming
from ccci_tasks.admission import Resource, RunSpec
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, InvalidInput, RunFailed, SnapshotError, StateError
from ccci_tasks.lanes.model import (
    Argument,
    Command,
    Entry,
    Failure,
    Lane,
    PullRequests,
    RunCtx,
    StepEnv,
    Submission,
)
from ccci_tasks.lanes.recipes import check_entry, check_request, dep_resources
from ccci_tasks.lanes.registry import register
from ccci_tasks.naming import Domain, RunId
from ccci_tasks.platform.base import DeployedState, Platform
from ccci_tasks.state import warmsnap
from ccci_tasks.state.meta import load_meta

NAME = "quick"
STEPS = (
    "admit", "verify", "deploy_canonical", "health_check", "realm_create", "upgrade",
    "assert_upgrade", "overlay_upgrade", "overlay_custom", "restore", "realm_delete",
)
NOTHING_TO_UNDO = ("admit", "verify")


def _known_good(ctx: RunCtx) -> str:
    return str(ctx.plan["known_good"])


def _warm(ctx: RunCtx) -> Domain:
    assert ctx.domain is not None
    return ctx.domain


# ----------------------------------------------------------------------------- prepare/plan


def prepare(settings: Settings, run_id: RunId, request: Mapping[str, Any]) -> Submission:
    recipe, ref = request.get("recipe"), request.get("ref")
    if ref is None:
        raise InvalidInput("a quick run needs a ref (the PR head) to upgrade to")
    checked = check_request(settings, recipe, ref)
    resources = (Resource.slot(), Resource.canon(checked.recipe),
                 *dep_resources(settings, checked.meta.deps))
    warm = naming.warm_domain(checked.recipe, settings.base_domain)
    home = placement.canonical_home(settings, checked.recipe)
    if home is not None and home != settings.node:
        # another live node holds it usable (its beat checked it as ``usable`` does here);
        # that node checks it again when it plans the run
        return Submission(NAME, checked.recipe, checked.ref, resources, warm, pin=home)
    found = canon_mod.usable(settings, checked.recipe)
    if found.corrupt:
        canon_mod.quarantine(settings, checked.recipe, found.why)
        raise StateError(found.why)
    where = placement.here(settings) if found.registry is not None else None
    if found.registry is None or where is False:
        why = found.why if found.registry is None else (
            f"the canonical of {checked.recipe} is on node {settings.node}, whose runs worker "
            "does not beat (lost or not started)")
        fallback = cold.prepare(settings, run_id, request)
        return Submission(fallback.lane, fallback.recipe, fallback.ref, fallback.resources,
                          fallback.domain, f"{why}: fell back to a full cold run",
                          fallback.pin)
    return Submission(NAME, checked.recipe, checked.ref, resources, warm,
                      pin=where if isinstance(where, str) else None)


def plan(settings: Settings, spec: RunSpec) -> RunCtx:
    found = canon_mod.usable(settings, spec.recipe)
    if found.registry is None:
        raise AppNotFound(f"quick run cannot start: {found.why}")
    meta = load_meta(settings.tests_dir, spec.recipe)
    return RunCtx(
        run_id=spec.run_id, lane=NAME, recipe=spec.recipe, ref=spec.ref,
        domain=naming.warm_domain(spec.recipe, settings.base_domain), token=spec.token,
        deps=meta.deps, plan={"known_good": found.registry.version}, parent=spec.parent,
    )


def steps(ctx: RunCtx) -> tuple[str, ...]:
    return STEPS


def undo(ctx: RunCtx, failure: Failure) -> tuple[str, ...]:
    if failure.step in NOTHING_TO_UNDO:
        return ()
    return ("restore", "realm_delete")


def failure(ctx: RunCtx, step: str, exc: BaseException) -> Failure:
    if step == "verify" and isinstance(exc, StateError | InvalidInput):
        return Failure(step, "error", f"refused: {exc}")
    if isinstance(exc, RunFailed):
        return Failure(step, "fail", f"{step}: {exc}")
    return Failure(step, "error", f"{step}: {exc}")


def recover(settings: Settings, platform: Platform, spec: RunSpec) -> list[str]:
    """After a dead quick run: its canonical back to known-good, its realm gone."""
    done = []
    put_back = canon_mod.recover(settings, platform, spec.recipe, lambda doing: None)
    if put_back:
        done.append(put_back)
    warm = naming.warm_domain(spec.recipe, settings.base_domain)
    if platform.deployed(warm).is_deployed:  # deployed without an intent record: undeploy
        platform.undeploy(warm, graceful=False)
        done.append(f"undeployed {warm}")
    done += cold.delete_realm_of(settings, spec)
    return done


# ----------------------------------------------------------------------------- steps


def verify(env: StepEnv, ctx: RunCtx) -> str:
    """R6.9: re-hash the snapshot against its manifest before anything is deployed; a
    corrupt canonical refuses the run. Then finish or undo a cut-off change first."""
    settings = env.settings
    found = canon_mod.usable(settings, ctx.recipe)
    if found.registry is None:
        if found.corrupt:
            canon_mod.quarantine(settings, ctx.recipe, found.why)
        raise StateError(found.why)
    try:
        manifest = warmsnap.verify(settings.state_dir, ctx.recipe)
    except SnapshotError as exc:
        canon_mod.quarantine(settings, ctx.recipe, str(exc))
        raise
    detail = (f"known-good {manifest.version}: {len(manifest.volumes)} volume tar(s) match "
              "their sha256")
    recovered = canon_mod.recover(settings, env.platform, ctx.recipe, env.fence.check,
                                  env.fence.owner)
    if recovered:
        detail += f"; first {recovered}"
    return detail


def deploy_canonical(env: StepEnv, ctx: RunCtx) -> str:
    """Warm boot (R6.1): reattach the canonical's kept volume at its known-good version."""
    canon_mod.mark_dirty(env.settings, ctx.recipe, env.fence.owner, env.fence.check)
    env.platform.deploy(_warm(ctx), version=_known_good(ctx))
    state = env.platform.wait_converged(_warm(ctx), env.meta.deploy_timeout)
    return f"{_warm(ctx)} up at known-good {state.version}"


def health_check(env: StepEnv, ctx: RunCtx) -> str:
    """The known-good must come up; if it does not, it is not the PR's fault (error)."""
    status = common.serving(env, _warm(ctx))
    return f"GET {env.meta.health_path} on {_warm(ctx)} answered {status}"


def upgrade(env: StepEnv, ctx: RunCtx) -> str:
    """Upgrade in place to the PR head (R6.3): one chaos deploy of the ref."""
    assert ctx.ref is not None
    env.platform.deploy(_warm(ctx), chaos_ref=ctx.ref)
    return f"chaos deploy of {ctx.ref} submitted"


def assert_upgrade(env: StepEnv, ctx: RunCtx) -> str:
    """Generic UPGRADE (R6.4): reconverged + version moved + serving."""
    before = DeployedState(domain=_warm(ctx), stack="", version=_known_good(ctx))
    return common.assert_upgraded(env, _warm(ctx), before, ctx.ref, None, ctx)


def restore(env: StepEnv, ctx: RunCtx) -> str:
    """Stop the canonical at once (its data is replaced next) and put the known-good data
    back, pass or fail; the volumes are kept."""
    done = canon_mod.recover(env.settings, env.platform, ctx.recipe, env.fence.check,
                             env.fence.owner)
    if env.platform.deployed(_warm(ctx)).is_deployed:
        env.platform.undeploy(_warm(ctx), graceful=False)
        done = (done + "; " if done else "") + f"undeployed {_warm(ctx)}"
    return done or f"{_warm(ctx)} was not touched: nothing to put back"


FUNCTIONS = {
    "admit": common.admit, "verify": verify, "deploy_canonical": deploy_canonical,
    "health_check": health_check, "realm_create": common.realm_create, "upgrade": upgrade,
    "assert_upgrade": assert_upgrade, "overlay_upgrade": common.overlay_upgrade,
    "overlay_custom": common.overlay_custom, "restore": restore,
    "realm_delete": common.realm_delete,
}

def summary(ctx: RunCtx, detail: str) -> str:
    return (f"passed: {ctx.ref} upgraded {_warm(ctx)} in place from known-good "
            f"{_known_good(ctx)}; the known-good data is back")


def request(recipe: str, ref: str) -> dict[str, Any]:
    """Queue a quick run of ``recipe`` upgraded in place to ``ref``; returns at once."""
    return {"recipe": recipe, "ref": ref}


ENTRY = Entry(task="quick_run", queue=c.QUEUE_ALERTS, request=request, command=Command(
    NAME, "Enqueue a quick run: RECIPE's canonical upgraded in place to REF.",
    (Argument("recipe"), Argument("ref")), timeout_s=3600.0, check=check_entry,
))

LANE = register(Lane(
    name=NAME, queue="runs", prepare=prepare, plan=plan, steps=steps, undo=undo,
    functions=FUNCTIONS, failure=failure, recover=recover, summary=summary, entry=ENTRY,
    pull_requests=PullRequests("!testme --quick", f"ccci/{NAME}", falls_back_to=cold.NAME),
    orphans={"canon": canon_mod.put_back},
))
