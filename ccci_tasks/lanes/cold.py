"""The cold lane (R7): a fresh app on fresh volumes, the full lifecycle, a sacred teardown,
and, for a green run on latest of an enrolled recipe, the promotion of the canonical.

Steps: admit → new_app → install → health_check → realm_create → overlay_install →
upgrade_tier (from the canonical's version, on fresh volumes) → overlay_custom → teardown
(services, volumes, secrets: always, pass or fail) → realm_delete, then when promoting:
promote_deploy → promote_health → promote_undeploy → promote_snapshot (the new snapshot is
swapped in, then the registry: the old known-good is replaced only after green, R7.2).

Holds a run slot, each live-warm app it depends on (shared) and, when it promotes, the
canonical (so it never overlaps a quick run of the recipe, R6.8). A failed promotion puts the
old known-good back; the run stays green (the recipe was) and the reason says so. A promotion
whose graceful stop had to kill a container (R12.3: its data would be as after a crash) is
refused: the run ends ``fail``, an alert ``promotion-refused`` names the service and its stop
grace period, and the old known-good is put back the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import ccci_tasks.lanes.canon as canon
import ccci_tasks.lanes.common as common
import ccci_tasks.lanes.placement as placement
import ccci_tasks.lanes.plan as pure
from ccci_tasks import broker, naming, nodes, snapshots
from ccci_tasks import constants as c
from ccci_tasks.admission import Resource, RunSpec
from ccci_tasks.config import Settings
from ccci_tasks.errors import KeycloakError, RegistryError, RunFailed, UncleanStop
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
    run_hex,
)
from ccci_tasks.lanes.recipes import check_entry, check_request, dep_resources, recipe_repo
from ccci_tasks.lanes.registry import register
from ccci_tasks.naming import Domain, RunId
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform.base import Platform
from ccci_tasks.state import canonical, intents, warmsnap
from ccci_tasks.state.meta import load_meta

NAME = "cold"
STEPS = (
    "admit", "new_app", "install", "health_check", "realm_create", "overlay_install",
    "upgrade_tier", "overlay_custom", "teardown", "realm_delete",
)
PROMOTE_STEPS = ("promote_deploy", "promote_health", "promote_undeploy", "promote_snapshot")


def _domain(ctx: RunCtx) -> Domain:
    assert ctx.domain is not None
    return ctx.domain


def _promote(ctx: RunCtx) -> bool:
    return bool(ctx.plan.get("promote"))


def _warm(ctx: RunCtx) -> Domain:
    return Domain(ctx.plan["warm_domain"])  # the plan travels as JSON


# ----------------------------------------------------------------------------- prepare/plan


def prepare(settings: Settings, run_id: RunId, request: Mapping[str, Any]) -> Submission:
    checked = check_request(settings, request.get("recipe"), request.get("ref"))
    promote = pure.should_promote(checked.ref, checked.meta.warm_canonical)
    resources: tuple[Resource, ...] = (Resource.slot(),)
    if promote:
        resources += (Resource.canon(checked.recipe),)
    resources += dep_resources(settings, checked.meta.deps)
    domain = naming.cold_domain(checked.recipe, run_hex(run_id), settings.base_domain)
    # any node, the one with the most free slots (R15); where it promotes is decided when
    # it is planned on the node that admitted it
    return Submission(NAME, checked.recipe, checked.ref, resources, domain)


def plan(settings: Settings, spec: RunSpec) -> RunCtx:
    repo = recipe_repo(settings, spec.recipe)
    meta = load_meta(settings.tests_dir, spec.recipe)
    target = repo.latest()
    unusable: str | None
    try:
        registry = canonical.read_registry(settings.state_dir, spec.recipe)
        unusable = canonical.quarantined(settings.state_dir, spec.recipe)
    except RegistryError as exc:
        registry, unusable = None, str(exc)
    base: str | None
    skip: str | None
    if unusable is not None:
        base, skip = None, f"canonical unusable ({unusable}): nothing known-good to upgrade from"
    else:
        base, skip = pure.upgrade_base(registry.version if registry else None, repo.versions(),
                                       target, spec.ref)
    elsewhere = _canonical_elsewhere(settings, spec) if spec.canonical is not None else None
    return RunCtx(
        run_id=spec.run_id, lane=NAME, recipe=spec.recipe, ref=spec.ref,
        domain=naming.cold_domain(spec.recipe, run_hex(spec.run_id), settings.base_domain),
        token=spec.token, deps=meta.deps, parent=spec.parent,
        plan={
            "target_version": target, "base_version": base, "upgrade_skip": skip,
            "promote": spec.canonical is not None and elsewhere is None,
            "promote_skip": elsewhere,
            "warm_domain": naming.warm_domain(spec.recipe, settings.base_domain),
        },
    )


def _canonical_elsewhere(settings: Settings, spec: RunSpec) -> str | None:
    """Why a green run admitted here does not promote: the recipe's canonical lives on
    another live node (R15: a promotion re-seeds where the green run ran unless the canonical
    already lives elsewhere; it is replaced by a green run there). None: promote here."""
    homes = placement.canonical_homes(settings, spec.recipe)
    if not homes or settings.node in homes:
        return None
    return (f"the canonical of {spec.recipe} lives on node {homes[0]}; a green run there "
            "replaces it")


def steps(ctx: RunCtx) -> tuple[str, ...]:
    return STEPS + (PROMOTE_STEPS if _promote(ctx) else ())


def undo(ctx: RunCtx, failure: Failure) -> tuple[str, ...]:
    if failure.step in PROMOTE_STEPS:
        return ("restore",)
    if failure.step == "realm_delete":
        return ()
    return ("teardown", "realm_delete")


def failure(ctx: RunCtx, step: str, exc: BaseException) -> Failure:
    if isinstance(exc, UncleanStop):  # R12.3: its data is not fit to be the known-good
        return Failure(step, "fail" if exc.killed else "error",
                       f"promotion refused: {exc}; known-good unchanged")
    if step in PROMOTE_STEPS:
        return Failure(step, "pass", f"green, but promotion failed at {step}: {exc}; "
                                     "known-good unchanged")
    if isinstance(exc, RunFailed):
        return Failure(step, "fail", f"{step}: {exc}")
    return Failure(step, "error", f"{step}: {exc}")


def delete_realm_of(settings: Settings, spec: RunSpec) -> list[str]:
    """Delete the per-run realm of a dead run, if its recipe depends on keycloak."""
    if "keycloak" not in load_meta(settings.tests_dir, spec.recipe).deps:
        return []
    from ccci_tasks import realms

    realm = naming.realm_name(spec.recipe, run_hex(spec.run_id))
    try:
        realms.delete_realm(settings, realm)
    except KeycloakError as exc:
        return [f"realm {realm} left for the realm reaper ({exc})"]
    return [f"deleted realm {realm}"]


def recover(settings: Settings, platform: Platform, spec: RunSpec) -> list[str]:
    """After a dead cold run: its app removed, a half-made promotion undone, its realm gone."""
    domain = naming.cold_domain(spec.recipe, run_hex(spec.run_id), settings.base_domain)
    platform.remove(domain)
    done = [f"removed {domain} with its volumes and secrets"]
    if spec.canonical is not None:
        put_back = canon.recover(settings, platform, spec.recipe, lambda doing: None)
        if put_back:
            done.append(put_back)
    return done + delete_realm_of(settings, spec)


# ----------------------------------------------------------------------------- steps


def new_app(env: StepEnv, ctx: RunCtx) -> str:
    env.platform.new_app(ctx.recipe, _domain(ctx), ctx.plan.get("target_version"),
                         kind="cold", run=ctx.run_hex)
    return f"new app {_domain(ctx)}"


def _deploy_target(env: StepEnv, ctx: RunCtx) -> None:
    if ctx.ref is not None:
        env.platform.deploy(_domain(ctx), chaos_ref=ctx.ref)
    else:
        env.platform.deploy(_domain(ctx), version=ctx.plan.get("target_version"))


def install(env: StepEnv, ctx: RunCtx) -> str:
    """Fresh install of the target (latest tag, or the ref as it is) on fresh volumes."""
    _deploy_target(env, ctx)
    state = common.converge(env, _domain(ctx), "install")
    common.assert_reconverged(state, "install")
    common.remember_converged(env, ctx, state)
    return f"installed {ctx.ref or ctx.plan.get('target_version')}"


def health_check(env: StepEnv, ctx: RunCtx) -> str:
    status = common.assert_serving(env, _domain(ctx), "install health check")
    return f"GET {env.meta.health_path} on {_domain(ctx)} answered {status}"


def upgrade_tier(env: StepEnv, ctx: RunCtx) -> str:
    """From the canonical's version to the target, on fresh volumes of the same app."""
    base = ctx.plan.get("base_version")
    if base is None:
        return f"skipped: {ctx.plan.get('upgrade_skip')}"
    env.platform.remove(_domain(ctx))
    env.platform.new_app(ctx.recipe, _domain(ctx), base, kind="cold", run=ctx.run_hex)
    env.platform.deploy(_domain(ctx), version=base)
    before = common.converge(env, _domain(ctx), f"upgrade base {base}")
    common.assert_serving(env, _domain(ctx), f"upgrade base {base}")
    _deploy_target(env, ctx)
    target = None if ctx.ref else ctx.plan.get("target_version")
    detail = common.assert_upgraded(env, _domain(ctx), before, ctx.ref, target, ctx)
    overlay = common.run_overlay(env, ctx, "upgrade")
    return f"{base} -> {ctx.ref or ctx.plan.get('target_version')}: {detail}; {overlay}"


