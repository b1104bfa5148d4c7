"""The canonical as a resource: is it usable, verify it, and finish or undo a cut-off change.

Shared by the lanes that touch a canonical (quick, the cold lane's promotion) and by the
janitor. ``recover`` is the one place that puts a canonical back to its known-good data after
an intent record (``state.intents``) says a change to it did not complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import ccci_tasks.lanes.fence as fence
from ccci_tasks import naming, snapshots
from ccci_tasks.admission import Resource, Slots
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError, RegistryError, SnapshotError, StateError
from ccci_tasks.naming import Recipe
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform.base import Platform
from ccci_tasks.state import canonical, intents, warmsnap

log = logging.getLogger(__name__)

Guard = Callable[[str], None]


@dataclass(frozen=True)
class Usable:
    """What a quick run may use: the registry when it is usable; else why not, and whether
    the canonical is corrupt (the run is refused) or merely absent (it falls back to cold)."""

    registry: canonical.Canonical | None
    why: str = ""
    corrupt: bool = False


def usable(settings: Settings, recipe: Recipe) -> Usable:
    """Cheap checks (no hashing): registry, domain, snapshot manifest, versions agree."""
    state = settings.state_dir
    why_quarantined = canonical.quarantined(state, recipe)
    if why_quarantined is not None:
        return Usable(None, f"canonical of {recipe} is quarantined ({why_quarantined}); the "
                            "next green cold run on latest re-seeds it")
    try:
        registry = canonical.read_registry(state, recipe)
    except RegistryError as exc:
        return Usable(None, f"canonical of {recipe} is corrupt: {exc}", corrupt=True)
    if registry is None:
        return Usable(None, f"no canonical for {recipe}")
    warm = naming.warm_domain(recipe, settings.base_domain)
    if registry.domain != warm:
        return Usable(None, f"canonical of {recipe} is corrupt: its registry names domain "
                            f"{registry.domain!r}, expected {warm!r}", corrupt=True)
    if registry.status != "known-good":
        return Usable(None, f"canonical of {recipe} is {registry.status}, not known-good")
    try:
        manifest = warmsnap.read_current(state, recipe)
    except SnapshotError as exc:
        return Usable(None, f"canonical of {recipe} is corrupt: {exc}", corrupt=True)
    if manifest is None:
        return Usable(None, f"canonical of {recipe} is corrupt: the registry says known-good "
                            f"{registry.version} but there is no snapshot", corrupt=True)
    if manifest.version != registry.version:
        return Usable(None, f"canonical of {recipe} is inconsistent: registry "
                            f"{registry.version}, snapshot {manifest.version}", corrupt=True)
    return Usable(registry)


def quarantine(settings: Settings, recipe: Recipe, reason: str) -> None:
    """Mark the canonical so no quick run uses it, and alert the operators (once)."""
    if canonical.quarantined(settings.state_dir, recipe) is not None:
        return
    canonical.quarantine(settings.state_dir, recipe, reason)
    try:
        write_alert(settings.state_dir, "snapshot-corrupt", recipe,
                    f"canonical of {recipe} is corrupt; quick runs refuse it until a green "
                    "cold run on latest re-seeds it", reason)
    except CcciError as exc:
        log.error("could not write the snapshot-corrupt alert of %s: %s", recipe, exc)


def put_back(settings: Settings, platform: Platform, recipe: Recipe) -> list[str]:
    """The janitor's side, for a canonical no run holds: a cut-off change finished or
    undone (``recover``), then the canonical undeployed if it is still deployed."""
    done = recover(settings, platform, recipe, lambda doing: None)
    warm = naming.warm_domain(recipe, settings.base_domain)
    if platform.deployed(warm).is_deployed:
        platform.undeploy(warm, graceful=False)
    return [done or f"{warm} undeployed"]


def recover(settings: Settings, platform: Platform, recipe: Recipe, guard: Guard,
            owner: intents.Owner | None = None) -> str | None:
    """Finish or undo a pending change of the canonical; None when there is none.

    A ``promote`` whose new snapshot is in place (of its version, and not the one it
    replaces) gets its registry written (finished). Then,
    whatever the change was, the canonical is undeployed and its volumes get the known-good
    snapshot back; with no usable snapshot the half-made canonical is removed. The intent
    record goes only once that is done. ``guard`` is the caller's fence check; ``owner`` the
    run that calls (``None``: the janitor, after the kill). A run that finds another run's
    record takes it over only once that run is dead (``fence.take_over``).
    """
    state = settings.state_dir
    res = Resource.canon(recipe).key
    try:
        intent = intents.read_intent(state, res)
    except StateError as exc:
        log.warning("%s; treating the canonical of %s as changed", exc, recipe)
        intent = None
        unreadable = True
    else:
        unreadable = False
    if intent is None and not unreadable:
        return None
    take_over = owner is None or intent is None or intent.owner != owner
    if owner is not None and intent is not None and intent.owner != owner:
        fence.take_over(settings, Slots.from_settings(settings), intent)
    warm = naming.warm_domain(recipe, settings.base_domain)
    done: list[str] = []
    manifest = None
    try:
        manifest = warmsnap.read_current(state, recipe)
    except SnapshotError as exc:
        log.warning("canonical of %s: %s", recipe, exc)
    if intent is not None and intent.kind == "promote" and manifest is not None \
            and manifest.version == intent.detail.get("version") \
            and manifest.taken_at != intent.detail.get("replaces"):
        guard(f"write the registry of {recipe} at {manifest.version}")
        canonical.write_registry(state, canonical.Canonical(
            recipe=recipe, domain=warm, version=manifest.version,
            commit=intent.detail.get("commit"), status="known-good"))
        canonical.clear_quarantine(state, recipe)
        done.append(f"finished the promotion to {manifest.version}")
    platform.undeploy(warm, graceful=False)
    if manifest is not None and canonical.quarantined(state, recipe) is None:
        snapshots.restore(platform, state, recipe, warm, guard=guard)
        done.append(f"restored known-good {manifest.version} into {warm}")
    else:
        platform.remove(warm)
        done.append(f"removed {warm} (no usable known-good snapshot to restore)")
    guard(f"clear the intent record of {recipe}")
    intents.clear_intent(state, res, owner=owner, take_over=take_over)
    return "; ".join(done)


def mark_dirty(settings: Settings, recipe: Recipe, owner: intents.Owner, guard: Guard, *,
               kind: intents.Kind = "dirty", **detail: str) -> None:
    """Record, before touching it, that the canonical's data may change (after ``guard``,
    the caller's fence check)."""
    warm = naming.warm_domain(recipe, settings.base_domain)
    guard(f"record that the canonical of {recipe} may change ({kind})")
    intents.write_intent(settings.state_dir, intents.Intent(
        resource=Resource.canon(recipe).key, kind=kind, run_id=owner.run_id, domain=warm,
        detail=dict(detail), token=owner.token))
