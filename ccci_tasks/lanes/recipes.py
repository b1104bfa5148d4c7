"""The recipe side of a request, checked once at the edge: name, ref, repository, CI config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ccci_tasks.admission import Resource
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, InvalidInput
from ccci_tasks.naming import Recipe, Ref
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.state.meta import RecipeMeta, load_meta


def recipe_repo(settings: Settings, recipe: Recipe) -> RecipeRepo:
    """The recipe's repository, or ``InvalidInput`` naming the recipe when there is none."""
    path = settings.recipes_dir / recipe
    if not (path / ".git").exists():
        raise InvalidInput(
            f"unknown recipe {recipe!r}: no git repository at {path}; "
            "check the name or add the recipe to CCCI_RECIPES_DIR"
        )
    return RecipeRepo(path, recipe)


@dataclass(frozen=True)
class Checked:
    """A recipe request that passed every check: the names are valid, the repository
    exists, the ref names a commit (or latest has a tag), the CI config reads."""

    recipe: Recipe
    ref: Ref | None
    repo: RecipeRepo
    meta: RecipeMeta
    latest: str | None


def check_request(settings: Settings, recipe_text: Any, ref_text: Any) -> Checked:
    """Parse a (recipe, ref) request, the edge of every entry task: ``InvalidInput`` /
    ``ConfigError`` name the bad value."""
    if not isinstance(recipe_text, str):
        raise InvalidInput(f"recipe {recipe_text!r} is not a string")
    if ref_text is not None and not isinstance(ref_text, str):
        raise InvalidInput(f"ref {ref_text!r} is not a string")
    recipe = Recipe(recipe_text)
    ref = None if ref_text is None else Ref(ref_text)
    repo = recipe_repo(settings, recipe)
    if ref is not None:
        try:
            repo.commit(ref)  # the ref must name a commit of the recipe's repository
        except AppNotFound as exc:
            raise InvalidInput(str(exc)) from exc
    latest = repo.latest()
    if ref is None and latest is None:
        raise InvalidInput(f"recipe {recipe!r} has no version tags: nothing to test as latest")
    meta = load_meta(settings.tests_dir, recipe)
    return Checked(recipe, ref, repo, meta, latest)


def check_entry(settings: Settings, request: Mapping[str, Any]) -> None:
    """A command's check of a (recipe, ref) request before anything is enqueued."""
    check_request(settings, request.get("recipe"), request.get("ref"))


def dep_resources(settings: Settings, deps: Iterable[str]) -> tuple[Resource, ...]:
    """A run shares each live-warm app its recipe depends on (DEPS) with the other runs,
    and waits while that app is being reconciled."""
    infra = set(settings.infra_app_list())
    return tuple(Resource.infra(dep, exclusive=False) for dep in deps if dep in infra)
