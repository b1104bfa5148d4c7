"""The reconcile lane (R2): a live-warm app (keycloak, traefik) moved to its newest tag behind
a safety gate and a health gate, with a rollback that brings its data back too.

Planned as data at admission (``ccci_tasks.infraplan.plan_reconcile`` over what runs now, the
recorded ``<state>/infra/<app>.json``, the tags and the release notes), then acted:

* ``held`` (major bump, or release notes that flag a manual migration): nothing is touched;
  status ``held`` and an ``upgrade-held`` alert carrying the flagged lines;
* ``up-to-date``: nothing is touched;
* ``deploy`` (nothing runs): deploy, health, record (outcome ``deployed``);
* ``verify`` (the newest runs but was never recorded healthy): health, record;
* ``upgrade``: an intent record says what is attempted (from, to), last_good := from; a
  stateful app is undeployed and its volumes snapshotted (under ``<state>/infra/<app>/``);
  deploy, health, record (outcome ``applied``). A failed deploy or health check rolls back:
  undeploy, restore the snapshot (stateful), redeploy last_good, health; status
  ``rolled-back`` and a ``rolled-back`` alert ``{attempted, last_good, recovered}`` (verdict
  ``fail``). A rollback that fails too writes ``restore-failed`` (verdict ``error``).

Holds the app exclusively (``infra:<app>:excl``): runs whose recipe depends on it and its
reconcile never overlap. No run slot: live-warm apps do not count against MAX_TESTS. A
reconcile cut off by a dead worker is rolled back by the janitor through the intent record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import ccci_tasks.lanes.common as common
from ccci_tasks import constants as c
from ccci_tasks import naming, probes, snapshots
from ccci_tasks.admission import Resource, RunSpec
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError, InvalidInput, StateError
from ccci_tasks.infraplan import InfraPlan, plan_reconcile
from ccci_tasks.lanes.model import (
    Argument,
    Command,
    Entry,
    Failure,
    Lane,
    Outcome,
    RunCtx,
    StepEnv,
    StepFn,
    Submission,
)
from ccci_tasks.lanes.recipes import recipe_repo
from ccci_tasks.lanes.registry import register
from ccci_tasks.naming import Domain, Recipe, RunId
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform.base import Platform
from ccci_tasks.state import intents, reports
from ccci_tasks.state.infra import (
    InfraState,
    InfraStatus,
    infra_dir,
    read_infra,
    write_infra,
)
from ccci_tasks.state.meta import RecipeMeta, load_meta

log = logging.getLogger(__name__)

NAME = "reconcile"
OUTCOME_OF = {"deploy": "deployed", "upgrade": "applied", "verify": "up-to-date"}
NOTHING_TO_UNDO = ("admit", "hold", "confirm")

Guard = Callable[[str], None]


def resource(app: Recipe) -> Resource:
    """What a reconcile holds: its app, alone. Its ``key`` names the app's intent record."""
    return Resource.infra(app, exclusive=True)


def _plan(ctx: RunCtx) -> dict[str, Any]:
    return dict(ctx.plan)


def _domain(ctx: RunCtx) -> Domain:
    assert ctx.domain is not None
    return ctx.domain


# ----------------------------------------------------------------------------- prepare/plan


def prepare(settings: Settings, run_id: RunId, request: Mapping[str, Any]) -> Submission:
    text = request.get("recipe")
    if not isinstance(text, str):
        raise InvalidInput(f"app {text!r} is not a string")
    app = Recipe(text)
    if app not in settings.infra_app_list():
        known = ", ".join(settings.infra_app_list()) or "none"
        raise InvalidInput(f"unknown app {app!r}: it is not in CCCI_INFRA_APPS ({known})")
    repo = recipe_repo(settings, app)
    if not repo.versions():
        raise InvalidInput(f"app {app!r} has no version tags: nothing to reconcile to")
    load_meta(settings.tests_dir, app)
    domain = naming.warm_domain(app, settings.base_domain)
    return Submission(NAME, app, None, (resource(app),), domain)


def observe_plan(settings: Settings, platform: Platform, app: Recipe) -> InfraPlan:
    """The reconcile's decision from what runs now, what was recorded, tags and notes."""
    domain = naming.warm_domain(app, settings.base_domain)
    repo = recipe_repo(settings, app)
    meta = load_meta(settings.tests_dir, app)
    deployed = platform.deployed(domain)
    return plan_reconcile(app, deployed.version,
                          read_infra(settings.state_dir, app), repo.versions(),
                          repo.release_notes, stateful=meta.stateful,
                          patterns=settings.migration_patterns,
                          configured=not deployed.is_deployed or platform.has_config(domain))


