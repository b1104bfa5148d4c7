"""Drop the warm data of recipes that are no longer enrolled (R5.4): the sweep's prune_stale.

Warm data of a recipe is its folder under the state root (registry + snapshot) and its warm
app ``warm-<recipe>.<base>`` (volumes, env file). Plan, then act: ``plan_prune`` computes
what to drop from observed state as plain data; ``prune_stale`` removes it.

Safety: an enrolled recipe is never touched; reserved folders (alerts, runs, infra, ...) and
names that are no recipe names are never touched; only apps labelled warm whose domain is
exactly the recipe's warm domain are removed; a warm app that is deployed right now is left
alone (a run may be using it) and reported in the log. A missing tests dir or a bad
recipe_meta.py aborts the prune with a ``ConfigError`` instead of pruning everything.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Domain, Recipe, warm_domain
from ccci_tasks.platform.base import AppInfo, Platform
from ccci_tasks.state.canonical import is_recipe_dir_name
from ccci_tasks.state.meta import enrolled_recipes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrunePlan:
    state_dirs: tuple[Path, ...]  # <state>/<recipe> folders to delete
    apps: tuple[Domain, ...]  # warm domains to remove from the platform
    kept_deployed: tuple[str, ...]  # stale warm apps left alone because they are deployed


def _warm_domain_or_none(recipe: str, base_domain: Domain) -> Domain | None:
    try:
        return warm_domain(Recipe(recipe), base_domain)  # as the platform names it
    except InvalidInput:
        return None


def plan_prune(
    state_dir: Path, base_domain: Domain, enrolled: list[str], apps: list[AppInfo]
) -> PrunePlan:
    """What to prune, from the enrolled recipes, the state root and the platform's apps."""
    keep = set(enrolled)
    dirs: list[Path] = []
    root = Path(state_dir)
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (
                child.is_dir()
                and not child.is_symlink()
                and is_recipe_dir_name(child.name)
                and child.name not in keep
            ):
                dirs.append(child)
    remove: list[Domain] = []
    deployed: list[Domain] = []
    for app in sorted(apps, key=lambda a: a.domain):
        if app.kind != "warm" or app.recipe in keep:
            continue
        if app.domain != _warm_domain_or_none(app.recipe, base_domain):
            continue
        (deployed if app.deployed else remove).append(app.domain)
    return PrunePlan(tuple(dirs), tuple(remove), tuple(deployed))


def prune_stale(
    settings: Settings, platform: Platform, held: Collection[str] = ()
) -> list[str]:
    """Remove the warm data of recipes no longer enrolled; return what was removed.

    Items are ``state:<path>`` for a recipe folder and ``app:<domain>`` for a warm app. The
    canonicals of ``held`` (recipes whose canonical a run holds right now) are kept.
    """
    enrolled = enrolled_recipes(settings.tests_dir)
    plan = plan_prune(settings.state_dir, settings.base_domain, [*enrolled, *held],
                      platform.live_apps())
    removed: list[str] = []
    for app in plan.apps:
        platform.remove(app)
        removed.append(f"app:{app}")
    for folder in plan.state_dirs:
        shutil.rmtree(folder)
        removed.append(f"state:{folder}")
    for domain in plan.kept_deployed:
        log.warning("stale warm app %s is deployed right now; left for the next prune", domain)
    if removed:
        log.info("pruned warm data of recipes no longer enrolled: %s", ", ".join(removed))
    return removed
