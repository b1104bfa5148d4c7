"""The production platform: Co-op Cloud's ``abra`` CLI, one ``ABRA_DIR`` per run.

Plan, then act: the argument lists are built by small pure functions (``platform.abra_plan``:
``new_app_argv``, ``deploy_argv``, ``undeploy_argv``, ``chaos_checkout_plan``, with the
command lines and flags they use) and run by ``run_command``, the one place that starts a
process: argument lists only (never a shell), stdin closed, a timeout on every call, a minimal
environment (``abra_plan.subprocess_env``). Every outside string (recipe, domain, version,
ref) is validated with ``naming`` before any process starts or any file is written.

ABRA_DIR layout
---------------
::

    <abra_root>/servers/              shared: one env file per app, <server>/<domain>.env
    <abra_root>/catalogue/            shared
    <abra_root>/runs/<run_id>/        ABRA_DIR of one run (``<abra_root>/shared`` without one)
        servers   -> <abra_root>/servers
        catalogue -> <abra_root>/catalogue
        recipes/                      this run's own recipe checkouts (no two runs share one)

What the engine is asked, through Docker (``DockerState``)
-----------------------------------------------------------
* undeploy: after ``abra app undeploy``, ``DockerState.wait_undeployed``. Not graceful
  (``undeploy(domain, graceful=False)``): the same command line; while it runs, the stack's
  containers are killed (SIGKILL) through the Docker engine as soon as its services are gone
  (``DockerState.kill_containers``), so neither abra nor the wait holds for the containers'
  stop grace periods.
* remove: the non-graceful undeploy above, then ``DockerState.remove_volumes`` and
  ``remove_secrets`` and the env file is deleted. ``abra app remove`` is not used (its flags
  are unverified); this is the documented safe fallback.
* convergence: ``DockerState.wait_converged`` without a readiness probe (probes go through
  Traefik, whose answer cannot tell a booting app from a missing route), so on this platform
  "converged" means the tasks run (for a recipe with a healthcheck: are healthy); a task that
  dies later is named by ``still_running``.
* service logs and the disk prune's engine-wide observations and removals read the engine
  through the docker SDK, like the rest of the state.

Run directories: ``<abra_root>/runs/<run_id>/`` is discarded when its run ends (the run
hook ``platform.run_finished``); the shared ``servers/`` and ``catalogue/`` stay.

Secrets and logs: log lines carry the argv and ABRA_DIR, never the environment. ``app new
--secrets`` prints generated secrets on stdout: stdout is never logged and never put into an
error; ``CommandFailed`` carries argv and stderr.

Errors: a non-zero exit is ``CommandFailed(argv, rc, stderr)``; running out of time is
``WaitTimeout``; a binary that cannot be started is ``PlatformError``; an app without an env
file is ``AppNotFound``.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Final

import ccci_tasks.atomic as atomic
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, CommandFailed, InvalidInput, PlatformError
from ccci_tasks.naming import (
    Domain,
    Recipe,
    Ref,
    RunHex,
    RunId,
    stack_name,
    validate_version,
)
from ccci_tasks.platform.abra_plan import (
    ENV_KIND,
    ENV_RECIPE,
    ENV_RUN,
    RECIPE_KEYS,
    AbraLayout,
    chaos_checkout_plan,
    deploy_argv,
    env_file_recipe,
    new_app_argv,
    subprocess_env,
    undeploy_argv,
    validate_kind,
    validate_server,
)
from ccci_tasks.platform.base import AppInfo, DeployedState, Kind, StopReport, VolumeInfo
from ccci_tasks.platform.docker_state import DockerState
from ccci_tasks.platform.engine import docker_client
from ccci_tasks.platform.engine_objects import EngineHousekeeping
from ccci_tasks.platform.envfile import parse_env, set_keys
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.platform.service_logs import stack_logs
from ccci_tasks.platform.stops import stop_watched
from ccci_tasks.proc import run

__all__ = [
    "ABRA_DEPLOY_TIMEOUT_S",
    "ABRA_TIMEOUT_S",
    "GIT_TIMEOUT_S",
    "UNDEPLOY_WAIT_S",
    "AbraPlatform",
    "discard_run_dir",
    "prepare_layout",
    "run_command",
]

log = logging.getLogger(__name__)

ABRA_TIMEOUT_S: Final = 600.0  # app new (clones the recipe), undeploy
ABRA_DEPLOY_TIMEOUT_S: Final = 3000.0  # below the step hard time limit (3600 s)
GIT_TIMEOUT_S: Final = 120.0
UNDEPLOY_WAIT_S: Final = 300.0
KILL_POLL_S: Final = 0.1


# --------------------------------------------------------------------------- act


def prepare_layout(layout: AbraLayout) -> Path:
    """Create the shared directories, the run's ABRA_DIR and its symlinks; return ABRA_DIR."""
    abra_dir = layout.abra_dir
    try:
        (abra_dir / "recipes").mkdir(parents=True, exist_ok=True)
        for name, target in layout.shared.items():
            target.mkdir(parents=True, exist_ok=True)
            link = abra_dir / name
            with contextlib.suppress(FileExistsError):  # made by a concurrent call
                link.symlink_to(target, target_is_directory=True)
            if not (link.is_symlink() and link.resolve() == target.resolve()):
                raise PlatformError(
                    f"{link} should be a symlink to {target}, but is not; remove it so each "
                    "run shares servers/ and catalogue/"
                )
        layout.server_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlatformError(
            f"cannot prepare ABRA_DIR {abra_dir}: {exc}; check CCCI_ABRA_DIR / CCCI_STATE_DIR"
        ) from exc
    return abra_dir


