"""The disk-gated prune (SPEC R9.2): free the host's disk of what nobody uses any more.

Plan, then act. ``observe`` reads the facts (disk use, services, images, containers, build
cache); ``plan`` decides from them alone (pure); ``act`` removes exactly what was planned.
``run`` does all three and returns the result of ``ccci prune``; ``render_text`` prints it.

The gates (all must be open, else nothing at all is removed):

* the disk holding ``CCCI_PRUNE_PATH`` is used at or above ``CCCI_PRUNE_THRESHOLD_PCT``;
* no run of this system is in flight (the caller names them, from the run slots);
* no service on the engine is converging (any stack: running != desired replicas, or an update
  that has not settled), since a deploy in progress may be about to use an image.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import docker
from docker.errors import APIError, InvalidVersion, NotFound
from docker.utils import version_lt

from ccci_tasks.config import Settings
from ccci_tasks.errors import ConfigError
from ccci_tasks.platform.base import ServiceState
from ccci_tasks.platform.docker_state import docker_client, docker_errors, parse_timestamp

__all__ = [
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

STOPPED_STATES: Final = ("exited", "dead", "created")
BUILD_CACHE_SKIPPED_TYPES: Final = ("internal", "frontend")  # kept by a prune without --all
MIN_BUILD_PRUNE_API: Final = "1.39"  # filters on POST /build/prune
MIN_SERVICE_STATUS_API: Final = "1.41"  # GET /services?status=true
_NO_TAG: Final = "<none>:<none>"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)  # a time Docker left unset


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class ImageFact:
    id: str
    tags: tuple[str, ...]
    created: datetime
    used: bool  # some container (any state) runs or ran it

    @property
    def dangling(self) -> bool:
        return not self.tags


@dataclass(frozen=True)
class ContainerFact:
    id: str
    state: str  # created | running | paused | restarting | removing | exited | dead
    created: datetime
    finished_at: datetime | None  # None: never finished (or never started)
    image: str  # image id


@dataclass(frozen=True)
class BuildCacheFact:
    id: str
    kind: str  # the record type: regular, internal, frontend, source.local, ...
    created: datetime
    last_used: datetime | None
    size_bytes: int
    in_use: bool
    shared: bool  # its data is shared with an image: removing it frees nothing


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


def _converging(service: ServiceState) -> str | None:
    """Why ``service`` is converging, or ``None`` when it is settled."""
    if service.running != service.desired:
        return f"{service.name} ({service.running}/{service.desired} running)"
    if not service.settled:
        return f"{service.name} (update {service.update_state})"
    return None


def _gates(facts: Facts) -> tuple[bool, str]:
    refused = []
    disk = f"disk {facts.disk_used_pct:g}% used"
    if facts.disk_used_pct < facts.threshold_pct:
        refused.append(f"{disk}, below the threshold of {facts.threshold_pct}%")
    if facts.in_flight:
        refused.append(f"run(s) in flight: {', '.join(facts.in_flight)}")
    converging = [c for c in (_converging(s) for s in facts.services) if c]
    if converging:
        refused.append(f"service(s) converging: {', '.join(converging)}")
    if refused:
        return False, "; ".join(refused)
    return True, (
        f"{disk}, at or above the threshold of {facts.threshold_pct}%; no run in flight; "
        "no service converging"
    )


def plan(facts: Facts, min_age_h: float, now: datetime) -> PrunePlan:
    """What the prune may remove now: nothing unless every gate is open (pure)."""
    allowed, why = _gates(facts)
    if not allowed:
        return PrunePlan(allowed=False, why=why, min_age_h=min_age_h)
    min_age = timedelta(hours=min_age_h)

    def old(moment: datetime) -> bool:
        return now - moment > min_age

    images = tuple(
        i.id for i in facts.images if i.dangling and not i.used and old(i.created)
    )
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


def _moment(value: Any) -> datetime | None:
    """A Docker time (RFC 3339 string or epoch seconds) as an aware datetime; None if unset."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC) if value > 0 else None
    ns = parse_timestamp(str(value) if value else None)
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns else None


