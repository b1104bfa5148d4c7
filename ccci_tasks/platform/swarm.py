"""The local swarm backend: the docker SDK plus ``docker stack deploy`` (argument lists only).

Per app (``domain``) it keeps, under ``<state_dir>/apps/``:

* ``<domain>.env``: the app's env file (``KEY=VALUE``), made by ``new_app`` from the recipe's
  ``.env.sample`` (read strictly, ``platform.recipe_env``) plus ``RECIPE``, ``DOMAIN``,
  ``STACK_NAME``, ``CCCI_HTTP_PORT`` and every other ``CCCI_<NAME>_PORT`` of the sample (each
  a free loopback port allocated once and then kept), ``CCCI_KIND`` and ``CCCI_RUN``;
* ``<domain>.secrets``: the values of the Docker secrets generated for the app (mode 0600,
  ``platform.app_secrets``), read back by ``secret_values`` for the redaction of run output;
* ``<domain>.d/<n>-<version|sha>/``: one directory per deploy with the exported recipe tree
  (``RecipeRepo.checkout``, the shared repository is never touched, so two runs of one recipe
  never race) and the rendered compose file(s) ``ccci-rendered.<name>``. The newest
  ``KEEP_DEPLOY_DIRS`` are kept for debugging.

A deploy reads the version variables of the deployed tree's ``abra.sh`` (they win over the env
file, as with abra), checks every compose file of ``COMPOSE_FILE`` (``platform.compose_files``:
secrets the env does not declare, files from outside the recipe, ...) before anything is
created, creates the secrets the compose files use that do not exist yet, renders the files
(``platform.render``: the ccci and abra labels) and passes them all to one ``docker stack
deploy -c a -c b``, which merges them. ``docker stack deploy`` gets a minimal environment:
``PATH``/``HOME``/``DOCKER_HOST``, the env file, the abra.sh versions, and ``DOMAIN``,
``STACK_NAME``, ``CCCI_HTTP_PORT``.

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
import random
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, cast

import docker
import yaml

from ccci_tasks import constants
from ccci_tasks.atomic import file_lock, write_text
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, InvalidInput, PlatformError
from ccci_tasks.naming import (
    stack_name,
    validate_domain,
    validate_recipe,
    validate_ref,
    validate_run_hex,
    validate_version,
)
from ccci_tasks.platform.app_secrets import AppSecrets
from ccci_tasks.platform.base import AppInfo, DeployedState, Kind, StopReport, VolumeInfo
from ccci_tasks.platform.compose_files import ComposeFile, check_stack, load_compose
from ccci_tasks.platform.docker_state import DockerState, Readiness, docker_client
from ccci_tasks.platform.envfile import interpolate, parse_env, set_keys
from ccci_tasks.platform.recipe_env import (
    HTTP_PORT_KEY,
    RecipeEnv,
    read_abra_sh,
    read_recipe_env,
)
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.platform.render import (
    APP_SERVICE,
    UPDATE_MONITOR,
    declared_version,
    monitor_defaults,
    render_compose,
)
from ccci_tasks.platform.service_logs import stack_logs
from ccci_tasks.platform.stops import stop_watched
from ccci_tasks.proc import run
from ccci_tasks.versions import is_version
from ccci_tasks.versions import latest as latest_version

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

KEEP_DEPLOY_DIRS: Final = 3
PORT_RANGE: Final = (20000, 32000)  # below Linux's ephemeral range (32768-60999)
STACK_DEPLOY_TIMEOUT_S: Final = 300.0
STACK_RM_TIMEOUT_S: Final = 120.0
UNDEPLOY_TIMEOUT_S: Final = 120.0
GIT_TIMEOUT_S: Final = 60.0
RENDERED_PREFIX: Final = "ccci-rendered."
ABRA_SH: Final = "abra.sh"
ENV_SAMPLE: Final = ".env.sample"
CONNECT_TIMEOUT_S: Final = 0.5


# --------------------------------------------------------------------------- platform


class SwarmPlatform:
    """``Platform`` on the local Docker engine in swarm mode."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._state: DockerState | None = None

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

    @property
    def apps_dir(self) -> Path:
        return self.settings.state_dir / "apps"

    def env_path(self, domain: str) -> Path:
        return self.apps_dir / f"{validate_domain(domain)}.env"

    def deploy_root(self, domain: str) -> Path:
        return self.apps_dir / f"{validate_domain(domain)}.d"

    def repo(self, recipe: str) -> RecipeRepo:
        return RecipeRepo(self.settings.recipes_dir / validate_recipe(recipe), recipe)

    def has_config(self, domain: str) -> bool:
        return self.env_path(domain).is_file()

    def secrets_path(self, domain: str) -> Path:
        return self.apps_dir / f"{validate_domain(domain)}.secrets"

    def app_secrets(self, domain: str) -> AppSecrets:
        return AppSecrets(self.client, self.secrets_path(domain))

    def read_env(self, domain: str) -> dict[str, str]:
        """The app's env file; ``AppNotFound`` when the app was never created."""
        return self._recipe_env(domain).values

    def _recipe_env(self, domain: str) -> RecipeEnv:
        path = self.env_path(domain)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AppNotFound(
                f"app {domain!r} has no env file at {str(path)!r}; create it with new_app first"
            ) from None
        return read_recipe_env(text, f"the env file of {domain} ({path})")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise env-file creation (port allocation) across processes."""
        with file_lock(self.apps_dir / ".lock"):
            yield

    def _ports_in_use(self) -> set[int]:
        """Every port an app's env file holds (``CCCI_<NAME>_PORT``)."""
        used = set()
        for path in self.apps_dir.glob("*.env"):
            try:
                values = parse_env(path.read_text(encoding="utf-8"))
            except OSError:
                continue
            used |= {int(v) for k, v in values.items()
                     if k.startswith("CCCI_") and k.endswith("_PORT") and v.isdigit()}
        return used

    def _allocate_port(self, taken: set[int] | None = None) -> int:
        """A loopback port no app holds (nor ``taken``) and nothing listens on right now."""
        used = self._ports_in_use() | (taken or set())
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(*PORT_RANGE)
            if port in used:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise PlatformError(
            f"no free loopback port in {PORT_RANGE[0]}-{PORT_RANGE[1]} after 200 tries; "
            f"remove stale app env files under {self.apps_dir}"
        )

    def _resolve_version(self, repo: RecipeRepo, version: str | None) -> str:
        available = repo.versions()
        if version is None:
            latest = latest_version(available)
            if latest is None:
                raise AppNotFound(
                    f"recipe {repo.recipe!r} has no version tags in {str(repo.path)!r}; "
                    "tag a release (e.g. 1.0.0+1.0) or deploy a commit with chaos_ref"
                )
            return latest
        validate_version(version)
        if version not in available:
            raise AppNotFound(
                f"recipe {repo.recipe!r} has no version {version!r}; available: "
                f"{', '.join(available) or 'none'}"
            )
        return version

    def _newest_tag_reachable(self, repo: RecipeRepo, commit: str) -> str | None:
        argv = ["git", "-C", str(repo.path), "tag", "--merged", commit]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        proc = run(argv, timeout_s=GIT_TIMEOUT_S, text=True, env=env,
                   hint="install git on the worker")
        return latest_version(t for t in proc.stdout.split() if is_version(t))

    # --- Platform ---------------------------------------------------------------------

    def new_app(
        self, recipe: str, domain: str, version: str | None = None, *, kind: Kind, run: str | None
    ) -> AppInfo:
        """Create (or refresh) the app's env file, keeping its ports once allocated.

        A new app's env file is the recipe's ``.env.sample`` at ``version``, read strictly:
        a malformed line, or a ``COMPOSE_FILE`` naming a file the recipe does not have at
        that version, is refused (naming the file and line) before anything is written.
        """
        validate_recipe(recipe)
        validate_domain(domain)
        if kind not in constants.KINDS:
            raise InvalidInput(f"app kind {kind!r} is invalid; use one of {constants.KINDS}")
        if run is not None:
            validate_run_hex(run)
        path = self.env_path(domain)
        with self._lock():
            if path.exists():
                text = path.read_text(encoding="utf-8")
                declared = read_recipe_env(text, f"the env file of {domain} ({path})")
                if declared.values.get("RECIPE", recipe) != recipe:
                    raise InvalidInput(
                        f"domain {domain!r} already belongs to recipe "
                        f"{declared.values['RECIPE']!r}, not {recipe!r}; remove that app "
                        "first or pick another domain"
                    )
            else:
                repo = self.repo(recipe)
                ref = self._resolve_version(repo, version)
                text = repo.file_at(ref, ENV_SAMPLE) or ""
                declared = read_recipe_env(text, f"{recipe} {ref}: {ENV_SAMPLE}")
                for name in declared.compose_files:
                    if repo.file_at(ref, name) is None:
                        raise InvalidInput(
                            f"{recipe} {ref}: {ENV_SAMPLE} line {declared.compose_line}: "
                            f"COMPOSE_FILE names {name}, which the recipe does not have")
            values = {
                "RECIPE": recipe,
                "DOMAIN": domain,
                "STACK_NAME": stack_name(domain),
                "CCCI_KIND": kind,
                "CCCI_RUN": run or "",
            }
            taken: set[int] = set()
            for key in declared.port_keys:
                port = declared.values.get(key, "") if path.exists() else ""
                if not port.isdigit():
                    port = str(self._allocate_port(taken))
                taken.add(int(port))
                values[key] = port
            write_text(path, set_keys(text, values))
        return AppInfo(
            domain=domain,
            stack=stack_name(domain),
            recipe=recipe,
            kind=kind,
            run=run,
            deployed=self.state.deployed(domain).is_deployed,
        )

    def deploy(
        self, domain: str, version: str | None = None, chaos_ref: str | None = None
    ) -> DeployedState:
        """Deploy a version tag (None: latest) or, with ``chaos_ref``, that commit as it is.

        Everything is checked before anything is created (see the module docstring); then
        the missing secrets are created and the stack deployed.
        """
        declared = self._recipe_env(domain)
        env = declared.values
        recipe = validate_recipe(env.get("RECIPE", ""))
        stack = stack_name(domain)
        repo = self.repo(recipe)
        short: str | None = None
        if chaos_ref is not None:
            if not is_version(chaos_ref):
                validate_ref(chaos_ref)
            ref = repo.commit(chaos_ref)
            short = repo.short_sha(ref)
            slug = short
        else:
            ref = self._resolve_version(repo, version)
            slug = ref
        root = self.deploy_root(domain)
        dest = root / f"{time.time_ns()}-{slug}"
        repo.checkout(ref, dest)
        abra_sh = dest / ABRA_SH
        versions = (read_abra_sh(abra_sh.read_text(encoding="utf-8"),
                                 f"{recipe} {short or ref}: {ABRA_SH}")
                    if abra_sh.is_file() else {})
        deploy_env = {
            **env,
            **versions,
            "DOMAIN": domain,
            "STACK_NAME": stack,
            HTTP_PORT_KEY: env.get(HTTP_PORT_KEY, ""),
        }
        composes = self._load_composes(dest, declared, domain)
        needed = check_stack(composes, env=deploy_env, declared=declared, stack=stack,
                             tree=dest)
        if short is not None:
            label_version = declared_version(composes[0].data, stack, deploy_env)
            label_version = label_version or self._newest_tag_reachable(repo, ref)
        else:
            label_version = ref
        app_labels = {constants.version_label(stack): label_version or "unknown"}
        if short is not None:
            app_labels[constants.chaos_version_label(stack)] = short
        ccci_labels = {
            constants.LABEL_KIND: env.get("CCCI_KIND") or "cold",
            constants.LABEL_RECIPE: recipe,
            constants.LABEL_DOMAIN: domain,
        }
        if env.get("CCCI_RUN"):
            ccci_labels[constants.LABEL_RUN] = env["CCCI_RUN"]

        self.app_secrets(domain).ensure(needed, ccci_labels)
        argv = ["docker", "stack", "deploy", "--resolve-image", "never", "--prune"]
        monitors = monitor_defaults([c.data for c in composes])
        for compose, set_monitor in zip(composes, monitors, strict=True):
            rendered = render_compose(
                compose.data, stack=stack, env=deploy_env, ccci_labels=ccci_labels,
                app_labels=app_labels, set_monitor=set_monitor,
            )
            out = dest / f"{RENDERED_PREFIX}{compose.name}"
            write_text(out, yaml.safe_dump(rendered, sort_keys=False, default_flow_style=False))
            argv += ["-c", out.name]
        argv.append(stack)
        self._run(argv, cwd=dest, env=deploy_env, timeout_s=STACK_DEPLOY_TIMEOUT_S)
        self._prune_deploy_dirs(root)
        return self.deployed(domain)

    def _load_composes(self, tree: Path, declared: RecipeEnv, domain: str) -> list[ComposeFile]:
        where = f"the env file of {domain}, line {declared.compose_line}" \
            if declared.compose_line else f"the env file of {domain} (default COMPOSE_FILE)"
        composes = []
        for name in declared.compose_files:
            try:
                composes.append(load_compose(tree, name))
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {exc}") from None
        return composes

    def undeploy(self, domain: str, *, graceful: bool = True) -> StopReport:
        """``docker stack rm``, then wait until services and containers are gone.

        Graceful: each container gets its stop signal and stop grace period, and the report
        says whether each exited by itself. Not graceful: the containers are killed at once
        (SIGKILL) and removed.
        """
        stack = stack_name(validate_domain(domain))

        def stack_rm() -> None:
            self._run(["docker", "stack", "rm", stack], timeout_s=STACK_RM_TIMEOUT_S)

        if graceful:
            return stop_watched(self.state, domain, stack_rm, UNDEPLOY_TIMEOUT_S)
        stack_rm()
        self.state.kill_containers(domain)
        self.state.wait_undeployed(domain, UNDEPLOY_TIMEOUT_S)
        return StopReport(graceful=False)

    def remove(self, domain: str) -> None:
        """Undeploy without a graceful stop (the data goes next), then delete volumes,
        secrets (with their values), the env file and the deploy dirs."""
        self.undeploy(domain, graceful=False)
        self.state.remove_volumes(domain)
        self.state.remove_secrets(domain)
        self.app_secrets(domain).forget()
        self.env_path(domain).unlink(missing_ok=True)
        shutil.rmtree(self.deploy_root(domain), ignore_errors=True)

    def secret_values(self, domain: str) -> list[str]:
        """The values of the app's generated secrets (from its 0600 file)."""
        return sorted(self.app_secrets(domain).values().values())

    def volumes(self, domain: str) -> list[VolumeInfo]:
        return self.state.volumes(domain)

    def deployed(self, domain: str) -> DeployedState:
        return self.state.deployed(domain)

    def live_apps(self) -> list[AppInfo]:
        """Apps with ccci-labelled services or volumes, plus apps with an env file."""
        apps = {a.domain: a for a in self.state.labelled_apps()}
        for path in sorted(self.apps_dir.glob("*.env")) if self.apps_dir.is_dir() else []:
            try:
                env = parse_env(path.read_text(encoding="utf-8"))
                domain = validate_domain(env.get("DOMAIN", ""))
                recipe = validate_recipe(env.get("RECIPE", ""))
                run = env.get("CCCI_RUN") or None
                if run is not None:
                    validate_run_hex(run)
            except (OSError, ValueError):
                continue
            kind = env.get("CCCI_KIND", "")
            if domain in apps or kind not in constants.KINDS:
                continue
            apps[domain] = AppInfo(
                domain=domain,
                stack=stack_name(domain),
                recipe=recipe,
                kind=cast(Kind, kind),
                run=run,
                deployed=False,
            )
        return [apps[d] for d in sorted(apps)]

    def wait_converged(self, domain: str, timeout_s: float) -> DeployedState:
        """Converged (see ``DockerState.wait_converged``) and the app's port accepts."""
        return self.state.wait_converged(domain, timeout_s, ready=self.listening(domain),
                                         probed=frozenset({APP_SERVICE}))

    def still_running(self, domain: str, since: DeployedState) -> None:
        self.state.still_running(validate_domain(domain), since)

    def listening(self, domain: str) -> Readiness:
        """A readiness probe: None once ``127.0.0.1:<CCCI_HTTP_PORT>`` accepts a connection."""
        address = ("127.0.0.1", int(self.base_url(domain).rsplit(":", 1)[1]))

        def probe() -> str | None:
            try:
                with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
                    return None
            except OSError as exc:
                return f"127.0.0.1:{address[1]} does not accept connections ({exc})"

        return probe

    def base_url(self, domain: str) -> str:
        port = self.read_env(domain).get("CCCI_HTTP_PORT", "")
        if not port.isdigit():
            raise AppNotFound(
                f"app {domain!r} has no CCCI_HTTP_PORT in {str(self.env_path(domain))!r}; "
                "re-create it with new_app"
            )
        return f"http://127.0.0.1:{port}"

    def service_logs(self, domain: str, tail: int) -> dict[str, str]:
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

    def _prune_deploy_dirs(self, root: Path) -> None:
        dirs = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: int(p.name.split("-", 1)[0]) if p.name.split("-", 1)[0].isdigit() else 0,
        )
        for old in dirs[:-KEEP_DEPLOY_DIRS]:
            shutil.rmtree(old, ignore_errors=True)
