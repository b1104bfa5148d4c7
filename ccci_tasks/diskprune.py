"""The disk-gated prune (SPEC R9.2): free the host's disk of what nobody uses any more.

Plan, then act. ``observe`` reads the facts (disk use, services, images, containers, build
cache); ``plan`` decides from them alone (pure); ``act`` removes exactly what was planned.
``run`` does all three and returns the result of ``ccci prune``; ``render_text`` prints it.
The engine is read and changed only through the ``Platform`` (its engine-wide methods), the
disk measured here.

The gates (all must be open, else nothing at all is removed):

* the disk holding ``CCCI_PRUNE_PATH`` is used at or above ``CCCI_PRUNE_THRESHOLD_PCT``;
* no run of this system is in flight (the caller names them, from the run slots);
* no service on the engine is converging (any stack: running != desired replicas, or an update
  that has not settled), since a deploy in progress may be about to use an image. Three
  kinds of service off their desired state are stuck, not converging: they are named in the
  reason and do not hold the prune back forever:

  - one the orchestrator will never start: settled, no task of it wanted up
    (``ServiceState.wanted``), unchanged for ``IDLE_GRACE`` (its task exited 0 under an
    on-failure restart policy, e.g. when the engine was stopped, and a restart of the engine
    touched the service but starts nothing);
  - one whose tasks crash-loop (``CRASH_LOOP_FAILURES`` tasks failed or rejected since its
    spec last changed that count by the start-order rule of ``platform.startorder``, the rule
    ``wait_converged`` fails a deploy by): its restarts change its tasks all the time, yet
    it converges to nothing. An app restarting while its database boots is converging, not
    crash-looping, and holds the prune back like any deploy;
  - one with no task or spec change for ``STUCK_AFTER``.

What goes (the disk is the host's, so engine-wide), each older than ``CCCI_PRUNE_MIN_AGE_H``:

* dangling images (no tag) that no container uses, by creation time;
* stopped containers (``exited``, ``dead``, ``created``; never ``running``, ``paused`` or
  ``restarting``), by finish time (a container never started: by creation time);
* build cache records not in use, not shared with an image and not internal, by last use.

Never a tagged image, never an image a container uses, never ``--all``, never a volume
(containers are removed without their anonymous volumes). Images and containers are removed
one by one by id; an image is checked again right before its removal (still untagged, still
unused) and removed without ``force`` and without its untagged parents (``noprune``), so the
engine itself refuses an image that became used. Build cache has no per-record removal that
fits, so it is pruned by the engine with an ``until`` filter of the same age (reporting the
bytes the engine reclaimed), and only when the plan found some.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from ccci_tasks.config import Settings
from ccci_tasks.errors import ConfigError
from ccci_tasks.platform import get_platform
from ccci_tasks.platform.base import (
    CRASH_LOOP_FAILURES,
    STOPPED_STATES,
    BuildCacheFact,
    ContainerFact,
    ImageFact,
    Platform,
    ServiceState,
)

__all__ = [
    "IDLE_GRACE",
    "STUCK_AFTER",
    "BuildCacheFact",
    "ContainerFact",
    "Facts",
    "ImageFact",
    "PrunePlan",
    "Removal",
    "act",
    "disk_used_pct",
    "observe",
    "plan",
    "render_text",
    "run",
]

log = logging.getLogger(__name__)

BUILD_CACHE_SKIPPED_TYPES: Final = ("internal", "frontend")  # kept by a prune without --all
# A service off its desired state with no task or spec change for this long is stuck, not
# converging (no deploy in progress holds an image for half an hour without a task change).
STUCK_AFTER: Final = timedelta(minutes=30)
# A settled service off its desired state with no task the orchestrator still wants up will
# never be started (its last task ended and the restart policy says no more; a restart that
# waits out its delay keeps a task wanted, in state ``ready``). It is stuck once neither it
# nor its tasks changed for this long (a service just created has its tasks a moment later;
# an engine restart touches every service).
IDLE_GRACE: Final = timedelta(seconds=60)


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Facts:
    disk_used_pct: float
    threshold_pct: int
    in_flight: tuple[str, ...]  # run ids of this system holding a run slot
    services: tuple[ServiceState, ...]  # every service on the engine
    images: tuple[ImageFact, ...]
    containers: tuple[ContainerFact, ...]
    build_cache: tuple[BuildCacheFact, ...]
    build_cache_unsupported: str | None = None  # why this engine cannot prune by age
    # service name -> the newest change of its tasks or spec; a service missing here is
    # taken as changing now (converging while off its desired state)
    service_changed: Mapping[str, datetime] = field(default_factory=dict)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PrunePlan:
    allowed: bool
    why: str
    min_age_h: float
    images: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    build_cache_ids: tuple[str, ...] = ()
    build_cache_bytes: int = 0
    build_cache_skipped: str | None = None


def _off_state(service: ServiceState) -> str | None:
    """How ``service`` is off its desired state, or ``None`` when it is settled."""
    if service.running != service.desired:
        return f"{service.name} ({service.running}/{service.desired} running)"
    if not service.settled:
        return f"{service.name} (update {service.update_state})"
    return None


def _gates(facts: Facts, now: datetime) -> tuple[bool, str]:
    refused = []
    disk = f"disk {facts.disk_used_pct:g}% used"
    if facts.disk_used_pct < facts.threshold_pct:
        refused.append(f"{disk}, below the threshold of {facts.threshold_pct}%")
    if facts.in_flight:
        refused.append(f"run(s) in flight: {', '.join(facts.in_flight)}")
    converging, stuck = [], []
    for service in facts.services:
        off = _off_state(service)
        if off is None:
            continue
        changed = facts.service_changed.get(service.name)
        if service.failed_tasks >= CRASH_LOOP_FAILURES:  # counted since its spec changed
            stuck.append(f"{off[:-1]}, crash-looping: {service.failed_tasks} tasks failed "
                         "since its last update)")
        elif (service.wanted == 0 and service.settled
              and (changed is None or now - changed > IDLE_GRACE)):
            stuck.append(f"{off[:-1]}, nothing will start it: no task is wanted running)")
        elif changed is not None and now - changed > STUCK_AFTER:
            minutes = int((now - changed).total_seconds() // 60)
            stuck.append(f"{off[:-1]}, no change for {minutes} min)")
        else:
            converging.append(off)
    if converging:
        refused.append(f"service(s) converging: {', '.join(converging)}")
    why = "; ".join(refused) or (
        f"{disk}, at or above the threshold of {facts.threshold_pct}%; no run in flight; "
        "no service converging"
    )
    if stuck:
        why += f" (stuck, not waited for: {', '.join(stuck)})"
    return not refused, why


def plan(facts: Facts, min_age_h: float, now: datetime) -> PrunePlan:
    """What the prune may remove now: nothing unless every gate is open (pure)."""
    allowed, why = _gates(facts, now)
    if not allowed:
        return PrunePlan(allowed=False, why=why, min_age_h=min_age_h)
    min_age = timedelta(hours=min_age_h)

    def old(moment: datetime) -> bool:
        return now - moment > min_age

    images = tuple(i.id for i in facts.images if i.dangling and not i.used and old(i.created))
    containers = tuple(
        c.id
        for c in facts.containers
        if c.state in STOPPED_STATES and old(max(c.created, c.finished_at or c.created))
    )
    cache = [
        b
        for b in facts.build_cache
        if facts.build_cache_unsupported is None
        and not b.in_use
        and not b.shared
        and b.kind not in BUILD_CACHE_SKIPPED_TYPES
        and old(b.last_used or b.created)
    ]
    return PrunePlan(
        allowed=True,
        why=why,
        min_age_h=min_age_h,
        images=images,
        containers=containers,
        build_cache_ids=tuple(b.id for b in cache),
        build_cache_bytes=sum(b.size_bytes for b in cache),
        build_cache_skipped=facts.build_cache_unsupported,
    )


# --------------------------------------------------------------------------- observe


def disk_used_pct(path: Path) -> float:
    """Percent of the disk holding ``path`` in use, as ``df`` counts it (one decimal).

    ``df`` divides by used + available (blocks reserved for root count as neither), so a
    disk that ``df`` shows full is 100% here too.
    """
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        raise ConfigError(
            f"CCCI_PRUNE_PATH={path} cannot be measured ({exc}); set it to a path on the disk "
            "that fills up (e.g. / or /var/lib/docker)"
        ) from exc
    total = usage.used + usage.free
    return round(100.0 * usage.used / total, 1) if total else 0.0


def observe(settings: Settings, platform: Platform, in_flight: Sequence[str]) -> Facts:
    """The facts ``plan`` decides on. ``in_flight``: run ids holding a slot, from the caller."""
    disk = disk_used_pct(settings.prune_path)
    engine = platform.engine_objects()
    return Facts(
        disk_used_pct=disk,
        threshold_pct=settings.prune_threshold_pct,
        in_flight=tuple(in_flight),
        services=engine.services,
        images=engine.images,
        containers=engine.containers,
        build_cache=engine.build_cache,
        build_cache_unsupported=engine.build_cache_unsupported,
        service_changed=engine.service_changed,
    )


# --------------------------------------------------------------------------- act


@dataclass(frozen=True)
class Removal:
    """What a prune removed (or, for a dry run, would remove)."""

    images: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    build_cache_bytes: int = 0
    build_cache_skipped: str | None = None
    skipped: tuple[dict[str, str], ...] = ()  # {kind, id, reason} of what was left, and why

    @classmethod
    def planned(cls, the_plan: PrunePlan) -> Removal:
        return cls(
            images=the_plan.images,
            containers=the_plan.containers,
            build_cache_bytes=the_plan.build_cache_bytes,
            build_cache_skipped=the_plan.build_cache_skipped,
        )


def act(platform: Platform, the_plan: PrunePlan) -> Removal:
    """Remove exactly what ``the_plan`` lists (nothing when it is not allowed)."""
    if not the_plan.allowed:
        return Removal()
    skipped: list[dict[str, str]] = []
    containers = []
    for cid in the_plan.containers:
        reason = platform.remove_stopped_container(cid)
        if reason is None:
            containers.append(cid)
        else:
            skipped.append({"kind": "container", "id": cid, "reason": reason})
    images = []
    for image_id in the_plan.images:
        reason = platform.remove_dangling_image(image_id)
        if reason is None:
            images.append(image_id)
        else:
            skipped.append({"kind": "image", "id": image_id, "reason": reason})
    cache_bytes, cache_skipped = 0, the_plan.build_cache_skipped
    if the_plan.build_cache_ids:
        cache_bytes, cache_skipped = platform.prune_build_cache(the_plan.min_age_h)
    return Removal(
        images=tuple(images),
        containers=tuple(containers),
        build_cache_bytes=cache_bytes,
        build_cache_skipped=cache_skipped,
        skipped=tuple(skipped),
    )


# --------------------------------------------------------------------------- run


def run(
    settings: Settings,
    in_flight: Sequence[str],
    *,
    dry_run: bool,
    platform: Platform | None = None,
) -> dict[str, Any]:
    """Observe, plan and (unless ``dry_run``) act; the result ``ccci prune --json`` prints.

    ``{allowed, why, disk_used_pct, threshold_pct, removed | would_remove: {images,
    containers, build_cache_bytes, build_cache_skipped}, skipped}``. Raises ``PlatformError``
    when Docker fails or cannot be reached, ``ConfigError`` for an unusable CCCI_PRUNE_PATH.
    Without ``platform`` it uses the configured one and lets go of its connection after.
    """
    used = get_platform(settings) if platform is None else platform
    try:
        facts = observe(settings, used, in_flight)
        the_plan = plan(facts, settings.prune_min_age_h, datetime.now(UTC))
        removal = Removal.planned(the_plan) if dry_run else act(used, the_plan)
    finally:
        if platform is None:
            used.close()
    if not dry_run:
        log.info(
            "disk prune %s (%s): removed %d image(s), %d container(s), %d bytes of build cache",
            "ran" if the_plan.allowed else "refused",
            the_plan.why,
            len(removal.images),
            len(removal.containers),
            removal.build_cache_bytes,
        )
    return {
        "allowed": the_plan.allowed,
        "why": the_plan.why,
        "disk_used_pct": facts.disk_used_pct,
        "threshold_pct": facts.threshold_pct,
        "would_remove" if dry_run else "removed": {
            "images": list(removal.images),
            "containers": list(removal.containers),
            "build_cache_bytes": removal.build_cache_bytes,
            "build_cache_skipped": removal.build_cache_skipped,
        },
        "skipped": list(removal.skipped),
    }


def _short(object_id: str) -> str:
    return object_id.removeprefix("sha256:")[:12]


def render_text(result: dict[str, Any]) -> str:
    """A few lines for a person: the verdict and why, then what went (or would go)."""
    dry_run = "would_remove" in result
    gone = result["would_remove"] if dry_run else result["removed"]
    verb = "would remove" if dry_run else "removed"
    lines = [f"prune {'allowed' if result['allowed'] else 'refused'}: {result['why']}"]
    if result["allowed"]:
        lines.append(
            f"{verb} {len(gone['images'])} image(s), {len(gone['containers'])} container(s), "
            f"{gone['build_cache_bytes']} bytes of build cache"
        )
        lines += [f"  image {_short(i)}" for i in gone["images"]]
        lines += [f"  container {_short(c)}" for c in gone["containers"]]
        if gone.get("build_cache_skipped"):
            lines.append(f"  build cache skipped: {gone['build_cache_skipped']}")
    lines += [
        f"  kept {s['kind']} {_short(s['id'])}: {s['reason']}" for s in result.get("skipped", [])
    ]
    return "\n".join(lines)
