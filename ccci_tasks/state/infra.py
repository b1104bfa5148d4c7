"""The state of a live-warm app (R2): ``<state>/infra/<app>.json``.

``{app, domain, current, last_good, status, ts}``: the version running (``current``), the
newest version that passed the health gate (``last_good``; ``None`` until one did), and the
outcome of the last reconcile: ``ok``, ``held`` (an upgrade waits for an operator) or
``rolled-back``. ``ts`` is ISO 8601 UTC. Written atomically; a file that cannot be used is a
``RegistryError`` naming it.

A stateful app's pre-upgrade snapshot lives under ``infra_dir(state_dir, app)`` =
``<state>/infra/<app>/`` (``snapshots.snapshot(..., base=infra_dir(...))``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BeforeValidator, Field, model_validator

from ccci_tasks.errors import InvalidInput, RegistryError
from ccci_tasks.naming import Domain, Recipe, validate_version
from ccci_tasks.state import records

__all__ = [
    "STATUSES",
    "InfraState",
    "InfraStatus",
    "infra_dir",
    "infra_path",
    "infra_root",
    "list_infra",
    "read_infra",
    "write_infra",
]

INFRA_DIR: Final = "infra"
InfraStatus = Literal["ok", "held", "rolled-back"]
STATUSES: Final = ("ok", "held", "rolled-back")


def _version_or_none(value: str | None) -> str | None:
    return None if value is None else validate_version(value)


class InfraState(records.Record):
    """What the reconciler last recorded about one live-warm app."""

    app: Recipe
    domain: Domain
    current: records.VersionText
    last_good: Annotated[str | None, BeforeValidator(_version_or_none)]
    status: Annotated[InfraStatus, records.one_of("status", STATUSES)] = "ok"
    ts: records.UtcText = Field(default_factory=records.now_text)

    @model_validator(mode="after")
    def _warm_domain(self) -> InfraState:
        label = "warm-" + self.app.replace("_", "-")
        if self.domain.split(".", 1)[0] != label:
            raise InvalidInput(
                f"domain {self.domain!r} is invalid for live-warm app {self.app!r}: expected "
                f"'{label}.<base-domain>'"
            )
        return self


def infra_root(state_dir: Path) -> Path:
    """``<state>/infra``: the folder of every live-warm app's state."""
    return Path(state_dir) / INFRA_DIR


def infra_path(state_dir: Path, app: Recipe) -> Path:
    """``<state>/infra/<app>.json``."""
    return infra_root(state_dir) / f"{app}.json"


def infra_dir(state_dir: Path, app: Recipe) -> Path:
    """``<state>/infra/<app>``: where the app's pre-upgrade snapshot goes."""
    return infra_root(state_dir) / app


def _apps(state_dir: Path) -> list[Recipe]:
    root = infra_root(state_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("*.json"):
        try:
            found.append(Recipe(path.stem))
        except InvalidInput:
            continue  # not an app's file (a dot file, a stray name)
    return found


STATES: Final = records.Store(model=InfraState, what="live-warm state", name_field="app",
                              path=infra_path, names=_apps, error=RegistryError)


def read_infra(state_dir: Path, app: Recipe) -> InfraState | None:
    """The recorded state of ``app``, ``None`` when it has none."""
    return STATES.read(state_dir, app)


def write_infra(state_dir: Path, state: InfraState) -> Path:
    """Write the state atomically."""
    return STATES.write(state_dir, state)


def list_infra(state_dir: Path) -> list[InfraState]:
    """Every live-warm app's recorded state, sorted by app."""
    return STATES.all(state_dir)
