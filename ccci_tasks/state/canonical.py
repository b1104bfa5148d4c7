"""The canonical registry ``<state>/<recipe>/canonical.json`` (R5.2).

``{recipe, domain, version, commit, status, ts}``: which version of the recipe the data-warm
canonical at ``domain`` holds; ``status`` is ``known-good`` or ``seeding``; ``ts`` is ISO 8601
UTC. Written atomically; a file that cannot be used is a ``RegistryError`` naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import ccci_tasks.atomic as atomic
from ccci_tasks.errors import InvalidInput, RegistryError
from ccci_tasks.naming import validate_domain, validate_recipe, validate_version
from ccci_tasks.state.clock import iso, parse_iso, utc_now

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
_FIELDS: Final = ("recipe", "domain", "version", "commit", "status", "ts")


@dataclass(frozen=True)
class Canonical:
    """One recipe's known-good (or being seeded) data-warm canonical."""

    recipe: str
    domain: str
    version: str
    commit: str | None
    status: Status = "known-good"
    ts: str = field(default_factory=lambda: iso(utc_now()))

    def validate(self) -> Canonical:
        """Return self if every field is well formed, else raise ``InvalidInput``."""
        validate_recipe(self.recipe)
        validate_domain(self.domain)
        validate_version(self.version)
        if self.commit is not None and not (
            isinstance(self.commit, str) and _COMMIT_RE.fullmatch(self.commit)
        ):
            raise InvalidInput(
                f"commit {self.commit!r} is invalid: expected 7-40 lowercase hex digits or None"
            )
        if self.status not in STATUSES:
            raise InvalidInput(f"status {self.status!r} is invalid: expected one of {STATUSES}")
        try:
            parse_iso(self.ts)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"ts {self.ts!r} is invalid: expected ISO 8601 UTC") from exc
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_recipe_dir_name(name: str) -> bool:
    """True when ``name`` under the state root may be a recipe's folder."""
    if name in RESERVED_NAMES:
        return False
    try:
        validate_recipe(name)
    except InvalidInput:
        return False
    return True


def recipe_dir(state_dir: Path, recipe: str) -> Path:
    name = validate_recipe(recipe)
    if name in RESERVED_NAMES:
        raise InvalidInput(
            f"recipe name {recipe!r} is invalid: {RESERVED_NAMES} are reserved names under the "
            "state root"
        )
    return Path(state_dir) / name


def registry_path(state_dir: Path, recipe: str) -> Path:
    return recipe_dir(state_dir, recipe) / REGISTRY_FILE


def read_registry(state_dir: Path, recipe: str) -> Canonical | None:
    """The registry of ``recipe``, ``None`` when it has none."""
    path = registry_path(state_dir, recipe)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: unreadable canonical registry: {exc}") from exc
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    missing = [key for key in _FIELDS if key not in raw]
    if missing:
        raise RegistryError(f"{path}: missing field(s) {', '.join(missing)}")
    try:
        canonical = Canonical(**{key: raw[key] for key in _FIELDS}).validate()
    except InvalidInput as exc:
        raise RegistryError(f"{path}: {exc}") from exc
    if canonical.recipe != recipe:
        raise RegistryError(
            f"{path}: registry names recipe {canonical.recipe!r}, expected {recipe!r}"
        )
    return canonical


def write_registry(state_dir: Path, canonical: Canonical) -> Path:
    """Write the registry atomically (validated first: a bad value writes nothing)."""
    canonical.validate()
    path = registry_path(state_dir, canonical.recipe)
    atomic.write_json(path, canonical.to_json())
    return path


def list_registries(state_dir: Path) -> list[Canonical]:
    """Every recipe's registry under the state root, sorted by recipe."""
    root = Path(state_dir)
    if not root.is_dir():
        return []
    found: list[Canonical] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and is_recipe_dir_name(child.name):
            canonical = read_registry(root, child.name)
            if canonical is not None:
                found.append(canonical)
    return found


def quarantine(state_dir: Path, recipe: str, reason: str) -> None:
    """Mark the canonical unusable: no quick run uses it until a green cold run on latest
    re-seeds it (which clears the mark)."""
    atomic.write_json(recipe_dir(state_dir, recipe) / QUARANTINE_FILE,
                      {"recipe": recipe, "reason": reason, "ts": iso(utc_now())})


def quarantined(state_dir: Path, recipe: str) -> str | None:
    """Why the canonical is quarantined, or None."""
    path = recipe_dir(state_dir, recipe) / QUARANTINE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{path} is unreadable"
    return str(raw.get("reason") if isinstance(raw, dict) else raw)


def clear_quarantine(state_dir: Path, recipe: str) -> None:
    (recipe_dir(state_dir, recipe) / QUARANTINE_FILE).unlink(missing_ok=True)


def status_of(value: str) -> Status:
    """Narrow a string to ``Status`` (``InvalidInput`` otherwise)."""
    if value not in STATUSES:
        raise InvalidInput(f"status {value!r} is invalid: expected one of {STATUSES}")
    return cast(Status, value)