def _services(client: docker.DockerClient) -> tuple[ServiceState, ...]:
    """Every service with its running/desired task counts and update state."""
    if version_lt(client.api.api_version, MIN_SERVICE_STATUS_API):
        return _services_from_tasks(client)
    raw = cast(list[dict[str, Any]], client.api.services(status=True))
    found = []
    for service in raw:
        status = service.get("ServiceStatus") or {}
        found.append(
            _service_state(
                service, int(status.get("RunningTasks") or 0), int(status.get("DesiredTasks") or 0)
            )
        )
    return tuple(sorted(found, key=lambda s: s.name))


def _services_from_tasks(client: docker.DockerClient) -> tuple[ServiceState, ...]:
    """The same counts on engines older than API 1.41, from one task listing."""
    services = cast(list[dict[str, Any]], client.api.services())
    tasks = cast(list[dict[str, Any]], client.api.tasks(filters={"desired-state": "running"}))
    found = []
    for service in services:
        mine = [t for t in tasks if t.get("ServiceID") == service["ID"]]
        running = sum(1 for t in mine if (t.get("Status") or {}).get("State") == "running")
        mode = service["Spec"].get("Mode") or {}
        desired = int(mode["Replicated"].get("Replicas", 1)) if "Replicated" in mode else len(mine)
        found.append(_service_state(service, running, desired))
    return tuple(sorted(found, key=lambda s: s.name))


def _service_state(service: dict[str, Any], running: int, desired: int) -> ServiceState:
    spec = service["Spec"]
    image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
    return ServiceState(
        name=str(spec["Name"]),
        desired=desired,
        running=running,
        image=str(image).split("@", 1)[0],
        update_state=(service.get("UpdateStatus") or {}).get("State") or None,
    )


def _real_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(sorted(t for t in tags or () if t and t != _NO_TAG))


def _containers(
    client: docker.DockerClient, listed: list[dict[str, Any]]
) -> tuple[ContainerFact, ...]:
    found = []
    for item in listed:
        state = str(item.get("State") or "")
        finished = None
        if state in STOPPED_STATES:  # the listing has no finish time; inspect those that count
            try:
                attrs = client.api.inspect_container(item["Id"])
            except NotFound:
                continue  # removed meanwhile
            finished = _moment((attrs.get("State") or {}).get("FinishedAt"))
        found.append(
            ContainerFact(
                id=str(item["Id"]),
                state=state,
                created=_moment(item.get("Created")) or _EPOCH,
                finished_at=finished,
                image=str(item.get("ImageID") or ""),
            )
        )
    return tuple(found)


def _build_cache(client: docker.DockerClient) -> tuple[tuple[BuildCacheFact, ...], str | None]:
    version = str(client.api.api_version)
    if version_lt(version, MIN_BUILD_PRUNE_API):
        return (), (
            f"the engine speaks API {version}; pruning build cache by age needs "
            f"{MIN_BUILD_PRUNE_API} or newer"
        )
    records = (cast(dict[str, Any], client.df()) or {}).get("BuildCache") or []
    return tuple(
        BuildCacheFact(
            id=str(r["ID"]),
            kind=str(r.get("Type") or "regular"),
            created=_moment(r.get("CreatedAt")) or _EPOCH,
            last_used=_moment(r.get("LastUsedAt")),
            size_bytes=int(r.get("Size") or 0),
            in_use=bool(r.get("InUse")),
            shared=bool(r.get("Shared")),
        )
        for r in records
    ), None


