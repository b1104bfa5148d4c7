"""What the abra backend runs, planned by pure functions: names, paths, argument lists, env.

Every outside string (recipe, domain, version, ref) is validated with ``naming`` before any of
these is built; ``platform.abra`` runs them (argument lists only, never a shell).

Command lines (``<abra>`` is ``CCCI_ABRA_BIN``, ``<server>`` is ``CCCI_ABRA_SERVER``)
------------------------------------------------------------------------------------
* new app: ``<abra> app new <recipe> [<version>] --server <server> --domain <domain> --secrets
  --no-input``, then ``CCCI_KIND=``, ``CCCI_RUN=`` and ``CCCI_RECIPE=`` lines are written to
  ``$ABRA_DIR/servers/<server>/<domain>.env`` (abra cannot put ``ccci.*`` labels on objects).
  Skipped when the env file exists (``new_app`` is idempotent).
* deploy a tag (or the latest): ``<abra> app deploy <domain> [<version>] [--force] --no-input
  --no-domain-checks --no-converge-checks``; ``--force`` only when the app is deployed now.
* chaos deploy: first the ref is resolved to a full sha (``RecipeRepo.commit``, in the recipe
  repository ``<CCCI_RECIPES_DIR>/<recipe>`` when there is one, else in the run's checkout)
  and checked out in ``$ABRA_DIR/recipes/<recipe>``::

      git clone --quiet --no-checkout -- <source> <checkout>     (only if the checkout is missing)
      git -C <checkout> fetch --quiet --no-tags -- <source> <sha>  (only if the sha is missing)
      git -C <checkout> switch --quiet --detach --end-of-options <sha>

  then ``<abra> app deploy <domain> --chaos --no-input --no-domain-checks --no-converge-checks``.
* undeploy: ``<abra> app undeploy <domain> --no-input`` (only when something is deployed).

Flags: ``app new --server/--domain/--secrets``, ``app deploy --chaos/--force/
--no-domain-checks``, the global ``--no-input`` and the ``app deploy <domain> [version]`` /
``app undeploy <domain>`` positionals come from the shared spec/coop-cloud.md notes.
(unverified) ``--no-converge-checks`` (``-c``): chosen so ``deploy`` returns once submitted and
``wait_converged`` waits with the recipe's ``DEPLOY_TIMEOUT`` instead of abra's own 300 s.
(unverified) flags after positionals (abra's cobra CLI accepts them interspersed).
(unverified) abra refusing to deploy an already deployed app without ``--force``.
(unverified) ``--no-input`` being accepted by every subcommand used (it is a global flag of
current abra). Check all of these against ``abra app <cmd> --help`` of the abra in use.

Environment: the subprocess gets ``ABRA_DIR``, ``PATH``, ``HOME``, ``GIT_TERMINAL_PROMPT=0``,
``DOCKER_HOST`` = ``CCCI_DOCKER_HOST`` (abra deploys to the engine the system watches), the
worker's ``DOCKER_CONTEXT`` and ``SSH_AUTH_SOCK`` when set (a remote server's docker context,
the ssh agent that reaches it), and the caller's ``extra_env``; nothing else of the worker's
environment. With both set, the docker client takes ``DOCKER_HOST`` over ``DOCKER_CONTEXT``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from ccci_tasks.constants import KINDS
from ccci_tasks.errors import ConfigError, InvalidInput
from ccci_tasks.naming import Domain, Recipe, RunId
from ccci_tasks.platform.base import Kind

__all__ = [
    "ENV_KIND",
    "ENV_RECIPE",
    "ENV_RUN",
    "NO_INPUT",
    "RECIPE_KEYS",
    "AbraLayout",
    "chaos_checkout_plan",
    "deploy_argv",
    "env_file_recipe",
    "new_app_argv",
    "subprocess_env",
    "undeploy_argv",
    "validate_kind",
    "validate_server",
]

NO_INPUT: Final = "--no-input"
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Taken from the worker's environment when set: how abra reaches a remote server.
PASSED_THROUGH: Final = ("DOCKER_CONTEXT", "SSH_AUTH_SOCK")

ENV_KIND: Final = "CCCI_KIND"
ENV_RUN: Final = "CCCI_RUN"
ENV_RECIPE: Final = "CCCI_RECIPE"
# Where an env file names its recipe: ours first, then abra's (newer ``RECIPE``, older ``TYPE``).
RECIPE_KEYS: Final = (ENV_RECIPE, "RECIPE", "TYPE")

_SERVER_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_SHA_RE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# --------------------------------------------------------------------------- names


def validate_server(server: str) -> str:
    if not _SERVER_RE.fullmatch(server) or ".." in server:
        raise ConfigError(
            f"CCCI_ABRA_SERVER {server!r} is invalid: it must be 'default' or a server's "
            "domain name (letters, digits, '.' and '-')"
        )
    return server


def validate_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise InvalidInput(f"kind {kind!r} is invalid: it must be one of {', '.join(KINDS)}")
    return cast(Kind, kind)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class AbraLayout:
    """Where one run's ABRA_DIR and the shared directories are. Pure paths, no I/O."""

    root: Path
    run_id: RunId | None
    server: str

    @property
    def abra_dir(self) -> Path:
        if self.run_id is None:
            return self.root / "shared"
        return self.root / "runs" / self.run_id

    @property
    def shared(self) -> dict[str, Path]:
        """The directories every run shares, by their name inside an ABRA_DIR."""
        return {"servers": self.root / "servers", "catalogue": self.root / "catalogue"}

    @property
    def server_dir(self) -> Path:
        """The shared env-file directory (``$ABRA_DIR/servers/<server>`` resolves here)."""
        return self.root / "servers" / self.server

    def env_file(self, domain: Domain) -> Path:
        return self.server_dir / f"{domain}.env"

    def checkout(self, recipe: Recipe) -> Path:
        return self.abra_dir / "recipes" / recipe


