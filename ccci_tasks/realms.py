"""Per-run Keycloak realms ``<parent>-<6hex>`` on the warm keycloak (R3), and their reaper.

* ``create_realm``/``delete_realm``: what a run does at its start and end (idempotent).
* ``plan_reap``: pure. Which realms are orphans: every realm of the per-run shape (whatever its
  parent) whose run hex is not live. ``master`` and every other shape are kept, with a reason.
* ``reap``: one list call, the plan, then one delete per orphan (nothing with ``dry_run``).

Which runs are live (leases, queued runs, live apps) is the caller's business: pass the set,
or a callable returning it, which ``reap`` calls *after* listing the realms, so that a run
that starts (and creates its realm) between the two is seen as live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ccci_tasks import naming
from ccci_tasks.config import Settings
from ccci_tasks.errors import KeycloakError
from ccci_tasks.keycloak import MASTER_REALM, KeycloakAdmin, per_run_realm

__all__ = ["KeptRealm", "ReapPlan", "create_realm", "delete_realm", "plan_reap", "reap"]

log = logging.getLogger(__name__)

LiveHexes = Collection[str] | Callable[[], Collection[str]]


class KeptRealm(TypedDict):
    realm: str
    why: str


@dataclass(frozen=True)
class ReapPlan:
    """The realms to delete (orphaned per-run realms) and those kept, each with a reason."""

    deleted: list[str] = field(default_factory=list)
    kept: list[KeptRealm] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"deleted": list(self.deleted), "kept": [dict(k) for k in self.kept]}


def create_realm(settings: Settings, realm: str) -> None:
    """Create the per-run realm on the warm keycloak (idempotent: an existing one is fine)."""
    per_run_realm(realm)
    with KeycloakAdmin.from_settings(settings) as admin:
        admin.create_realm(realm)


def delete_realm(settings: Settings, realm: str) -> None:
    """Delete the per-run realm from the warm keycloak (idempotent: a missing one is fine)."""
    per_run_realm(realm)
    with KeycloakAdmin.from_settings(settings) as admin:
        admin.delete_realm(realm)


def _why_kept(realm: str, live: Collection[str]) -> str | None:
    """Why ``realm`` must stay, or ``None`` when it is an orphaned per-run realm."""
    if realm == MASTER_REALM:
        return "master is Keycloak's admin realm: never touched"
    parsed = naming.parse_realm(realm)
    if parsed is None:
        return "not a per-run realm <parent>-<6hex>: never touched"
    run_hex = parsed[1]
    if run_hex in live:
        return f"run {run_hex} is live"
    return None


def plan_reap(realms: Iterable[str], live_hexes: Collection[str]) -> ReapPlan:
    """Split ``realms`` into orphans to delete and realms to keep (each once, in order)."""
    live = frozenset(live_hexes)
    plan = ReapPlan()
    for realm in dict.fromkeys(realms):
        why = _why_kept(realm, live)
        if why is None:
            plan.deleted.append(realm)
        else:
            plan.kept.append(KeptRealm(realm=realm, why=why))
    return plan


def reap(admin: KeycloakAdmin, live_hexes: LiveHexes, *, dry_run: bool) -> dict[str, Any]:
    """Delete orphaned per-run realms; ``{"deleted": [...], "kept": [{"realm", "why"}]}``.

    One list call. With ``dry_run`` nothing is deleted: ``deleted`` lists what would go and
    ``"dry_run": true`` is added. A delete that fails raises ``KeycloakError`` saying how many
    realms were deleted before it.
    """
    realms = admin.list_realms()
    live = live_hexes() if callable(live_hexes) else live_hexes
    plan = plan_reap(realms, live)
    result = plan.to_json()
    if dry_run:
        result["dry_run"] = True
        return result
    for done, realm in enumerate(plan.deleted):
        try:
            admin.delete_realm(realm)
        except KeycloakError as exc:
            raise KeycloakError(
                f"realm reap stopped after deleting {done} of {len(plan.deleted)} orphaned "
                f"realm(s): {exc}"
            ) from exc
    if plan.deleted:
        log.info("reaped %d orphaned realm(s); kept %d", len(plan.deleted), len(plan.kept))
    return result
