"""What one swarm deploy hands to ``docker stack deploy``, planned before anything is created.

A deploy exports the recipe at a version tag (or, for a chaos deploy, a commit) into its own
directory, reads the version variables of that tree's ``abra.sh`` (they win over the env file,
as with abra), and checks every compose file of ``COMPOSE_FILE`` (``platform.compose_files``:
secrets the env does not declare, files from outside the recipe, ...): ``plan_stack``. Only
then are the missing secrets created (by the caller) and the files rendered
(``platform.render``: the ccci and abra labels) into ``ccci-rendered.<name>`` beside them, for
one ``docker stack deploy -c a -c b``, which merges them: ``write_stack``.

``docker stack deploy`` gets a minimal environment: the env file, the abra.sh versions, and
``DOMAIN``, ``STACK_NAME``, ``CCCI_HTTP_PORT`` (the caller adds ``PATH``/``HOME``/
``DOCKER_HOST``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from ccci_tasks import constants
from ccci_tasks.atomic import write_text
from ccci_tasks.errors import AppNotFound, InvalidInput
from ccci_tasks.naming import Domain, Recipe, Ref, validate_version
from ccci_tasks.platform.compose_files import ComposeFile, NeededSecret, check_stack, load_compose
from ccci_tasks.platform.recipe_env import HTTP_PORT_KEY, RecipeEnv, read_abra_sh
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.platform.render import declared_version, monitor_defaults, render_compose
from ccci_tasks.proc import run
from ccci_tasks.versions import is_version
from ccci_tasks.versions import latest as latest_version

__all__ = ["StackPlan", "newest_tag_reachable", "plan_stack", "resolve_ref", "resolve_version",
           "write_stack"]

GIT_TIMEOUT_S: Final = 60.0
RENDERED_PREFIX: Final = "ccci-rendered."
ABRA_SH: Final = "abra.sh"


# --------------------------------------------------------------------------- what to deploy


def resolve_version(repo: RecipeRepo, version: str | None) -> str:
    """``version`` if the recipe has that tag, else (None) its latest; ``AppNotFound``."""
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


def resolve_ref(repo: RecipeRepo, version: str | None,
                chaos_ref: Ref | None) -> tuple[str, str | None]:
    """What to check out: ``(tag, None)``, or for a chaos deploy ``(full sha, short sha)``."""
    if chaos_ref is None:
        return resolve_version(repo, version), None
    ref = repo.commit(chaos_ref)
    return ref, repo.short_sha(ref)


def newest_tag_reachable(repo: RecipeRepo, commit: str) -> str | None:
    """The newest version tag ``commit`` contains (a chaos deploy's version label)."""
    argv = ["git", "-C", str(repo.path), "tag", "--merged", commit]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    proc = run(argv, timeout_s=GIT_TIMEOUT_S, text=True, env=env,
               hint="install git on the worker")
    return latest_version(t for t in proc.stdout.split() if is_version(t))


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class StackPlan:
    """A checked deploy of one exported recipe tree: nothing created yet."""

    stack: str
    env: dict[str, str]  # what docker stack deploy interpolates
    composes: tuple[ComposeFile, ...]
    needed: list[NeededSecret]  # the secrets the compose files use
    ccci_labels: dict[str, str]  # on every service and top-level object
    app_labels: dict[str, str]  # on the app service: the abra version labels


def _load_composes(tree: Path, declared: RecipeEnv, domain: Domain) -> list[ComposeFile]:
    where = f"the env file of {domain}, line {declared.compose_line}" \
        if declared.compose_line else f"the env file of {domain} (default COMPOSE_FILE)"
    composes = []
    for name in declared.compose_files:
        try:
            composes.append(load_compose(tree, name))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
    return composes


def plan_stack(tree: Path, declared: RecipeEnv, *, domain: Domain, stack: str, recipe: Recipe,
               ref: str, short: str | None,
               newest_tag: Callable[[], str | None]) -> StackPlan:
    """Check the exported ``tree`` (at ``ref``; ``short``: a chaos deploy's short sha) and
    say what to deploy. ``newest_tag`` names a chaos deploy's version when its compose file
    declares none."""
    env = declared.values
    abra_sh = tree / ABRA_SH
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
    composes = _load_composes(tree, declared, domain)
    needed = check_stack(composes, env=deploy_env, declared=declared, stack=stack, tree=tree)
    if short is not None:
        label_version = declared_version(composes[0].data, stack, deploy_env) or newest_tag()
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
    return StackPlan(stack, deploy_env, tuple(composes), needed, ccci_labels, app_labels)


def write_stack(plan: StackPlan, tree: Path) -> list[str]:
    """Render every compose file of ``plan`` into ``tree``; the ``docker stack deploy``
    argument list that deploys them (run it in ``tree``)."""
    argv = ["docker", "stack", "deploy", "--resolve-image", "never", "--prune"]
    monitors = monitor_defaults([c.data for c in plan.composes])
    for compose, set_monitor in zip(plan.composes, monitors, strict=True):
        rendered = render_compose(
            compose.data, stack=plan.stack, env=plan.env, ccci_labels=plan.ccci_labels,
            app_labels=plan.app_labels, set_monitor=set_monitor,
        )
        out = tree / f"{RENDERED_PREFIX}{compose.name}"
        write_text(out, yaml.safe_dump(rendered, sort_keys=False, default_flow_style=False))
        argv += ["-c", out.name]
    argv.append(plan.stack)
    return argv
