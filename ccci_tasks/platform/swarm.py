"""The local swarm backend: the docker SDK plus ``docker stack deploy`` (argument lists only).

Per app (``domain``) it keeps, under ``<state_dir>/apps/``:

* ``<domain>.env``: the app's env file (``KEY=VALUE``), made by ``new_app`` from the recipe's
  ``.env.sample`` plus ``RECIPE``, ``DOMAIN``, ``STACK_NAME``, ``CCCI_HTTP_PORT`` (a free
  loopback port allocated once and then kept), ``CCCI_KIND`` and ``CCCI_RUN``;
* ``<domain>.d/<n>-<version|sha>/``: one directory per deploy with the exported recipe tree
  (``RecipeRepo.checkout``, the shared repository is never touched, so two runs of one recipe
  never race) and the rendered compose file(s) ``ccci-rendered.<name>``. The newest
  ``KEEP_DEPLOY_DIRS`` are kept for debugging.

Rendering adds the labels the rest of the system relies on: ``ccci.kind``/``ccci.run``/
``ccci.recipe``/``ccci.domain`` on every service (service and container labels) and every
top-level volume, network, secret and config the stack creates; ``coop-cloud.<stack>.version``
and, for a chaos deploy, ``coop-cloud.<stack>.chaos-version`` (the short sha) on the ``app``
service. Everything else (``${VAR}`` interpolation included) is left to ``docker stack deploy``,
which gets a minimal environment: ``PATH``/``HOME``/``DOCKER_HOST``, the env file, and
``DOMAIN``, ``STACK_NAME``, ``CCCI_HTTP_PORT``.

Rendering also sets ``deploy.update_config.monitor`` to ``UPDATE_MONITOR`` on every service
whose recipe does not set it. Swarm's default (5 s) keeps an update ``updating`` for that long
after the new task runs, only to watch for a failure; ``wait_converged`` watches for failures
itself (events, crash-loop counting, ``still_running``), so the default is dead time on every
upgrade. A recipe that sets its own monitor keeps it.

The app is up when its loopback port accepts a TCP connection: ``wait_converged`` waits for
that too (the recipe contract says the app serves HTTP on ``127.0.0.1:${CCCI_HTTP_PORT}``), so
a fresh task that dies before it serves is seen crash-looping instead of passing for converged.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, cast

import docker
import yaml

from ccci_tasks import constants
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
from ccci_tasks.platform.base import AppInfo, DeployedState, Kind, VolumeInfo
from ccci_tasks.platform.docker_state import DockerState, Readiness, docker_client
from ccci_tasks.platform.envfile import parse_env, set_keys
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.platform.service_logs import stack_logs
from ccci_tasks.proc import run
from ccci_tasks.state.atomic import file_lock, write_text
from ccci_tasks.versions import is_version
from ccci_tasks.versions import latest as latest_version

__all__ = [
    "APP_SERVICE",
    "KEEP_DEPLOY_DIRS",
    "PORT_RANGE",
    "UPDATE_MONITOR",
    "SwarmPlatform",
    "interpolate",
    "render_compose",
]

APP_SERVICE: Final = "app"
KEEP_DEPLOY_DIRS: Final = 3
PORT_RANGE: Final = (20000, 32000)  # below Linux's ephemeral range (32768-60999)
STACK_DEPLOY_TIMEOUT_S: Final = 300.0
STACK_RM_TIMEOUT_S: Final = 120.0
UNDEPLOY_TIMEOUT_S: Final = 120.0
GIT_TIMEOUT_S: Final = 60.0
DEFAULT_COMPOSE_FILE: Final = "compose.yml"
RENDERED_PREFIX: Final = "ccci-rendered."
UPDATE_MONITOR: Final = "1ms"  # see the module docstring
CONNECT_TIMEOUT_S: Final = 0.5

_COMPOSE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.ya?ml")
_VAR_RE: Final = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


# --------------------------------------------------------------------------- env files


# --------------------------------------------------------------------------- compose


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``.

    ``${VAR:?err}``/``${VAR?err}`` give ``""`` when unset (docker reports the error itself).
    """

    def repl(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        value = env.get(name)
        op = match.group("op") or ""
        if op == ":-" and not value:
            return interpolate(match.group("arg"), env)
        if op == "-" and value is None:
            return interpolate(match.group("arg"), env)
        return value or ""

    return _VAR_RE.sub(repl, text)


def _label_items(raw: Any) -> list[tuple[str, str]]:
    """Compose labels (a list of ``k=v`` or a mapping) as ``(key, value)`` pairs."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [(str(k), "" if v is None else str(v)) for k, v in raw.items()]
    if isinstance(raw, list):
        items = []
        for entry in raw:
            key, _, value = str(entry).partition("=")
            items.append((key, value))
        return items
    raise InvalidInput(f"compose labels must be a list or a mapping, got {raw!r}")


def _merge_labels(raw: Any, ours: dict[str, str], env: dict[str, str]) -> list[str]:
    """Existing labels (minus the keys we set) followed by ours, as ``k=v`` strings.

    The list form keeps ``${VAR}`` in keys working: docker interpolates list entries whole.
    """
    kept = [
        f"{k}={v}" for k, v in _label_items(raw) if interpolate(k, env) not in ours
    ]
    return kept + [f"{k}={v}" for k, v in ours.items()]


def declared_version(compose: dict[str, Any], stack: str, env: dict[str, str]) -> str | None:
    """The ``coop-cloud.<stack>.version`` the compose's ``app`` service declares, if any."""
    services = compose.get("services") or {}
    app = services.get(APP_SERVICE) or {}
    deploy = app.get("deploy") or {}
    wanted = constants.version_label(stack)
    for key, value in _label_items(deploy.get("labels")):
        if interpolate(key, env) == wanted:
            return interpolate(value, env).strip() or None
    return None


def render_compose(
    compose: dict[str, Any],
    *,
    stack: str,
    env: dict[str, str],
    ccci_labels: dict[str, str],
    app_labels: dict[str, str],
) -> dict[str, Any]:
    """A copy of ``compose`` with the ccci labels everywhere and ``app_labels`` on ``app``."""
    out = dict(compose)
    services = {}
    for name, raw_service in (compose.get("services") or {}).items():
        service = dict(raw_service or {})
        deploy = dict(service.get("deploy") or {})
        ours = dict(ccci_labels)
        if name == APP_SERVICE:
            ours.update(app_labels)
        deploy["labels"] = _merge_labels(deploy.get("labels"), ours, env)
        update = dict(deploy.get("update_config") or {})
        update.setdefault("monitor", UPDATE_MONITOR)
        deploy["update_config"] = update
        service["deploy"] = deploy
        service["labels"] = _merge_labels(service.get("labels"), ccci_labels, env)
        services[name] = service
    out["services"] = services
    for section in ("volumes", "networks", "secrets", "configs"):
        objects = compose.get(section)
        if not isinstance(objects, dict):
            continue
        rendered = {}
        for name, raw_obj in objects.items():
            obj = dict(raw_obj or {})
            if not obj.get("external"):
                obj["labels"] = _merge_labels(obj.get("labels"), ccci_labels, env)
            rendered[name] = obj
        out[section] = rendered
    return out


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

    def read_env(self, domain: str) -> dict[str, str]:
        """The app's env file; ``AppNotFound`` when the app was never created."""
        path = self.env_path(domain)
        try:
            return parse_env(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AppNotFound(
                f"app {domain!r} has no env file at {str(path)!r}; create it with new_app first"
            ) from None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise env-file creation (port allocation) across processes."""
        with file_lock(self.apps_dir / ".lock"):
            yield

    def _ports_in_use(self) -> set[int]:
        used = set()
        for path in self.apps_dir.glob("*.env"):
            try:
                port = parse_env(path.read_text(encoding="utf-8")).get("CCCI_HTTP_PORT", "")
            except OSError:
                continue
            if port.isdigit():
                used.add(int(port))
        return used

    def _allocate_port(self) -> int:
        """A loopback port no other app holds and nothing listens on right now."""
        used = self._ports_in_use()
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
        """Create (or refresh) the app's env file, keeping its port once allocated."""
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
                current = parse_env(text)
                if current.get("RECIPE", recipe) != recipe:
                    raise InvalidInput(
                        f"domain {domain!r} already belongs to recipe {current['RECIPE']!r}, "
                        f"not {recipe!r}; remove that app first or pick another domain"
                    )
                port = current.get("CCCI_HTTP_PORT", "")
                sample = text
            else:
                repo = self.repo(recipe)
                ref = self._resolve_version(repo, version)
                sample = repo.file_at(ref, ".env.sample") or ""
                port = ""
            if not port.isdigit():
                port = str(self._allocate_port())
            values = {
                "RECIPE": recipe,
                "DOMAIN": domain,
                "STACK_NAME": stack_name(domain),
                "CCCI_HTTP_PORT": port,
                "CCCI_KIND": kind,
                "CCCI_RUN": run or "",
            }
            write_text(path, set_keys(sample, values))
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
        """Deploy a version tag (None: latest) or, with ``chaos_ref``, that commit as it is."""
        env = self.read_env(domain)
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

        deploy_env = {
            **env,
            "DOMAIN": domain,
            "STACK_NAME": stack,
            "CCCI_HTTP_PORT": env.get("CCCI_HTTP_PORT", ""),
        }
        names = [n for n in env.get("COMPOSE_FILE", DEFAULT_COMPOSE_FILE).split(":") if n]
        composes = [(name, self._load_compose(dest, name)) for name in names]
        if short is not None:
            label_version = declared_version(composes[0][1], stack, deploy_env)
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

        argv = ["docker", "stack", "deploy", "--resolve-image", "never", "--prune"]
        for name, compose in composes:
            rendered = render_compose(
                compose, stack=stack, env=deploy_env, ccci_labels=ccci_labels,
                app_labels=app_labels,
            )
            out = dest / f"{RENDERED_PREFIX}{name}"
            write_text(out, yaml.safe_dump(rendered, sort_keys=False, default_flow_style=False))
            argv += ["-c", out.name]
        argv.append(stack)
        self._run(argv, cwd=dest, env=deploy_env, timeout_s=STACK_DEPLOY_TIMEOUT_S)
        self._prune_deploy_dirs(root)
        return self.deployed(domain)

    def undeploy(self, domain: str, *, graceful: bool = True) -> None:
        """``docker stack rm``, then wait until services and containers are gone.

        Graceful: each container gets its stop signal and stop grace period. Not graceful:
        the containers are killed at once (SIGKILL) and removed.
        """
        stack = stack_name(validate_domain(domain))
        self._run(["docker", "stack", "rm", stack], timeout_s=STACK_RM_TIMEOUT_S)
        if graceful:
            self.state.stop_orphan_containers(domain)
        else:
            self.state.kill_containers(domain)
        self.state.wait_undeployed(domain, UNDEPLOY_TIMEOUT_S)

    def remove(self, domain: str) -> None:
        """Undeploy without a graceful stop (the data goes next), then delete volumes,
        secrets, the env file and the deploy dirs."""
        self.undeploy(domain, graceful=False)
        self.state.remove_volumes(domain)
        self.state.remove_secrets(domain)
        self.env_path(domain).unlink(missing_ok=True)
        shutil.rmtree(self.deploy_root(domain), ignore_errors=True)

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

    def secret_values(self, domain: str) -> list[str]:
        return []

    # --- helpers ----------------------------------------------------------------------

    def _load_compose(self, tree: Path, name: str) -> dict[str, Any]:
        if not _COMPOSE_NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"COMPOSE_FILE entry {name!r} is invalid: give file names such as "
                "'compose.yml:compose.smtp.yml' from the recipe's top directory"
            )
        path = tree / name
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AppNotFound(
                f"the recipe tree {str(tree)!r} has no {name}; check COMPOSE_FILE and the ref"
            ) from None
        except yaml.YAMLError as exc:
            raise PlatformError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict) or not isinstance(loaded.get("services"), dict):
            raise PlatformError(f"{path} is no compose file: it has no 'services' mapping")
        return cast(dict[str, Any], loaded)

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
