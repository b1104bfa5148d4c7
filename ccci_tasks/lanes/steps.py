"""The steps of the quick and cold lanes: each one a plain function ``(env, ctx) -> detail``.

A step raises ``RunFailed`` when the app under test fails a check (a red verdict) and lets
infrastructure errors through (verdict ``error``). ``tasks.lanes`` wraps each step in its
own Celery task; ``lanes.finish`` holds the sacred part that runs pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ccci_tasks import probes
from ccci_tasks.config import Settings
from ccci_tasks.errors import DeployFailed, RunFailed, WaitTimeout
from ccci_tasks.lanes.plan import RunCtx
from ccci_tasks.platform.base import DeployedState, Platform
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.state import canonical, warmsnap
from ccci_tasks.state.meta import RecipeMeta

OVERLAY_TIMEOUT_S = 900


@dataclass(frozen=True)
class StepEnv:
    """What a step acts through."""

    settings: Settings
    platform: Platform
    meta: RecipeMeta
    repo: RecipeRepo


StepFn = Callable[[StepEnv, RunCtx], str]


def _app_failed(what: str, exc: Exception) -> RunFailed:
    return RunFailed(f"{what}: {exc}")


def _converge(env: StepEnv, domain: str, what: str) -> DeployedState:
    """Wait for the app under test; its failure to converge is a red verdict."""
    try:
        return env.platform.wait_converged(domain, env.meta.deploy_timeout)
    except (DeployFailed, WaitTimeout) as exc:
        raise _app_failed(what, exc) from exc


def _serving(env: StepEnv, domain: str) -> int:
    return probes.serving(
        env.platform.base_url(domain),
        host=domain,
        ok_codes=tuple(env.meta.health_ok),
        timeout_s=env.meta.http_timeout,
        path=env.meta.health_path,
    )


def _assert_serving(env: StepEnv, domain: str, what: str) -> int:
    try:
        return _serving(env, domain)
    except WaitTimeout as exc:
        raise _app_failed(what, exc) from exc


def _assert_reconverged(state: DeployedState, what: str) -> None:
    ok, why = probes.reconverged(state)
    if not ok:
        raise RunFailed(f"{what}: not reconverged: {why}")


# ----------------------------------------------------------------------------- shared


def admit(env: StepEnv, ctx: RunCtx) -> str:
    return f"holding a run slot ({ctx.lane} lane, {ctx.domain})"


def health_check(env: StepEnv, ctx: RunCtx) -> str:
    if ctx.lane == "quick":  # the known-good must come up: if not, it is not the PR's fault
        status = _serving(env, ctx.domain)
    else:
        status = _assert_serving(env, ctx.domain, "install health check")
    return f"GET {env.meta.health_path} on {ctx.domain} answered {status}"


def realm_create(env: StepEnv, ctx: RunCtx) -> str:
    if ctx.realm is None:
        return "no keycloak dependency: no realm"
    from ccci_tasks import realms

    realms.create_realm(env.settings, ctx.realm)
    return f"created realm {ctx.realm}"


def run_overlay(env: StepEnv, ctx: RunCtx, op: str) -> str:
    """Run ``<tests>/<recipe>/test_<op>.py`` with pytest against the deployed app."""
    test_file = env.settings.tests_dir / ctx.recipe / f"test_{op}.py"
    if not test_file.is_file():
        return f"no test_{op}.py overlay"
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "CCCI_DOMAIN": ctx.domain,
        "CCCI_BASE_URL": env.platform.base_url(ctx.domain),
        "CCCI_OP": op,
        "CCCI_RUN_ID": ctx.run_id,
    }
    if ctx.realm is not None:
        child_env["CCCI_REALM"] = ctx.realm
        child_env["CCCI_KEYCLOAK_URL"] = env.settings.keycloak_url or ""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--rootdir", str(test_file.parent), str(test_file)]
    try:
        done = subprocess.run(
            argv, cwd=test_file.parent, env=child_env, capture_output=True, text=True,
            timeout=OVERLAY_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RunFailed(f"test_{op}.py did not finish within {OVERLAY_TIMEOUT_S} s") from exc
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode != 0:
        tail = " | ".join(done.stdout.strip().splitlines()[-8:])
        raise RunFailed(f"test_{op}.py failed (exit {done.returncode}): {tail}")
    return f"test_{op}.py: {summary}"


# ----------------------------------------------------------------------------- quick


def deploy_canonical(env: StepEnv, ctx: RunCtx) -> str:
    """Warm boot: reattach the canonical's kept volume at its known-good version."""
    env.platform.deploy(ctx.domain, version=ctx.known_good)
    state = env.platform.wait_converged(ctx.domain, env.meta.deploy_timeout)
    return f"{ctx.domain} up at known-good {state.version}"


def upgrade(env: StepEnv, ctx: RunCtx) -> str:
    """Upgrade in place to the PR head: one chaos deploy of the ref."""
    assert ctx.ref is not None
    env.platform.deploy(ctx.domain, chaos_ref=ctx.ref)
    return f"chaos deploy of {ctx.ref} submitted"


def assert_upgrade(env: StepEnv, ctx: RunCtx) -> str:
    """Generic UPGRADE: reconverged + version moved + serving."""
    before = DeployedState(domain=ctx.domain, stack="", version=ctx.known_good)
    return _assert_upgraded(env, ctx, before, ctx.ref, None)


def _assert_upgraded(
    env: StepEnv, ctx: RunCtx, before: DeployedState, ref: str | None, target: str | None
) -> str:
    state = _converge(env, ctx.domain, "upgrade")
    _assert_reconverged(state, "upgrade")
    short = env.repo.short_sha(ref) if ref is not None else None
    moved, why = probes.version_moved(before, state, short, target)
    if not moved:
        raise RunFailed(f"upgrade: {why}")
    status = _assert_serving(env, ctx.domain, "upgrade")
    return f"reconverged, moved ({why}), serving {status}"