def teardown(env: StepEnv, ctx: RunCtx) -> str:
    """Sacred (R7.1): the per-run app's services, volumes, secrets and env file go."""
    env.platform.remove(_domain(ctx))
    return f"removed {_domain(ctx)} with its volumes and secrets"


def promote_deploy(env: StepEnv, ctx: RunCtx) -> str:
    """Deploy the canonical at the green version: an upgrade of its kept volume, or fresh
    when there is no usable known-good to start from."""
    target = str(ctx.plan["target_version"])
    warm, settings = _warm(ctx), env.settings
    first = canon.recover(settings, env.platform, ctx.recipe, env.fence.check, env.fence.owner)
    fresh = canon.usable(settings, ctx.recipe).registry is None
    assert env.repo is not None
    current = warmsnap.read_current(settings.state_dir, ctx.recipe) if not fresh else None
    # "replaces": the snapshot this promotion replaces, so a cut-off one is finished only
    # when a new snapshot is current (the old one may well be of the same version).
    canon.mark_dirty(settings, ctx.recipe, env.fence.owner, env.fence.check, kind="promote",
                     version=target, commit=env.repo.commit(target),
                     replaces=current.taken_at if current else "")
    if fresh:
        env.platform.remove(warm)  # never build a known-good on data nobody vouches for
    env.platform.new_app(ctx.recipe, warm, target, kind="warm", run=None)
    env.platform.deploy(warm, version=target)
    state = env.platform.wait_converged(warm, env.meta.deploy_timeout)
    how = "fresh volumes" if fresh else "its kept volumes"
    return (f"{first}; " if first else "") + f"{warm} up at {state.version} on {how}"