def observe(settings: Settings, client: docker.DockerClient, in_flight: Sequence[str]) -> Facts:
    """The facts ``plan`` decides on. ``in_flight``: run ids holding a slot, from the caller."""
    disk = disk_used_pct(settings.prune_path)
    with docker_errors("listing the services on the engine for the disk prune"):
        services = _services(client)
    with docker_errors("listing the containers on the engine for the disk prune"):
        listed = cast(list[dict[str, Any]], client.api.containers(all=True))
        containers = _containers(client, listed)
    used = {str(c.get("ImageID") or "") for c in listed}
    with docker_errors("listing the images on the engine for the disk prune"):
        raw_images = cast(list[dict[str, Any]], client.api.images())
    images = tuple(
        ImageFact(
            id=str(i["Id"]),
            tags=_real_tags(i.get("RepoTags")),
            created=_moment(i.get("Created")) or _EPOCH,
            used=str(i["Id"]) in used,
        )
        for i in raw_images
    )
    with docker_errors("reading the build cache for the disk prune"):
        build_cache, unsupported = _build_cache(client)
    return Facts(
        disk_used_pct=disk,
        threshold_pct=settings.prune_threshold_pct,
        in_flight=tuple(in_flight),
        services=services,
        images=images,
        containers=containers,
        build_cache=build_cache,
        build_cache_unsupported=unsupported,
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


def _refused(exc: APIError) -> str:
    return f"the engine refused: {exc.explanation or exc}"


def _remove_container(client: docker.DockerClient, cid: str) -> str | None:
    """Remove a stopped container (never ``force``, never its volumes); why not, or None."""
    with docker_errors(f"removing container {cid[:12]}"):
        try:
            client.api.remove_container(cid, v=False, force=False)
        except NotFound:
            return "already gone"
        except APIError as exc:  # e.g. 409: it was started again since the plan
            return _refused(exc)
    return None


def _remove_image(client: docker.DockerClient, image_id: str) -> str | None:
    """Remove a dangling image if it is still untagged and unused; why not, or None."""
    with docker_errors(f"removing image {image_id[:19]}"):
        try:
            attrs = client.api.inspect_image(image_id)
            tags = _real_tags(attrs.get("RepoTags"))
            if tags:
                return f"tagged {tags[0]} since the plan"
            listed = cast(list[dict[str, Any]], client.api.containers(all=True))
            users = [c["Id"] for c in listed if c.get("ImageID") == image_id]
            if users:
                return f"used by container {str(users[0])[:12]} since the plan"
            client.api.remove_image(image_id, force=False, noprune=True)
        except NotFound:
            return "already gone"
        except APIError as exc:  # e.g. 409: a container was created from it just now
            return _refused(exc)
    return None


def _prune_build_cache(client: docker.DockerClient, min_age_h: float) -> tuple[int, str | None]:
    until = f"{round(min_age_h * 3600)}s"
    with docker_errors(f"pruning build cache unused for {until}"):
        try:
            result = client.api.prune_builds(filters={"until": until})
        except InvalidVersion as exc:
            return 0, f"the engine cannot prune build cache by age: {exc}"
        except APIError as exc:
            return 0, _refused(exc)
    return int((result or {}).get("SpaceReclaimed") or 0), None


def act(client: docker.DockerClient, the_plan: PrunePlan) -> Removal:
    """Remove exactly what ``the_plan`` lists (nothing when it is not allowed)."""
    if not the_plan.allowed:
        return Removal()
    skipped: list[dict[str, str]] = []
    containers = []
    for cid in the_plan.containers:
        reason = _remove_container(client, cid)
        if reason is None:
            containers.append(cid)
        else:
            skipped.append({"kind": "container", "id": cid, "reason": reason})
    images = []
    for image_id in the_plan.images:
        reason = _remove_image(client, image_id)
        if reason is None:
            images.append(image_id)
        else:
            skipped.append({"kind": "image", "id": image_id, "reason": reason})
    cache_bytes, cache_skipped = 0, the_plan.build_cache_skipped
    if the_plan.build_cache_ids:
        cache_bytes, cache_skipped = _prune_build_cache(client, the_plan.min_age_h)
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
    client: docker.DockerClient | None = None,
) -> dict[str, Any]:
    """Observe, plan and (unless ``dry_run``) act; the result ``ccci prune --json`` prints.

    ``{allowed, why, disk_used_pct, threshold_pct, removed | would_remove: {images,
    containers, build_cache_bytes, build_cache_skipped}, skipped}``. Raises ``PlatformError``
    when Docker fails or cannot be reached, ``ConfigError`` for an unusable CCCI_PRUNE_PATH.
    """
    own = client is None
    engine = docker_client(settings) if client is None else client
    try:
        facts = observe(settings, engine, in_flight)
        the_plan = plan(facts, settings.prune_min_age_h, datetime.now(UTC))
        removal = Removal.planned(the_plan) if dry_run else act(engine, the_plan)
    finally:
        if own:
            engine.close()
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
