"""Step helpers and steps shared by the app lanes (quick, cold): health, overlays, realms."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ccci_tasks import probes
from ccci_tasks.errors import DeployFailed, KeycloakError, RunFailed, WaitTimeout
from ccci_tasks.lanes.model import RunCtx, StepEnv
from ccci_tasks.naming import Domain
from ccci_tasks.platform.base import DeployedState
from ccci_tasks.proc import run

log = logging.getLogger(__name__)

OVERLAY_TIMEOUT_S = 900


def app_failed(what: str, exc: Exception) -> RunFailed:
    return RunFailed(f"{what}: {exc}")


def converge(env: StepEnv, domain: Domain, what: str) -> DeployedState:
    """Wait for the app under test; its failure to converge is a red verdict."""
    try:
        return env.platform.wait_converged(domain, env.meta.deploy_timeout)
    except (DeployFailed, WaitTimeout) as exc:
        raise app_failed(what, exc) from exc


def serving(env: StepEnv, domain: Domain) -> int:
    return probes.serving(
        env.platform.base_url(domain),
        host=domain,
        ok_codes=tuple(env.meta.health_ok),
        timeout_s=env.meta.http_timeout,
        path=env.meta.health_path,
    )


def assert_serving(env: StepEnv, domain: Domain, what: str) -> int:
    try:
        return serving(env, domain)
    except WaitTimeout as exc:
        raise app_failed(what, exc) from exc


def assert_reconverged(state: DeployedState, what: str) -> None:
    ok, why = probes.reconverged(state)
    if not ok:
        raise RunFailed(f"{what}: not reconverged: {why}")


CONVERGED_FIELD = "converged"  # report field: the app's state when it last converged


def remember_converged(env: StepEnv, ctx: RunCtx, state: DeployedState) -> None:
    """Keep the converged state (its running tasks) for ``assert_still_running``."""
    from ccci_tasks.state import reports

    reports.at(env.settings).set_fields(ctx.run_id, **{CONVERGED_FIELD: state.to_json()})


def assert_still_running(env: StepEnv, ctx: RunCtx) -> str:
    """Right before a run is green: every task that ran when the app last converged still
    runs (a task that died a few seconds after it started is named, and the run is red)."""
    from ccci_tasks.state import reports

    assert ctx.domain is not None
    report = reports.at(env.settings).load(ctx.run_id)
    saved = report.extra.get(CONVERGED_FIELD) if report is not None else None
    if not saved:
        return "no converged state to compare with"
    since = DeployedState.from_json(saved)
    try:
        env.platform.still_running(ctx.domain, since)
    except DeployFailed as exc:
        raise RunFailed(f"the app did not stay up: {exc}") from exc
    return "every task of the converged app still runs"


def assert_upgraded(
    env: StepEnv, domain: Domain, before: DeployedState, ref: str | None, target: str | None,
    ctx: RunCtx | None = None,
) -> str:
    """Generic UPGRADE (R6.4): reconverged + version moved + serving."""
    state = converge(env, domain, "upgrade")
    if ctx is not None:
        remember_converged(env, ctx, state)
    assert_reconverged(state, "upgrade")
    short = env.repo.short_sha(ref) if (ref is not None and env.repo is not None) else None
    moved, why = probes.version_moved(before, state, short, target)
    if not moved:
        raise RunFailed(f"upgrade: {why}")
    status = assert_serving(env, domain, "upgrade")
    return f"reconverged, moved ({why}), serving {status}"


# ----------------------------------------------------------------------------- steps


def admit(env: StepEnv, ctx: RunCtx) -> str:
    """The run holds its resources; its lease's TTL starts here."""
    return f"holding its resources ({ctx.lane} lane, {ctx.domain})"


