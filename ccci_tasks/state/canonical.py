"""The canonical registry ``<state>/<recipe>/canonical.json`` (R5.2).

``{recipe, domain, version, commit, status, ts}``: which version of the recipe the data-warm
canonical at ``domain`` holds; ``status`` is ``known-good`` or ``seeding``; ``ts`` is ISO 8601
UTC. Written atomically; a file that cannot be used is a ``RegistryError`` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal, cast

from pydantic import AfterValidator, Field

from ccci_tasks.errors import InvalidInput, RegistryError, StateError
from ccci_tasks.naming import Domain, Recipe
from ccci_tasks.state import records

REGISTRY_FILE: Final = "canonical.json"
Status = Literal["known-good", "seeding"]
STATUSES: Final = ("known-good", "seeding")

# Top-level names under the state root that are never recipes.
RESERVED_NAMES: Final = (
    "apps", "alerts", "runs", "infra", "beat", "abra", "intents", "forge", "notify", "outbox",
    "sweep", "holders", "failpoints",
)
QUARANTINE_FILE: Final = "quarantine.json"

_COMMIT_RE: Final = re.compile(r"[0-9a-f]{7,40}")


def _commit(commit: str | None) -> str | None:
    if commit is not None and not _COMMIT_RE.fullmatch(commit):
        raise InvalidInput(
            f"commit {commit!r} is invalid: expected 7-40 lowercase hex digits or None"
        )
    return commit


class Canonical(records.Record):
    """One recipe's known-good (or being seeded) data-warm canonical."""

    recipe: Recipe
    domain: Domain
    version: records.VersionText
    commit: Annotated[str | None, AfterValidator(_commit)]
    status: Annotated[Status, records.one_of("status", STATUSES)] = "known-good"
    ts: records.UtcText = Field(default_factory=records.now_text)


class Quarantine(records.Record):
    """``<state>/<recipe>/quarantine.json``: why no quick run may use the canonical."""

    recipe: Recipe
    reason: str
    ts: str = Field(default_factory=records.now_text)


def is_recipe_dir_name(name: str) -> bool:
    """True when ``name`` under the state root may be a recipe's folder."""
    if name in RESERVED_NAMES:
        return False
    try:
        Recipe(name)  # a folder read from disk
    except InvalidInput:
        return False
    return True


def recipe_dir(state_dir: Path, recipe: Recipe) -> Path:
    if recipe in RESERVED_NAMES:
        raise InvalidInput(
            f"recipe name {recipe!r} is invalid: {RESERVED_NAMES} are reserved names under the "
            "state root"
        )
    return Path(state_dir) / recipe


def registry_path(state_dir: Path, recipe: Recipe) -> Path:
    return recipe_dir(state_dir, recipe) / REGISTRY_FILE


def _recipes(state_dir: Path) -> list[Recipe]:
    root = Path(state_dir)
    if not root.is_dir():
        return []
    return [Recipe(c.name) for c in root.iterdir() if c.is_dir() and is_recipe_dir_name(c.name)]


REGISTRIES: Final = records.Store(model=Canonical, what="canonical registry",
                                  name_field="recipe", path=registry_path, names=_recipes,
                                  error=RegistryError)


def read_registry(state_dir: Path, recipe: Recipe) -> Canonical | None:
    """The registry of ``recipe``, ``None`` when it has none."""
    return REGISTRIES.read(state_dir, recipe)


def write_registry(state_dir: Path, canonical: Canonical) -> Path:
    """Write the registry atomically."""
    return REGISTRIES.write(state_dir, canonical)


def list_registries(state_dir: Path) -> list[Canonical]:
    """Every recipe's registry under the state root, sorted by recipe."""
    return REGISTRIES.all(state_dir)


def quarantine(state_dir: Path, recipe: Recipe, reason: str) -> None:
    """Mark the canonical unusable: no quick run uses it until a green cold run on latest
    re-seeds it (which clears the mark)."""
    records.write(recipe_dir(state_dir, recipe) / QUARANTINE_FILE,
                  Quarantine(recipe=recipe, reason=reason))


def quarantined(state_dir: Path, recipe: Recipe) -> str | None:
    """Why the canonical is quarantined, or None."""
    path = recipe_dir(state_dir, recipe) / QUARANTINE_FILE
    try:
        found = records.read(path, Quarantine, what="quarantine mark")
    except StateError as exc:
        return str(exc)  # unreadable: quarantined all the same
    return found.reason if found is not None else None


def clear_quarantine(state_dir: Path, recipe: Recipe) -> None:
    (recipe_dir(state_dir, recipe) / QUARANTINE_FILE).unlink(missing_ok=True)


def status_of(value: str) -> Status:
    """Narrow a string to ``Status`` (``InvalidInput`` otherwise)."""
    if value not in STATUSES:
        raise InvalidInput(f"status {value!r} is invalid: expected one of {STATUSES}")
    return cast(Status, value)