def run_command(
    argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell, stdin closed, a timeout) and return the finished process.

    Non-zero exit → ``CommandFailed`` (argv, code, stderr); too slow → ``WaitTimeout``.
    """
    argv = [str(a) for a in argv]
    log.info("running %s (ABRA_DIR=%s)", shlex.join(argv), env.get("ABRA_DIR", "-"))
    # CommandFailed carries stderr only: ``app new --secrets`` prints generated secrets on
    # stdout.
    return run(argv, timeout_s=timeout_s, text=True, env=env, cwd=cwd,
               hint="install it or set CCCI_ABRA_BIN to its path")


def _succeeds(argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float) -> bool:
    """True when ``argv`` exits 0 (a probe such as ``git cat-file -e``)."""
    try:
        run_command(argv, env=env, timeout_s=timeout_s)
    except CommandFailed:
        return False
    return True


class AbraPlatform(EngineHousekeeping):
    """The ``Platform`` on a Co-op Cloud server, driven by ``abra``; state read via Docker.

    ``extra_env`` is added to the minimal subprocess environment (e.g. a test's settings for
    its stand-in abra); it is never logged.
    """

    def __init__(
        self,
        settings: Settings,
        run_id: RunId | None = None,
        docker_state: DockerState | None = None,
        *,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.layout = AbraLayout(
            root=Path(settings.abra_root), run_id=self.run_id,
            server=validate_server(settings.abra_server),
        )
        self.abra = settings.abra_bin
        self._state = docker_state
        self._own_state = False  # a DockerState given by the caller is the caller's to close
        self._extra_env = dict(extra_env or {})

    def __repr__(self) -> str:
        return f"AbraPlatform(abra_dir={str(self.abra_dir)!r}, server={self.layout.server!r})"

    @property
    def abra_dir(self) -> Path:
        return self.layout.abra_dir

    @property
    def state(self) -> DockerState:
        """The Docker view, connected on first use."""
        if self._state is None:
            self._state = DockerState(docker_client(self.settings))
            self._own_state = True
        return self._state

    def close(self) -> None:
        """Close the engine connection this platform opened (the next call reconnects)."""
        if self._own_state and self._state is not None:
            self._state.client.close()
            self._state, self._own_state = None, False

    # --- running ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return subprocess_env(self.abra_dir, self._extra_env,
                              docker_host=self.settings.docker_host)

    def _abra(self, argv: list[str], timeout_s: float = ABRA_TIMEOUT_S) -> None:
        prepare_layout(self.layout)
        run_command(argv, env=self._env(), timeout_s=timeout_s, cwd=self.abra_dir)

    def has_config(self, domain: Domain) -> bool:
        return self.layout.env_file(domain).is_file()

    def _read_env_file(self, domain: Domain) -> dict[str, str]:
        path = self.layout.env_file(domain)
        try:
            return parse_env(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AppNotFound(
                f"app {domain} has no env file at {path}; create it with new_app first"
            ) from None
        except OSError as exc:
            raise PlatformError(f"cannot read the env file {path} of {domain}: {exc}") from exc

    def _write_env_keys(self, domain: Domain, values: Mapping[str, str]) -> None:
        path = self.layout.env_file(domain)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode & 0o777
            atomic.write_text(path, set_keys(text, values), mode)
        except OSError as exc:
            raise PlatformError(f"cannot update the env file {path} of {domain}: {exc}") from exc

    # --- Platform ---------------------------------------------------------------------

    def new_app(
        self, recipe: Recipe, domain: Domain, version: str | None = None, *, kind: Kind,
        run: RunHex | None,
    ) -> AppInfo:
        """``abra app new`` (unless the env file exists), then record kind/run/recipe in it."""
        if version is not None:
            validate_version(version)
        kind = validate_kind(kind)
        path = self.layout.env_file(domain)
        existed = path.exists()
        if existed:
            named = env_file_recipe(self._read_env_file(domain))
            if named is not None and named != recipe:
                raise PlatformError(
                    f"app {domain} already exists for recipe {named!r}, not {recipe!r} "
                    f"(env file {path}); remove it first or pick another domain"
                )
        else:
            self._abra(new_app_argv(self.abra, recipe, domain, self.layout.server, version))
            if not path.exists():
                raise PlatformError(
                    f"abra app new {recipe} for {domain} exited 0 but wrote no env file at "
                    f"{path}; check CCCI_ABRA_SERVER and the abra version"
                )
        values: dict[str, str] = {ENV_RECIPE: recipe, ENV_KIND: kind}
        if run is not None:
            values[ENV_RUN] = run
        self._write_env_keys(domain, values)
        deployed = existed and self.state.deployed(domain).is_deployed
        return AppInfo(domain=domain, stack=stack_name(domain), recipe=recipe, kind=kind,
                       run=run, deployed=deployed)

    def _chaos_checkout(self, recipe: Recipe, ref: str) -> str:
        """Check ``ref`` out (detached) in this run's recipe checkout; return its sha."""
        checkout = self.layout.checkout(recipe)
        mirror = Path(self.settings.recipes_dir) / recipe
        source = mirror if mirror.is_dir() else checkout
        if not source.is_dir():
            raise AppNotFound(
                f"recipe {recipe!r}: neither a repository at {mirror} nor a checkout at "
                f"{checkout}; mirror the recipe into CCCI_RECIPES_DIR"
            )
        sha = RecipeRepo(source, recipe, timeout_s=GIT_TIMEOUT_S).commit(ref)
        env = self._env()
        have_checkout = checkout.is_dir()
        have_commit = have_checkout and _succeeds(
            ["git", "-C", str(checkout), "cat-file", "-e", f"{sha}^{{commit}}"],
            env=env, timeout_s=GIT_TIMEOUT_S,
        )
        plan = chaos_checkout_plan(source, checkout, sha, have_checkout=have_checkout,
                                   have_commit=have_commit)
        for argv in plan:
            run_command(argv, env=env, timeout_s=GIT_TIMEOUT_S, cwd=self.abra_dir)
        return sha

    def deploy(
        self, domain: Domain, version: str | None = None, chaos_ref: Ref | None = None
    ) -> DeployedState:
        """Deploy ``version`` (None: latest) or, with ``chaos_ref``, that commit as it is."""
        if version is not None:
            validate_version(version)
        if chaos_ref is not None and version is not None:
            raise InvalidInput(
                f"deploy of {domain}: give a version or a chaos ref, not both "
                f"(got {version!r} and {chaos_ref!r})"
            )
        named = env_file_recipe(self._read_env_file(domain))
        if named is None:
            raise PlatformError(
                f"the env file {self.layout.env_file(domain)} names no recipe "
                f"({'/'.join(RECIPE_KEYS)}); recreate the app with new_app"
            )
        recipe = Recipe(named)  # read from the env file
        prepare_layout(self.layout)
        if chaos_ref is not None:
            sha = self._chaos_checkout(recipe, chaos_ref)
            log.info("chaos deploy of %s at %s (%s)", domain, chaos_ref, sha[:7])
            argv = deploy_argv(self.abra, domain, chaos=True)
        else:
            force = self.state.deployed(domain).is_deployed
            argv = deploy_argv(self.abra, domain, version, force=force)
        self._abra(argv, timeout_s=ABRA_DEPLOY_TIMEOUT_S)
        return self.state.deployed(domain)

    def undeploy(self, domain: Domain, *, graceful: bool = True) -> StopReport:
        """``abra app undeploy`` when deployed, then wait until services and containers are
        gone. Graceful: each container's end is watched (``platform.stops``); not graceful:
        the containers are killed once the services are gone."""
        deployed = self.state.deployed(domain).is_deployed
        argv = undeploy_argv(self.abra, domain)
        if graceful:
            def abra_undeploy() -> None:
                if deployed:
                    self._abra(argv)

            return stop_watched(self.state, domain, abra_undeploy, UNDEPLOY_WAIT_S)
        if deployed:
            self._abra_killing(argv, domain)
        self.state.kill_containers(domain)  # also what an earlier undeploy left
        self.state.wait_undeployed(domain, UNDEPLOY_WAIT_S)
        return StopReport(graceful=False)

    def _abra_killing(self, argv: list[str], domain: Domain) -> None:
        """Run abra; meanwhile kill the stack's containers as soon as its services are gone.

        abra may itself wait for the stack's tasks to end; killing them lets it return
        without the stop grace periods. Never kills while a service exists (swarm would
        start a replacement).
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="abra") as pool:
            running = pool.submit(self._abra, argv)
            killed = False
            while not wait_futures([running], timeout=KILL_POLL_S).done:
                if not killed and not self.state.deployed(domain).is_deployed:
                    self.state.kill_containers(domain)
                    killed = True
            running.result()

    def secret_values(self, domain: Domain) -> list[str]:
        """None known: abra prints the secrets it generates once (``app new --secrets``,
        never kept or logged here) and Docker never gives a secret's value back."""
        return []

    def remove(self, domain: Domain) -> None:
        """Undeploy without a graceful stop, then delete the stack's volumes and secrets and
        the app's env file."""
        self.undeploy(domain, graceful=False)
        self.state.remove_volumes(domain)
        self.state.remove_secrets(domain)
        path = self.layout.env_file(domain)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise PlatformError(f"cannot delete the env file {path} of {domain}: {exc}") from exc

    def volumes(self, domain: Domain) -> list[VolumeInfo]:
        return self.state.volumes(domain)

    def deployed(self, domain: Domain) -> DeployedState:
        return self.state.deployed(domain)

    def wait_converged(self, domain: Domain, timeout_s: float) -> DeployedState:
        return self.state.wait_converged(domain, timeout_s)

    def still_running(self, domain: Domain, since: DeployedState) -> None:
        self.state.still_running(domain, since)

    def base_url(self, domain: Domain) -> str:
        """``https://<domain>``: probes go through Traefik on the server."""
        return f"https://{domain}"

    def service_logs(self, domain: Domain, tail: int) -> dict[str, str]:
        """Through Docker, like the rest of the state (``abra app logs`` follows)."""
        return stack_logs(self.state.client, domain, tail)

    def _env_file_apps(self) -> list[AppInfo]:
        """Apps whose env file carries a valid ``CCCI_KIND`` (others are not ours)."""
        server_dir = self.layout.server_dir
        apps = []
        for path in sorted(server_dir.glob("*.env")) if server_dir.is_dir() else []:
            try:
                domain = Domain(path.name[: -len(".env")])
                values = parse_env(path.read_text(encoding="utf-8"))
                kind = validate_kind(values.get(ENV_KIND, ""))
                found = values.get(ENV_RUN) or None
                run = None if found is None else RunHex(found)
            except (InvalidInput, OSError, UnicodeDecodeError):
                continue
            apps.append(AppInfo(domain=domain, stack=stack_name(domain),
                                recipe=env_file_recipe(values) or "", kind=kind, run=run))
        return apps

    def live_apps(self) -> list[AppInfo]:
        """Apps with a ccci env file (deployed or not) plus any carrying ccci labels."""
        apps = {app.domain: app for app in self.state.labelled_apps()}
        for app in self._env_file_apps():
            deployed = self.state.deployed(app.domain).is_deployed
            apps[app.domain] = AppInfo(domain=app.domain, stack=app.stack, recipe=app.recipe,
                                       kind=app.kind, run=app.run, deployed=deployed)
        return [apps[d] for d in sorted(apps)]

    # --- housekeeping -----------------------------------------------------------------

    def discard_run_dir(self) -> None:
        """Delete this run's ABRA_DIR (its recipe checkouts); shared directories stay."""
        if self.run_id is None:
            return
        abra_dir = self.abra_dir
        for name in self.layout.shared:
            link = abra_dir / name
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(abra_dir, ignore_errors=True)


def discard_run_dir(settings: Settings, run_id: RunId) -> None:
    """The run ``run_id`` ended: delete ``<abra_root>/runs/<run_id>/`` (nothing if absent)."""
    AbraPlatform(settings, run_id=run_id).discard_run_dir()
