"""Durable intents: what a cut-off step leaves to be finished or undone (DESIGN §6).

Before a step does something that must be finished or undone if it is cut off (deploying
onto a canonical, clearing a volume for a restore, swapping in a new known-good), it writes an
intent record for the resource it changes; the record goes only once the result is verified.
Whoever next touches the resource (a run, a promotion, the janitor) finds the record and
finishes or undoes the change first. One record per resource.

A record names its owner: the run and the fencing token that wrote it (R13.1). Only the
owner changes or clears it (``owner=Owner(run_id, token)``); the janitor after it killed the
owner's processes (``owner=None``), and a run that holds the resource and made sure the
owner is dead (``take_over=True``, see ``lanes.fence.take_over``) may too. Anyone else gets
``IntentOwned`` and nothing changes: a step that woke up after its lease was gone cannot
undo what the new owner recorded. Compare and write happen under one lock.

``<state>/intents/<resource>.json`` = ``{resource, kind, run_id, token, domain, detail, ts}``,
written atomically. ``kind``:

* ``dirty`` - the app's volumes may differ from its known-good snapshot (a run deployed onto
  them, or a restore was cut off): undo = undeploy and restore the snapshot;
* ``promote`` - a new known-good (``detail.version``) is being made from the app's volumes:
  finish = write the registry once the new snapshot is in place, then as ``dirty``;
* ``reconcile`` - a live-warm app is being upgraded (``detail``: from, to, stateful,
  snapshot taken): undo = roll back to ``from`` (its data too, when a snapshot was taken).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field

import ccci_tasks.atomic as atomic
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import Domain, RunId
from ccci_tasks.state import records

INTENTS_DIR: Final = "intents"
LOCK_FILE: Final = ".lock"
Kind = Literal["dirty", "promote", "reconcile"]
KINDS: Final = ("dirty", "promote", "reconcile")
_RESOURCE_RE: Final = re.compile(r"(canon|infra):[a-z0-9][a-z0-9_-]{0,62}")


def validate_intent_resource(resource: str) -> str:
    if not isinstance(resource, str) or not _RESOURCE_RE.fullmatch(resource):
        raise InvalidInput(f"intent resource {resource!r} is invalid: expected canon:<recipe> "
                           "or infra:<app>")
    return resource


class IntentOwned(StateError):
    """An intent record belongs to another run: this one may not change it."""


@dataclass(frozen=True)
class Owner:
    """Who may change an intent record: a run with its fencing token."""

    run_id: RunId
    token: int


class Intent(records.Record):
    resource: Annotated[str, BeforeValidator(validate_intent_resource)]
    kind: Annotated[Kind, records.one_of("intent kind", KINDS)]
    run_id: RunId
    domain: Domain
    detail: Annotated[dict[str, Any], BeforeValidator(lambda v: v or {})] = Field(
        default_factory=dict)
    ts: str = Field(default_factory=records.now_text)
    token: int = Field(default=0, strict=True)

    @property
    def owner(self) -> Owner:
        return Owner(self.run_id, self.token)

    @property
    def name(self) -> str:
        """The app or recipe the resource names."""
        return self.resource.split(":", 1)[1]


def intents_dir(state_dir: Path) -> Path:
    return Path(state_dir) / INTENTS_DIR


def intent_path(state_dir: Path, resource: str) -> Path:
    return intents_dir(state_dir) / f"{validate_intent_resource(resource).replace(':', '-')}.json"


def _check_owner(state_dir: Path, resource: str, owner: Owner | None, take_over: bool,
                 doing: str) -> Intent | None:
    try:
        current = read_intent(state_dir, resource)
    except StateError:
        return None  # an unreadable record is replaced by whoever holds the resource
    if current is None or owner is None or take_over or current.owner == owner:
        return current
    raise IntentOwned(
        f"run {owner.run_id} (token {owner.token}) may not {doing} the intent record of "
        f"{resource}: it belongs to run {current.run_id} (token {current.token}); a step "
        "that lost its lease changes nothing"
    )


def write_intent(state_dir: Path, intent: Intent, *, take_over: bool = False) -> None:
    """Record the intent (atomically) for its owner (``intent.run_id``/``token``). An
    existing record of another owner is replaced only with ``take_over`` (see the module
    docstring); the janitor uses ``janitor_write``."""
    with atomic.file_lock(intents_dir(state_dir) / LOCK_FILE):
        _check_owner(state_dir, intent.resource, intent.owner, take_over, "write")
        records.write(intent_path(state_dir, intent.resource), intent)


def janitor_write(state_dir: Path, intent: Intent) -> None:
    """The janitor, after the kill, rewrites a record (e.g. to note it alerted)."""
    with atomic.file_lock(intents_dir(state_dir) / LOCK_FILE):
        records.write(intent_path(state_dir, intent.resource), intent)


def read_intent(state_dir: Path, resource: str) -> Intent | None:
    """The pending intent on ``resource``; ``StateError`` when the file is unusable (treat the
    resource as dirty)."""
    return records.read(intent_path(state_dir, resource), Intent, what="intent record")


def clear_intent(state_dir: Path, resource: str, *, owner: Owner | None,
                 take_over: bool = False) -> bool:
    """The change is verified done or undone: drop the record. True if there was one.
    ``owner``: the run clearing it (``None``: the janitor, after the kill)."""
    path = intent_path(state_dir, resource)
    with atomic.file_lock(intents_dir(state_dir) / LOCK_FILE):
        _check_owner(state_dir, resource, owner, take_over, "clear")
        try:
            path.unlink()
        except FileNotFoundError:
            return False
    atomic.fsync_dir(path.parent)
    return True


def pending_resources(state_dir: Path) -> list[str]:
    """The resources that have a pending intent (readable or not), sorted."""
    directory = intents_dir(state_dir)
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("."):
            continue
        kind, _, name = path.stem.partition("-")
        resource = f"{kind}:{name}"
        if _RESOURCE_RE.fullmatch(resource):
            found.append(resource)
    return found