def promote_health(env: StepEnv, ctx: RunCtx) -> str:
    return f"{_warm(ctx)} answered {common.serving(env, _warm(ctx))}"


def promote_undeploy(env: StepEnv, ctx: RunCtx) -> str:
    """Stop the canonical gracefully: its data become the known-good only if every container
    exited by itself (R12.3); one that had to be killed refuses the promotion (an alert
    says so) and the undo puts the old known-good back."""
    warm = _warm(ctx)
    report = env.platform.undeploy(warm)
    try:
        report.require_clean(warm, "take the known-good snapshot")
    except UncleanStop as exc:
        write_alert(env.settings.state_dir, "promotion-refused", ctx.recipe,
                    f"promotion of {ctx.recipe} to {ctx.plan.get('target_version')} refused: "
                    "a container had to be killed on its stop", str(exc))
        raise
    return f"{warm} undeployed; every container exited by itself"


def promote_snapshot(env: StepEnv, ctx: RunCtx) -> str:
    """Snapshot (swapped in atomically), then the registry: the new known-good."""
    target = str(ctx.plan["target_version"])
    settings, warm = env.settings, _warm(ctx)
    manifest = snapshots.snapshot(env.platform, settings.state_dir, ctx.recipe, warm, target,
                                  guard=env.fence.check)
    assert env.repo is not None
    env.fence.check(f"write the registry of {ctx.recipe} at {target}")
    canonical.write_registry(settings.state_dir, canonical.Canonical(
        recipe=ctx.recipe, domain=warm, version=target, commit=env.repo.commit(target),
        status="known-good", ts=datetime.now(UTC).isoformat(timespec="seconds"),
    ))
    canonical.clear_quarantine(settings.state_dir, ctx.recipe)
    intents.clear_intent(settings.state_dir, Resource.canon(ctx.recipe).key,
                         owner=env.fence.owner)
    # the other hosts place its quick runs here from now, not from this node's next beat
    nodes.publish_canonical(broker.client(settings), settings.node, ctx.recipe)
    return f"canonical {ctx.recipe} is now {target} ({len(manifest.volumes)} volumes); promoted"