def plan(settings: Settings, spec: RunSpec) -> RunCtx:
    from ccci_tasks.platform import get_platform

    decided = observe_plan(settings, get_platform(settings), spec.recipe)
    return RunCtx(
        run_id=spec.run_id, lane=NAME, recipe=spec.recipe, ref=None,
        domain=naming.warm_domain(spec.recipe, settings.base_domain), token=spec.token,
        plan=decided.to_json(), parent=spec.parent,
    )


def steps(ctx: RunCtx) -> tuple[str, ...]:
    p = _plan(ctx)
    outcome = p["outcome"]
    if outcome == "held":
        return ("admit", "hold")
    if outcome == "up-to-date":
        return ("admit", "confirm")
    if outcome == "verify":
        return ("admit", "health", "record")
    if outcome == "deploy":
        return ("admit", "deploy", "health", "record")
    before = ("undeploy", "snapshot") if p.get("snapshot_first") else ()
    return ("admit", "mark", *before, "deploy", "health", "record")


def undo(ctx: RunCtx, failure: Failure) -> tuple[str, ...]:
    if failure.step in NOTHING_TO_UNDO:
        return ()
    if _plan(ctx).get("rollback_to") is None:
        return ("give_up",)
    return ("rollback", "rollback_record")


def failure(ctx: RunCtx, step: str, exc: BaseException) -> Failure:
    if step in NOTHING_TO_UNDO:
        return Failure(step, "error", f"{step}: {exc}")
    target = _plan(ctx).get("target")
    return Failure(step, "fail", f"{target} failed at {step}: {exc}")


# ----------------------------------------------------------------------------- acting


def _health(platform: Platform, meta: RecipeMeta, domain: Domain) -> int:
    platform.wait_converged(domain, meta.deploy_timeout)
    return probes.serving(platform.base_url(domain), host=domain,
                          ok_codes=tuple(meta.health_ok), timeout_s=meta.http_timeout,
                          path=meta.health_path)


def _record(settings: Settings, app: Recipe, domain: Domain, current: str, last_good: str | None,
            status: InfraStatus) -> None:
    write_infra(settings.state_dir, InfraState(app=app, domain=domain, current=current,
                                               last_good=last_good, status=status))


def roll_back(settings: Settings, platform: Platform, app: Recipe, guard: Guard) -> str:
    """Put ``app`` back on the version of its pending intent (its data too, when a snapshot
    of that version was taken): undeploy, restore, redeploy, health. Raises when it fails."""
    intent = intents.read_intent(settings.state_dir, resource(app).key)
    if intent is None:
        raise StateError(f"no intent record of {app}: nothing says what to roll back to")
    last = str(intent.detail["from"])
    domain = intent.domain
    meta = load_meta(settings.tests_dir, app)
    platform.undeploy(domain, graceful=False)  # the broken version's data goes next
    done = [f"undeployed {intent.detail.get('to')}"]
    if intent.detail.get("snapshot"):
        guard(f"restore the pre-upgrade snapshot of {app}")
        manifest = snapshots.restore(platform, settings.state_dir, app, domain,
                                     base=infra_dir(settings.state_dir, app))
        done.append(f"restored the data of {manifest.version}")
    platform.new_app(app, domain, last, kind="infra", run=None)
    platform.deploy(domain, version=last)
    status = _health(platform, meta, domain)
    done.append(f"{last} runs again and answers {status}")
    return "; ".join(done)


def finish_rollback(settings: Settings, app: Recipe, recovered: bool, why: str,
                    owner: intents.Owner | None) -> Outcome:
    """After a rollback (done or failed): state, alerts, the intent, the outcome. ``owner``:
    the run (``None``: the janitor, after the kill)."""
    intent = intents.read_intent(settings.state_dir, resource(app).key)
    assert intent is not None
    attempted, last = str(intent.detail["to"]), str(intent.detail["from"])
    domain = intent.domain
    _record(settings, app, domain, last, last, "rolled-back")
    summary = (f"{app}: {attempted} failed its health gate; rolled back to {last}"
               if recovered else f"{app}: {attempted} failed and the rollback to {last} "
                                 "failed too")
    detail = {"attempted": attempted, "last_good": last, "recovered": recovered}
    try:
        write_alert(settings.state_dir, "rolled-back", app, summary, detail, why)
        if not recovered:
            write_alert(settings.state_dir, "restore-failed", app, summary, why)
    except CcciError as exc:
        log.error("could not write the alerts of %s: %s", app, exc)
    if recovered:
        intents.clear_intent(settings.state_dir, resource(app).key, owner=owner)
    reason = f"rolled back: {attempted} failed; {last} runs again" if recovered else \
        f"rolled back, but the rollback failed: {why}"
    return Outcome(summary, "fail" if recovered else "error", reason)


# ----------------------------------------------------------------------------- steps