# --------------------------------------------------------------------------- plan: argv


def new_app_argv(
    abra: str, recipe: Recipe, domain: Domain, server: str, version: str | None = None
) -> list[str]:
    """``abra app new <recipe> [<version>] --server S --domain D --secrets --no-input``."""
    positional = [recipe] if version is None else [recipe, version]
    return [abra, "app", "new", *positional, "--server", server, "--domain", domain,
            "--secrets", NO_INPUT]


def deploy_argv(
    abra: str, domain: Domain, version: str | None = None, *, chaos: bool = False,
    force: bool = False,
) -> list[str]:
    """``abra app deploy <domain> [<version>] [--chaos] [--force] --no-input ...``."""
    if chaos and version is not None:
        raise InvalidInput(
            f"deploy of {domain}: give a version or a chaos ref, not both (got {version!r})"
        )
    argv = [abra, "app", "deploy", domain]
    if version is not None:
        argv.append(version)
    if chaos:
        argv.append("--chaos")
    if force:
        argv.append("--force")
    return [*argv, NO_INPUT, "--no-domain-checks", "--no-converge-checks"]


def undeploy_argv(abra: str, domain: Domain) -> list[str]:
    """``abra app undeploy <domain> --no-input`` (keeps volumes)."""
    return [abra, "app", "undeploy", domain, NO_INPUT]


def chaos_checkout_plan(
    source: Path, checkout: Path, sha: str, *, have_checkout: bool, have_commit: bool
) -> list[list[str]]:
    """The git commands that put ``sha`` (a full sha) as a detached HEAD into ``checkout``."""
    if not _SHA_RE.fullmatch(sha):
        raise InvalidInput(f"chaos checkout needs a full lowercase sha, got {sha!r}")
    plan: list[list[str]] = []
    if not have_checkout:
        plan.append(["git", "clone", "--quiet", "--no-checkout", "--", str(source),
                     str(checkout)])
    if have_checkout and not have_commit:
        plan.append(["git", "-C", str(checkout), "fetch", "--quiet", "--no-tags", "--",
                     str(source), sha])
    plan.append(["git", "-C", str(checkout), "switch", "--quiet", "--detach",
                 "--end-of-options", sha])
    return plan


# --------------------------------------------------------------------------- plan: env files


def env_file_recipe(values: Mapping[str, str]) -> str | None:
    """The recipe an env file names (``CCCI_RECIPE``, else abra's ``RECIPE``/``TYPE``)."""
    for key in RECIPE_KEYS:
        value = values.get(key)
        if value:
            return value.split(":", 1)[0]  # abra allows RECIPE=<name>:<version>
    return None


def subprocess_env(
    abra_dir: Path, extra: Mapping[str, str] | None = None,
    parent: Mapping[str, str] | None = None, *, docker_host: str | None = None,
) -> dict[str, str]:
    """The whole environment of an abra/git process: minimal, never the whole worker's.

    ``ABRA_DIR`` and ``DOCKER_HOST`` (when given: ``CCCI_DOCKER_HOST``) win over ``extra``.
    """
    parent = os.environ if parent is None else parent
    env = {
        "PATH": parent.get("PATH") or DEFAULT_PATH,
        "HOME": parent.get("HOME") or str(Path.home()),
        "GIT_TERMINAL_PROMPT": "0",
        **{key: parent[key] for key in PASSED_THROUGH if parent.get(key)},
        **(extra or {}),
    }
    env["ABRA_DIR"] = str(abra_dir)
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    return env