def realm_create(env: StepEnv, ctx: RunCtx) -> str:
    """Create the run's Keycloak realm (R3.1) when the recipe depends on keycloak."""
    if ctx.realm is None:
        return "no keycloak dependency: no realm"
    from ccci_tasks import realms

    env.fence.check(f"create realm {ctx.realm}")
    realms.create_realm(env.settings, ctx.realm)
    return f"created realm {ctx.realm}"


def realm_delete(env: StepEnv, ctx: RunCtx) -> str:
    """Delete the run's realm, pass or fail (R3.1). A Keycloak that does not answer leaves the
    realm to the realm reaper; the run's verdict does not change for that."""
    if ctx.realm is None:
        return "no keycloak dependency: no realm"
    from ccci_tasks import realms

    env.fence.check(f"delete realm {ctx.realm}")
    try:
        realms.delete_realm(env.settings, ctx.realm)
    except KeycloakError as exc:
        log.warning("run %s: realm %s left for the reaper: %s", ctx.run_id, ctx.realm, exc)
        return f"realm {ctx.realm} not deleted ({exc}); the realm reaper deletes it later"
    return f"deleted realm {ctx.realm}"


def overlay_config_args(tests: Path) -> list[str]:
    """Pytest options that keep an overlay to its recipe's own tests directory.

    Without them pytest looks for its configuration upwards from the tests directory and may
    take any project's (e.g. this checkout's ``pyproject.toml``, whose strict options and
    plugin settings fail an overlay run without plugins), and loads ``conftest.py`` files of
    the directories above. A ``pytest.ini`` next to the overlays is the recipe's own and used.
    """
    ini = tests / "pytest.ini"
    return ["-c", str(ini) if ini.is_file() else os.devnull,
            "--rootdir", str(tests), "--confcutdir", str(tests)]


def run_overlay(env: StepEnv, ctx: RunCtx, op: str) -> str:
    """Run ``<tests>/<recipe>/test_<op>.py`` with pytest against the deployed app."""
    assert ctx.domain is not None
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
        # Overlays are plain pytest files: no third-party plugin autoload (it costs up to a
        # second per run); a recipe that needs a plugin names it with -p in its tests.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    if ctx.realm is not None:
        child_env["CCCI_REALM"] = ctx.realm
        child_env["CCCI_KEYCLOAK_URL"] = env.settings.keycloak_url or ""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            *overlay_config_args(test_file.parent), str(test_file)]
    try:
        done = run(argv, timeout_s=OVERLAY_TIMEOUT_S, text=True, cwd=test_file.parent,
                   env=child_env, check=False)
    except WaitTimeout as exc:
        env.output.section(f"test_{op}.py (pytest, cut off)", str(exc))
        raise RunFailed(f"test_{op}.py did not finish within {OVERLAY_TIMEOUT_S} s") from exc
    printed = done.stdout + (f"\n{done.stderr}" if done.stderr.strip() else "")
    env.output.section(f"test_{op}.py (pytest, exit {done.returncode})", printed)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode != 0:
        raise RunFailed(f"test_{op}.py failed (exit {done.returncode}): "
                        f"{failure_summary(done.stdout)}")
    return f"test_{op}.py: {summary}"


def failure_summary(printed: str) -> str:
    """What a red pytest run says in short: its ``FAILED``/``ERROR`` lines and its last line
    (the whole output is the step's output); its last 8 lines when it has no such line."""
    lines = [line.strip() for line in printed.strip().splitlines() if line.strip()]
    named = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    picked = named[:5] + lines[-1:] if named else lines[-8:]
    return " | ".join(picked) or "(no output)"


def overlay_install(env: StepEnv, ctx: RunCtx) -> str:
    return run_overlay(env, ctx, "install")


def overlay_upgrade(env: StepEnv, ctx: RunCtx) -> str:
    return run_overlay(env, ctx, "upgrade")


def overlay_custom(env: StepEnv, ctx: RunCtx) -> str:
    """The custom tests, then the last check before green: the app stayed up."""
    detail = run_overlay(env, ctx, "custom")
    return f"{detail}; {assert_still_running(env, ctx)}"