def restore(env: StepEnv, ctx: RunCtx) -> str:
    """Undo a failed promotion: the old known-good back (or the half-made canonical gone)."""
    done = canon.recover(env.settings, env.platform, ctx.recipe, env.fence.check,
                         env.fence.owner)
    return done or "the canonical was not touched"


FUNCTIONS = {
    "admit": common.admit, "new_app": new_app, "install": install,
    "health_check": health_check, "realm_create": common.realm_create,
    "overlay_install": common.overlay_install, "upgrade_tier": upgrade_tier,
    "overlay_custom": common.overlay_custom, "teardown": teardown,
    "realm_delete": common.realm_delete, "promote_deploy": promote_deploy,
    "promote_health": promote_health, "promote_undeploy": promote_undeploy,
    "promote_snapshot": promote_snapshot, "restore": restore,
}

def summary(ctx: RunCtx, detail: str) -> str:
    target = ctx.ref or ctx.plan.get("target_version")
    if _promote(ctx):
        return f"green at {target}; promoted: {detail}"
    if ctx.plan.get("promote_skip"):
        return f"green at {target}; not promoted: {ctx.plan['promote_skip']}"
    return f"green at {target}"


def request(recipe: str, ref: str | None = None) -> dict[str, Any]:
    """Queue a full cold run of ``recipe`` at ``ref`` (None: latest); returns at once."""
    return {"recipe": recipe, "ref": ref}


ENTRY = Entry(task="cold_run", queue=c.QUEUE_ALERTS, request=request, command=Command(
    NAME, "Enqueue a full cold run of RECIPE (latest unless --ref).",
    (Argument("recipe"),
     Argument("ref", option="--ref", help="Git ref or version tag (default: latest).")),
    timeout_s=3600.0, check=check_entry,
))

LANE = register(Lane(
    name=NAME, queue="runs", prepare=prepare, plan=plan, steps=steps, undo=undo,
    functions=FUNCTIONS, failure=failure, recover=recover, summary=summary, entry=ENTRY,
    pull_requests=PullRequests("!testme", f"ccci/{NAME}"),
    orphans={"canon": canon.put_back},
))