def _fields(env: StepEnv, ctx: RunCtx, outcome: str) -> None:
    p = _plan(ctx)
    reports.at(env.settings).set_fields(ctx.run_id, outcome=outcome,
                                        **{"from": p.get("current"), "to": p.get("target")})


def hold(env: StepEnv, ctx: RunCtx) -> str:
    """R2.1: stay on the current version; tell the operators why, with the notes."""
    p = _plan(ctx)
    if p.get("current"):
        recorded = read_infra(env.settings.state_dir, ctx.recipe)
        env.fence.check(f"record {ctx.recipe} as held")
        _record(env.settings, ctx.recipe, _domain(ctx), p["current"],
                recorded.last_good if recorded else p["current"], "held")
    flagged = "\n".join(p.get("flagged") or ()) or None
    env.fence.check(f"alert that {ctx.recipe} is held")
    write_alert(env.settings.state_dir, "upgrade-held", ctx.recipe,
                f"{ctx.recipe}: upgrade to {p['target']} held",
                f"current {p.get('current')}, target {p['target']}, bump "
                f"{p.get('bump')}: {p['why']}", flagged)
    _fields(env, ctx, "held")
    return f"held: {p['why']}"


def confirm(env: StepEnv, ctx: RunCtx) -> str:
    _fields(env, ctx, "up-to-date")
    return f"up to date: {_plan(ctx)['why']}"


def mark(env: StepEnv, ctx: RunCtx) -> str:
    """Before anything changes: the intent record (from, to), and last_good := from."""
    p = _plan(ctx)
    env.fence.check(f"record the upgrade of {ctx.recipe} to {p['target']}")
    intents.write_intent(env.settings.state_dir, intents.Intent(
        resource=resource(ctx.recipe).key, kind="reconcile", run_id=ctx.run_id,
        domain=_domain(ctx), detail={"from": p["current"], "to": p["target"],
                                     "snapshot": False}, token=ctx.token))
    _record(env.settings, ctx.recipe, _domain(ctx), p["current"], p["rollback_to"], "ok")
    return f"upgrading {p['current']} -> {p['target']} ({p.get('bump')}); last good " \
           f"{p['rollback_to']}"


def undeploy(env: StepEnv, ctx: RunCtx) -> str:
    """Graceful: its data is snapshotted next, so every container must exit by itself
    (R12.3); one that had to be killed fails the step and the upgrade is rolled back."""
    env.platform.undeploy(_domain(ctx)).require_clean(_domain(ctx), "take the pre-upgrade "
                                                                    "snapshot")
    return f"{_domain(ctx)} undeployed; every container exited by itself"


def snapshot(env: StepEnv, ctx: RunCtx) -> str:
    """R2.3: the stateful app's volumes, taken undeployed, same format as canonicals."""
    p = _plan(ctx)
    state = env.settings.state_dir
    manifest = snapshots.snapshot(env.platform, state, ctx.recipe, _domain(ctx), p["current"],
                                  base=infra_dir(state, ctx.recipe), guard=env.fence.check)
    intent = intents.read_intent(state, resource(ctx.recipe).key)
    assert intent is not None
    env.fence.check(f"record the snapshot of {ctx.recipe} in its intent record")
    intents.write_intent(state, intents.Intent(
        resource=intent.resource, kind=intent.kind, run_id=ctx.run_id,
        domain=intent.domain, detail={**intent.detail, "snapshot": True}, token=ctx.token))
    return f"snapshot of {p['current']}: {len(manifest.volumes)} volume(s)"


def deploy(env: StepEnv, ctx: RunCtx) -> str:
    target = str(_plan(ctx)["target"])
    env.platform.new_app(ctx.recipe, _domain(ctx), target, kind="infra", run=None)
    env.platform.deploy(_domain(ctx), version=target)
    state = env.platform.wait_converged(_domain(ctx), env.meta.deploy_timeout)
    return f"{_domain(ctx)} deployed at {state.version}"


def health(env: StepEnv, ctx: RunCtx) -> str:
    """R2.2: the health gate."""
    status = _health(env.platform, env.meta, _domain(ctx))
    return f"GET {env.meta.health_path} answered {status}"


def record(env: StepEnv, ctx: RunCtx) -> str:
    p = _plan(ctx)
    target = str(p["target"])
    env.fence.check(f"record {target} as the last good of {ctx.recipe}")
    _record(env.settings, ctx.recipe, _domain(ctx), target, target, "ok")
    intents.clear_intent(env.settings.state_dir, resource(ctx.recipe).key, owner=env.fence.owner)
    outcome = OUTCOME_OF[p["outcome"]]
    _fields(env, ctx, outcome)
    return f"{outcome}: {ctx.recipe} runs {target}, recorded as last good"


