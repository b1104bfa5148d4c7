"""The local swarm backend: the docker SDK plus ``docker stack deploy`` (argument lists only).

Per app (``domain``) it keeps its files under ``<state_dir>/apps/`` (``platform.app_files``):
the env file made by ``new_app`` from the recipe's ``.env.sample`` (with a loopback port per
``CCCI_<NAME>_PORT``), the values of the Docker secrets generated for it (read back by
``secret_values`` for the redaction of run output), and one directory per deploy with the
exported recipe tree (``RecipeRepo.checkout``: the shared repository is never touched, so two
runs of one recipe never race) and the rendered compose files.

A deploy checks everything before anything is created (``platform.stack_deploy``), then
creates the secrets the compose files use that do not exist yet and runs one ``docker stack
deploy`` with a minimal environment (``PATH``/``HOME``/``DOCKER_HOST`` and the deploy's own).

Rendering also sets ``deploy.update_config.monitor`` to ``UPDATE_MONITOR`` on every service
whose recipe does not set it. Swarm's default (5 s) keeps an update ``updating`` for that long
after the new task runs, only to watch for a failure; ``wait_converged`` watches for failures
itself (events, crash-loop counting, ``still_running``), so the default is dead time on every
upgrade. A recipe that sets its own monitor keeps it.

The app is up when its loopback port accepts a TCP connection: ``wait_converged`` waits for
that too (the recipe contract says the app serves HTTP on ``127.0.0.1:${CCCI_HTTP_PORT}``), so
a fresh task that dies before it serves is seen crash-looping instead of passing for converged.

A graceful undeploy watches how every container ends (``platform.stops``) and says in its
``StopReport`` whether each exited by itself or was killed; ``remove`` also deletes the app's
secrets (they carry no stack label, so ``docker stack rm`` keeps them for a canonical).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Final

import docker

from ccci_tasks import constants
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, InvalidInput
from ccci_tasks.naming import (
    Domain,
    Recipe,
    Ref,
    RunHex,
    stack_name,
)
from ccci_tasks.platform.app_files import KEEP_DEPLOY_DIRS, PORT_RANGE, AppFiles
from ccci_tasks.platform.app_secrets import AppSecrets
from ccci_tasks.platform.base import AppInfo, DeployedState, Kind, StopReport, VolumeInfo
from ccci_tasks.platform.convergence import Readiness
from ccci_tasks.platform.docker_state import DockerState
from ccci_tasks.platform.engine import docker_client
from ccci_tasks.platform.engine_objects import EngineHousekeeping
from ccci_tasks.platform.envfile import interpolate
from ccci_tasks.platform.recipe_env import RecipeEnv, read_recipe_env
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.platform.render import (
    APP_SERVICE,
    UPDATE_MONITOR,
    declared_version,
    render_compose,
)
from ccci_tasks.platform.service_logs import stack_logs
from ccci_tasks.platform.stack_deploy import (
    newest_tag_reachable,
    plan_stack,
    resolve_ref,
    resolve_version,
    write_stack,
)
from ccci_tasks.platform.stops import stop_watched
from ccci_tasks.proc import run

__all__ = [
    "APP_SERVICE",
    "KEEP_DEPLOY_DIRS",
    "PORT_RANGE",
    "UPDATE_MONITOR",
    "SwarmPlatform",
    "declared_version",
    "interpolate",
    "render_compose",
]

STACK_DEPLOY_TIMEOUT_S: Final = 300.0
STACK_RM_TIMEOUT_S: Final = 120.0
UNDEPLOY_TIMEOUT_S: Final = 120.0
ENV_SAMPLE: Final = ".env.sample"
CONNECT_TIMEOUT_S: Final = 0.5


class SwarmPlatform(EngineHousekeeping):
    """``Platform`` on the local Docker engine in swarm mode."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._state: DockerState | None = None
        self.files = AppFiles(settings.state_dir / "apps")

    # --- plumbing ---------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client(self.settings)
        return self._client

    @property
    def state(self) -> DockerState:
        if self._state is None:
            self._state = DockerState(self.client)
        return self._state

    def close(self) -> None:
        """Close the engine connection this platform opened (the next call reconnects)."""
        if self._client is not None:
            self._client.close()
        self._client = self._state = None

    @property
    def apps_dir(self) -> Path:
        return self.files.apps_dir

    def env_path(self, domain: Domain) -> Path:
        return self.files.env_path(domain)

    def deploy_root(self, domain: Domain) -> Path:
        return self.files.deploy_root(domain)

    def secrets_path(self, domain: Domain) -> Path:
        return self.files.secrets_path(domain)

    def repo(self, recipe: Recipe) -> RecipeRepo:
        return RecipeRepo(self.settings.recipes_dir / recipe, recipe)

    def has_config(self, domain: Domain) -> bool:
        return self.env_path(domain).is_file()

    def app_secrets(self, domain: Domain) -> AppSecrets:
        return AppSecrets(self.client, self.secrets_path(domain))

    def read_env(self, domain: Domain) -> dict[str, str]:
        """The app's env file; ``AppNotFound`` when the app was never created."""
        return self.files.recipe_env(domain).values

    # --- Platform ---------------------------------------------------------------------

    def new_app(
        self, recipe: Recipe, domain: Domain, version: str | None = None, *, kind: Kind,
        run: RunHex | None,
    ) -> AppInfo:
        """Create (or refresh) the app's env file, keeping its ports once allocated.

        A new app's env file is the recipe's ``.env.sample`` at ``version``, read strictly:
        a malformed line, or a ``COMPOSE_FILE`` naming a file the recipe does not have at
        that version, is refused (naming the file and line) before anything is written.
        """
        if kind not in constants.KINDS:
            raise InvalidInput(f"app kind {kind!r} is invalid; use one of {constants.KINDS}")

        def sample() -> tuple[str, RecipeEnv]:
            repo = self.repo(recipe)
            ref = resolve_version(repo, version)
            text = repo.file_at(ref, ENV_SAMPLE) or ""
            declared = read_recipe_env(text, f"{recipe} {ref}: {ENV_SAMPLE}")
            for name in declared.compose_files:
                if repo.file_at(ref, name) is None:
                    raise InvalidInput(
                        f"{recipe} {ref}: {ENV_SAMPLE} line {declared.compose_line}: "
                        f"COMPOSE_FILE names {name}, which the recipe does not have")
            return text, declared

        self.files.create_env(recipe, domain, kind, run, sample)
        return AppInfo(
            domain=domain,
            stack=stack_name(domain),
            recipe=recipe,
            kind=kind,
            run=run,
            deployed=self.state.deployed(domain).is_deployed,
        )

    def deploy(
        self, domain: Domain, version: str | None = None, chaos_ref: Ref | None = None
    ) -> DeployedState:
        """Deploy a version tag (None: latest) or, with ``chaos_ref``, that commit as it is.

        Everything is checked before anything is created (``platform.stack_deploy``); then
        the missing secrets are created and the stack deployed.
        """
        declared = self.files.recipe_env(domain)
        recipe = Recipe(declared.values.get("RECIPE", ""))  # read from the env file
        repo = self.repo(recipe)
        ref, short = resolve_ref(repo, version, chaos_ref)
        dest = self.deploy_root(domain) / f"{time.time_ns()}-{short or ref}"
        repo.checkout(ref, dest)
        plan = plan_stack(dest, declared, domain=domain, stack=stack_name(domain),
                          recipe=recipe, ref=ref, short=short,
                          newest_tag=lambda: newest_tag_reachable(repo, ref))
        self.app_secrets(domain).ensure(plan.needed, plan.ccci_labels)
        argv = write_stack(plan, dest)
        self._run(argv, cwd=dest, env=plan.env, timeout_s=STACK_DEPLOY_TIMEOUT_S)
        self.files.prune_deploy_dirs(domain)
        return self.deployed(domain)

    def undeploy(self, domain: Domain, *, graceful: bool = True) -> StopReport:
        """``docker stack rm``, then wait until services and containers are gone.

        Graceful: each container gets its stop signal and stop grace period, and the report
        says whether each exited by itself. Not graceful: the containers are killed at once
        (SIGKILL) and removed.
        """
        stack = stack_name(domain)

        def stack_rm() -> None:
            self._run(["docker", "stack", "rm", stack], timeout_s=STACK_RM_TIMEOUT_S)

        if graceful:
            return stop_watched(self.state, domain, stack_rm, UNDEPLOY_TIMEOUT_S)
        stack_rm()
        self.state.kill_containers(domain)
        self.state.wait_undeployed(domain, UNDEPLOY_TIMEOUT_S)
        return StopReport(graceful=False)

    def remove(self, domain: Domain) -> None:
        """Undeploy without a graceful stop (the data goes next), then delete volumes,
        secrets (with their values), the env file and the deploy dirs."""
        self.undeploy(domain, graceful=False)
        self.state.remove_volumes(domain)
        self.state.remove_secrets(domain)
        self.app_secrets(domain).forget()
        self.files.forget(domain)

    def secret_values(self, domain: Domain) -> list[str]:
        """The values of the app's generated secrets (from its 0600 file)."""
        return sorted(self.app_secrets(domain).values().values())

    def volumes(self, domain: Domain) -> list[VolumeInfo]:
        return self.state.volumes(domain)

    def deployed(self, domain: Domain) -> DeployedState:
        return self.state.deployed(domain)

    def live_apps(self) -> list[AppInfo]:
        """Apps with ccci-labelled services or volumes, plus apps with an env file."""
        apps = {a.domain: a for a in self.state.labelled_apps()}
        for app in self.files.env_apps():
            apps.setdefault(app.domain, app)
        return [apps[d] for d in sorted(apps)]

    def wait_converged(self, domain: Domain, timeout_s: float) -> DeployedState:
        """Converged (see ``convergence.wait_converged``) and the app's port accepts."""
        return self.state.wait_converged(domain, timeout_s, ready=self.listening(domain),
                                         probed=frozenset({APP_SERVICE}))

    def still_running(self, domain: Domain, since: DeployedState) -> None:
        self.state.still_running(domain, since)

    def listening(self, domain: Domain) -> Readiness:
        """A readiness probe: None once ``127.0.0.1:<CCCI_HTTP_PORT>`` accepts a connection."""
        address = ("127.0.0.1", int(self.base_url(domain).rsplit(":", 1)[1]))

        def probe() -> str | None:
            try:
                with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
                    return None
            except OSError as exc:
                return f"127.0.0.1:{address[1]} does not accept connections ({exc})"

        return probe

    def base_url(self, domain: Domain) -> str:
        port = self.read_env(domain).get("CCCI_HTTP_PORT", "")
        if not port.isdigit():
            raise AppNotFound(
                f"app {domain!r} has no CCCI_HTTP_PORT in {str(self.env_path(domain))!r}; "
                "re-create it with new_app"
            )
        return f"http://127.0.0.1:{port}"

    def service_logs(self, domain: Domain, tail: int) -> dict[str, str]:
        return stack_logs(self.client, domain, tail)

    # --- helpers ----------------------------------------------------------------------

    def _run(
        self,
        argv: list[str],
        *,
        timeout_s: float,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run the docker CLI with a minimal environment; non-zero exit is CommandFailed, a
        slow one WaitTimeout (check the Docker engine)."""
        base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME") or str(self.settings.state_dir),
            "DOCKER_HOST": self.settings.docker_host,
        }
        # Detached: a docker call happens whole or not at all, even when the worker is
        # stopped or killed while it runs (see ccci_tasks.proc).
        proc = run(argv, timeout_s=timeout_s, text=True, cwd=cwd, env={**(env or {}), **base},
                   hint="install the docker CLI", detached=True)
        return proc.stdout
