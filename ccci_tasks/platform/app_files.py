"""The swarm backend's files of each app, under ``<state_dir>/apps/``.

* ``<domain>.env``: the app's env file (``KEY=VALUE``), made by ``create_env`` from the recipe's
  ``.env.sample`` (read strictly, ``platform.recipe_env``) plus ``RECIPE``, ``DOMAIN``,
  ``STACK_NAME``, ``CCCI_HTTP_PORT`` and every other ``CCCI_<NAME>_PORT`` of the sample (each
  a free loopback port allocated once and then kept), ``CCCI_KIND`` and ``CCCI_RUN``;
* ``<domain>.secrets``: the values of the Docker secrets generated for the app (mode 0600,
  ``platform.app_secrets``);
* ``<domain>.d/<n>-<version|sha>/``: one directory per deploy (``platform.stack_deploy``);
  the newest ``KEEP_DEPLOY_DIRS`` are kept for debugging.

Env files are created under one file lock (``.lock``), so two apps created at once never get
the same port.
"""

from __future__ import annotations

import random
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, cast

from ccci_tasks import constants
from ccci_tasks.atomic import file_lock, write_text
from ccci_tasks.errors import AppNotFound, InvalidInput, PlatformError
from ccci_tasks.naming import (
    Domain,
    Recipe,
    RunHex,
    stack_name,
)
from ccci_tasks.platform.base import AppInfo, Kind
from ccci_tasks.platform.envfile import parse_env, set_keys
from ccci_tasks.platform.recipe_env import RecipeEnv, read_recipe_env

__all__ = ["KEEP_DEPLOY_DIRS", "PORT_RANGE", "AppFiles"]

KEEP_DEPLOY_DIRS: Final = 3
PORT_RANGE: Final = (20000, 32000)  # below Linux's ephemeral range (32768-60999)

# The sample an env file starts from: its text and what it declares.
Sample = Callable[[], tuple[str, RecipeEnv]]


class AppFiles:
    """The files of the apps under ``apps_dir``."""

    def __init__(self, apps_dir: Path) -> None:
        self.apps_dir = apps_dir

    def env_path(self, domain: Domain) -> Path:
        return self.apps_dir / f"{domain}.env"

    def deploy_root(self, domain: Domain) -> Path:
        return self.apps_dir / f"{domain}.d"

    def secrets_path(self, domain: Domain) -> Path:
        return self.apps_dir / f"{domain}.secrets"

    def recipe_env(self, domain: Domain) -> RecipeEnv:
        """The app's env file, read strictly; ``AppNotFound`` when the app was never created."""
        path = self.env_path(domain)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AppNotFound(
                f"app {domain!r} has no env file at {str(path)!r}; create it with new_app first"
            ) from None
        return read_recipe_env(text, f"the env file of {domain} ({path})")

    # --- creating -----------------------------------------------------------------------

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

    def create_env(self, recipe: Recipe, domain: Domain, kind: Kind, run: RunHex | None,
                   sample: Sample) -> None:
        """Create (or refresh) the app's env file, keeping its ports once allocated.

        A new app's env file starts from ``sample()`` (read under the lock); an existing one
        must belong to ``recipe``.
        """
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
                text, declared = sample()
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

    # --- listing and removing ---------------------------------------------------------

    def env_apps(self) -> list[AppInfo]:
        """The apps whose env file names a valid domain, recipe, kind and run (not deployed:
        the caller knows better)."""
        apps = []
        for path in sorted(self.apps_dir.glob("*.env")) if self.apps_dir.is_dir() else []:
            try:
                env = parse_env(path.read_text(encoding="utf-8"))
                domain = Domain(env.get("DOMAIN", ""))
                recipe = Recipe(env.get("RECIPE", ""))
                found = env.get("CCCI_RUN") or None
                run = None if found is None else RunHex(found)
            except (OSError, ValueError):
                continue
            kind = env.get("CCCI_KIND", "")
            if kind not in constants.KINDS:
                continue
            apps.append(AppInfo(domain=domain, stack=stack_name(domain), recipe=recipe,
                                kind=cast(Kind, kind), run=run, deployed=False))
        return apps

    def prune_deploy_dirs(self, domain: Domain) -> None:
        """Keep the newest ``KEEP_DEPLOY_DIRS`` deploy directories of the app."""
        root = self.deploy_root(domain)
        dirs = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: int(p.name.split("-", 1)[0]) if p.name.split("-", 1)[0].isdigit() else 0,
        )
        for old in dirs[:-KEEP_DEPLOY_DIRS]:
            shutil.rmtree(old, ignore_errors=True)

    def forget(self, domain: Domain) -> None:
        """Delete the app's env file and deploy directories."""
        self.env_path(domain).unlink(missing_ok=True)
        shutil.rmtree(self.deploy_root(domain), ignore_errors=True)