def overlay_install(env: StepEnv, ctx: RunCtx) -> str:
    return run_overlay(env, ctx, "install")


def overlay_upgrade(env: StepEnv, ctx: RunCtx) -> str:
    return run_overlay(env, ctx, "upgrade")


def overlay_custom(env: StepEnv, ctx: RunCtx) -> str:
    return run_overlay(env, ctx, "custom")


def put_back_known_good(env: StepEnv, ctx: RunCtx) -> str:
    """Undeploy the canonical and restore its known-good snapshot into its volumes."""
    env.platform.undeploy(ctx.domain)
    warmsnap.restore(env.platform, env.settings.state_dir, ctx.recipe, ctx.domain)
    return f"{ctx.domain} undeployed, known-good data restored, volumes kept"


def finish_quick(env: StepEnv, ctx: RunCtx) -> str:
    """PASS: undeploy and keep the volumes, holding exactly the known-good data."""
    return put_back_known_good(env, ctx)


# ----------------------------------------------------------------------------- cold


def new_app(env: StepEnv, ctx: RunCtx) -> str:
    env.platform.new_app(
        ctx.recipe, ctx.domain, ctx.target_version, kind="cold", run=ctx.run_hex
    )
    return f"new app {ctx.domain}"


def _deploy_target(env: StepEnv, ctx: RunCtx) -> None:
    if ctx.ref is not None:
        env.platform.deploy(ctx.domain, chaos_ref=ctx.ref)
    else:
        env.platform.deploy(ctx.domain, version=ctx.target_version)


def install(env: StepEnv, ctx: RunCtx) -> str:
    """Fresh install of the target (latest tag, or the ref as it is) on fresh volumes."""
    _deploy_target(env, ctx)
    state = _converge(env, ctx.domain, "install")
    _assert_reconverged(state, "install")
    what = f"ref {ctx.ref}" if ctx.ref else ctx.target_version
    return f"installed {what}"


def upgrade_tier(env: StepEnv, ctx: RunCtx) -> str:
    """From the canonical's version to the target, on fresh volumes of the same app."""
    if ctx.base_version is None:
        return f"skipped: {ctx.upgrade_skip}"
    env.platform.remove(ctx.domain)
    env.platform.new_app(ctx.recipe, ctx.domain, ctx.base_version, kind="cold", run=ctx.run_hex)
    env.platform.deploy(ctx.domain, version=ctx.base_version)
    base = _converge(env, ctx.domain, f"upgrade base {ctx.base_version}")
    _assert_serving(env, ctx.domain, f"upgrade base {ctx.base_version}")
    _deploy_target(env, ctx)
    target = None if ctx.ref else ctx.target_version
    detail = _assert_upgraded(env, ctx, base, ctx.ref, target)
    overlay = run_overlay(env, ctx, "upgrade")
    return f"{ctx.base_version} -> {ctx.ref or ctx.target_version}: {detail}; {overlay}"


def teardown(env: StepEnv, ctx: RunCtx) -> str:
    """Sacred: the per-run app's services, volumes, secrets and env file are deleted."""
    env.platform.remove(ctx.domain)
    return f"removed {ctx.domain} with its volumes and secrets"


# ----------------------------------------------------------------------------- promote


def _warm(ctx: RunCtx) -> str:
    assert ctx.warm_domain is not None
    return ctx.warm_domain


def promote_deploy(env: StepEnv, ctx: RunCtx) -> str:
    """Deploy the canonical at the green version: an upgrade of its kept volume, or fresh."""
    warm = _warm(ctx)
    env.platform.new_app(ctx.recipe, warm, ctx.target_version, kind="warm", run=None)
    env.platform.deploy(warm, version=ctx.target_version)
    state = env.platform.wait_converged(warm, env.meta.deploy_timeout)
    return f"{warm} up at {state.version}"


def promote_health(env: StepEnv, ctx: RunCtx) -> str:
    return f"{_warm(ctx)} answered {_serving(env, _warm(ctx))}"


def promote_undeploy(env: StepEnv, ctx: RunCtx) -> str:
    env.platform.undeploy(_warm(ctx))
    return f"{_warm(ctx)} undeployed"


def promote_snapshot(env: StepEnv, ctx: RunCtx) -> str:
    """Snapshot (swapped in atomically), then the registry: the new known-good."""
    assert ctx.target_version is not None
    warm = _warm(ctx)
    state_dir = env.settings.state_dir
    manifest = warmsnap.snapshot(env.platform, state_dir, ctx.recipe, warm, ctx.target_version)
    canonical.write_registry(
        state_dir,
        canonical.Canonical(
            recipe=ctx.recipe,
            domain=warm,
            version=ctx.target_version,
            commit=env.repo.commit(ctx.target_version),
            status="known-good",
            ts=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )
    return f"canonical {ctx.recipe} is now {ctx.target_version} ({len(manifest.volumes)} volumes)"


def finish_cold(env: StepEnv, ctx: RunCtx) -> str:
    return "promoted" if ctx.promote else "green"


STEPS: dict[str, StepFn] = {
    fn.__name__: fn
    for fn in (
        admit, deploy_canonical, health_check, realm_create, upgrade, assert_upgrade,
        overlay_install, overlay_upgrade, overlay_custom, finish_quick, new_app, install,
        upgrade_tier, teardown, promote_deploy, promote_health, promote_undeploy,
        promote_snapshot, finish_cold,
    )
}