def rollback(env: StepEnv, ctx: RunCtx) -> str:
    if intents.read_intent(env.settings.state_dir, resource(ctx.recipe).key) is None:
        p = _plan(ctx)  # a verify: nothing was changed, nothing recorded
        env.fence.check(f"record the rollback of {ctx.recipe} to {p['rollback_to']}")
        intents.write_intent(env.settings.state_dir, intents.Intent(
            resource=resource(ctx.recipe).key, kind="reconcile", run_id=ctx.run_id,
            domain=_domain(ctx), detail={"from": p["rollback_to"], "to": p["target"],
                                         "snapshot": False}, token=ctx.token))
    return roll_back(env.settings, env.platform, ctx.recipe, env.fence.check)


def rollback_record(env: StepEnv, ctx: RunCtx) -> Outcome:
    report = reports.at(env.settings).load(ctx.run_id)
    undone = [s for s in (report.steps if report else ()) if s.undo and s.name == "rollback"]
    recovered = bool(undone) and undone[-1].ok
    why = undone[-1].detail if undone else "the rollback did not run"
    env.fence.check(f"record the rollback of {ctx.recipe}")
    outcome = finish_rollback(env.settings, ctx.recipe, recovered, why, env.fence.owner)
    _fields(env, ctx, "rolled-back")
    return outcome


def give_up(env: StepEnv, ctx: RunCtx) -> Outcome:
    """Nothing recorded healthy to roll back to: a failed first deployment is undeployed;
    an unhealthy version found running is left as it is. Either way an operator is told."""
    assert ctx.failure is not None
    if _plan(ctx)["outcome"] == "deploy":
        env.platform.undeploy(_domain(ctx), graceful=False)
        summary = f"{ctx.recipe}: the first deployment of {_plan(ctx)['target']} failed"
    else:
        summary = (f"{ctx.recipe}: {_plan(ctx)['target']} runs unhealthy and no version was "
                   "ever recorded healthy to roll back to")
    write_alert(env.settings.state_dir, "deploy-failed", ctx.recipe, summary,
                ctx.failure.reason)
    _fields(env, ctx, "failed")
    return Outcome(summary, "fail", ctx.failure.reason)


def recover(settings: Settings, platform: Platform, spec: RunSpec) -> list[str]:
    """After a dead reconcile: roll the app back to the version its intent names."""
    if intents.read_intent(settings.state_dir, resource(spec.recipe).key) is None:
        return []
    return recover_app(settings, platform, spec.recipe)


def recover_app(settings: Settings, platform: Platform, app: Recipe) -> list[str]:
    """Roll ``app`` back through its intent record (the janitor's side). A rollback that
    fails leaves the record for the next round and alerts once."""
    try:
        done = roll_back(settings, platform, app, lambda doing: None)
    except CcciError as exc:
        intent = intents.read_intent(settings.state_dir, resource(app).key)
        if intent is not None and not intent.detail.get("alerted"):
            intents.janitor_write(settings.state_dir, intents.Intent(
                resource=intent.resource, kind=intent.kind, run_id=intent.run_id,
                domain=intent.domain, detail={**intent.detail, "alerted": True},
                token=intent.token))
            write_alert(settings.state_dir, "restore-failed", app,
                        f"{app}: rolling back a cut-off reconcile failed; retried each "
                        "janitor round", str(exc))
        raise
    finish_rollback(settings, app, True, done, None)
    return [done]


FUNCTIONS: dict[str, StepFn] = {
    "admit": common.admit, "hold": hold, "confirm": confirm, "mark": mark,
    "undeploy": undeploy, "snapshot": snapshot, "deploy": deploy, "health": health,
    "record": record, "rollback": rollback, "rollback_record": rollback_record,
    "give_up": give_up,
}

def request(app_name: str) -> dict[str, Any]:
    """Queue a reconcile of the live-warm app ``app_name``; returns at once."""
    return {"recipe": app_name}


def check_entry(settings: Settings, request: Mapping[str, Any]) -> None:
    """The command's check: a live-warm app of CCCI_INFRA_APPS with a repository."""
    app = Recipe(request.get("recipe"))
    if app not in settings.infra_app_list():
        known = ", ".join(settings.infra_app_list()) or "none"
        raise InvalidInput(f"unknown app {app!r}: not in CCCI_INFRA_APPS ({known})")
    recipe_repo(settings, app)


ENTRY = Entry(task="warm_reconcile", queue=c.QUEUE_INFRA, request=request, command=Command(
    NAME, "Reconcile the live-warm APP (one of CCCI_INFRA_APPS) to its newest version.",
    (Argument("app_name", metavar="APP"),), timeout_s=3600.0, check=check_entry,
))

LANE = register(Lane(
    name=NAME, queue="infra", prepare=prepare, plan=plan, steps=steps, undo=undo,
    functions=FUNCTIONS, failure=failure, recover=recover, needs_repo=False, entry=ENTRY,
    orphans={"infra": recover_app},
))
