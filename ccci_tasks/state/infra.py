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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import ccci_tasks.atomic as atomic
from ccci_tasks.errors import InvalidInput, RegistryError
from ccci_tasks.naming import validate_domain, validate_recipe, validate_version
from ccci_tasks.state.clock import iso, parse_iso, utc_now

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
_FIELDS: Final = ("app", "domain", "current", "last_good", "status", "ts")


@dataclass(frozen=True)
class InfraState:
    """What the reconciler last recorded about one live-warm app."""

    app: str
    domain: str
    current: str
    last_good: str | None
    status: InfraStatus = "ok"
    ts: str = field(default_factory=lambda: iso(utc_now()))

    def validate(self) -> InfraState:
        """Return self if every field is well formed, else raise ``InvalidInput``."""
        validate_recipe(self.app)
        validate_domain(self.domain)
        label = "warm-" + self.app.replace("_", "-")
        if self.domain.split(".", 1)[0] != label:
            raise InvalidInput(
                f"domain {self.domain!r} is invalid for live-warm app {self.app!r}: expected "
                f"'{label}.<base-domain>'"
            )
        validate_version(self.current)
        if self.last_good is not None:
            validate_version(self.last_good)
        if self.status not in STATUSES:
            raise InvalidInput(f"status {self.status!r} is invalid: expected one of {STATUSES}")
        try:
            parse_iso(self.ts)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"ts {self.ts!r} is invalid: expected ISO 8601 UTC") from exc
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def infra_root(state_dir: Path) -> Path:
    """``<state>/infra``: the folder of every live-warm app's state."""
    return Path(state_dir) / INFRA_DIR


def infra_path(state_dir: Path, app: str) -> Path:
    """``<state>/infra/<app>.json``."""
    return infra_root(state_dir) / f"{validate_recipe(app)}.json"


def infra_dir(state_dir: Path, app: str) -> Path:
    """``<state>/infra/<app>``: where the app's pre-upgrade snapshot goes."""
    return infra_root(state_dir) / validate_recipe(app)


def read_infra(state_dir: Path, app: str) -> InfraState | None:
    """The recorded state of ``app``, ``None`` when it has none."""
    path = infra_path(state_dir, app)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: unreadable live-warm state: {exc}") from exc
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    missing = [key for key in _FIELDS if key not in raw]
    if missing:
        raise RegistryError(f"{path}: missing field(s) {', '.join(missing)}")
    try:
        state = InfraState(**{key: raw[key] for key in _FIELDS}).validate()
    except (InvalidInput, TypeError) as exc:
        raise RegistryError(f"{path}: {exc}") from exc
    if state.app != app:
        raise RegistryError(f"{path}: the file names app {state.app!r}, expected {app!r}")
    return state


def write_infra(state_dir: Path, state: InfraState) -> Path:
    """Write the state atomically (validated first: a bad value writes nothing)."""
    state.validate()
    path = infra_path(state_dir, state.app)
    atomic.write_json(path, state.to_json())
    return path


def _is_app_name(name: str) -> bool:
    try:
        validate_recipe(name)
    except InvalidInput:
        return False
    return True


def list_infra(state_dir: Path) -> list[InfraState]:
    """Every live-warm app's recorded state, sorted by app."""
    root = infra_root(state_dir)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("*.json")):
        if path.name.startswith(".") or not _is_app_name(path.stem):
            continue
        state = read_infra(state_dir, path.stem)
        if state is not None:
            found.append(state)
    return found
