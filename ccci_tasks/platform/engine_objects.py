"""Engine-wide objects for the disk prune, through the docker SDK.

Reads every service (with its running/desired task counts), image, container and build cache
record on the engine as plain frozen facts, and removes single objects. ``EngineHousekeeping``
gives both backends these as ``Platform`` methods; ``ccci_tasks.diskprune`` decides through
them what goes. Removals never ``force``, never take a volume and report why they left an
object instead of raising, except when the engine cannot be reached (``PlatformError``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import docker
from docker.errors import APIError, InvalidVersion, NotFound
from docker.utils import version_lt

from ccci_tasks.constants import STACK_NAMESPACE_LABEL
from ccci_tasks.platform.base import (
    STOPPED_STATES,
    BuildCacheFact,
    ContainerFact,
    EngineObjects,
    ImageFact,
    ServiceState,
)
from ccci_tasks.platform.engine import docker_errors, parse_timestamp
from ccci_tasks.platform.stacks import FAILED_TASK_STATES
from ccci_tasks.platform.startorder import Failed, ServiceProgress, counted_failures

if TYPE_CHECKING:
    from ccci_tasks.platform.docker_state import DockerState

__all__ = [
    "EngineHousekeeping",
    "observe_engine",
]

MIN_BUILD_PRUNE_API: Final = "1.39"  # filters on POST /build/prune
MIN_SERVICE_STATUS_API: Final = "1.41"  # GET /services?status=true
_NO_TAG: Final = "<none>:<none>"
# Desired states of a task the orchestrator will (still) start: ``ready`` while a restart
# waits out its delay, ``running`` otherwise (swarmkit api/types.proto, TaskState).
WANTED_STATES: Final = frozenset({"ready", "running"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)  # a time Docker left unset


# --------------------------------------------------------------------------- observe


def _moment(value: Any) -> datetime | None:
    """A Docker time (RFC 3339 string or epoch seconds) as an aware datetime; None if unset."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC) if value > 0 else None
    ns = parse_timestamp(str(value) if value else None)
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns else None


def _real_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(sorted(t for t in tags or () if t and t != _NO_TAG))


def _progress(service: dict[str, Any], mine: list[dict[str, Any]], desired: int,
              spec_at: datetime) -> ServiceProgress:
    """The service as the start-order rule sees it: its failures since its spec changed."""
    failures = tuple(
        Failed(parse_timestamp((t.get("Status") or {}).get("Timestamp")),
               str((t.get("Status") or {}).get("State")))
        for t in mine
        if (t.get("Status") or {}).get("State") in FAILED_TASK_STATES
        and (_moment(t.get("CreatedAt")) or _EPOCH) >= spec_at)
    running = [parse_timestamp((t.get("Status") or {}).get("Timestamp")) for t in mine
               if t.get("DesiredState") == "running"
               and (t.get("Status") or {}).get("State") == "running"]
    template = service["Spec"].get("TaskTemplate") or {}
    test = ((template.get("ContainerSpec") or {}).get("Healthcheck") or {}).get("Test") or []
    return ServiceProgress(
        name=str(service["Spec"]["Name"]), failures=failures,
        up_since_ns=max(running, default=0) if len(running) >= desired else None,
        healthchecked=bool(test) and test[0] != "NONE")


def _services(
    client: docker.DockerClient, with_status: bool | None = None
) -> tuple[tuple[ServiceState, ...], dict[str, datetime]]:
    """Every service, and each one's newest change, from one service and one task listing.

    Counts are the engine's own (``docker service ls``) where the engine reports them
    (``with_status``; by default from API 1.41), else counted from the tasks. ``failed_tasks``
    counts the tasks failed or rejected since the service's spec last changed that count
    toward a crash loop by the start-order rule (``platform.startorder``, applied per stack,
    as ``wait_converged`` does). The newest change is the latest of its spec, its update
    status and its tasks' states.
    """
    if with_status is None:
        with_status = not version_lt(client.api.api_version, MIN_SERVICE_STATUS_API)
    services = cast(list[dict[str, Any]], client.api.services(status=with_status))
    tasks: dict[str, list[dict[str, Any]]] = {}
    for task in cast(list[dict[str, Any]], client.api.tasks()):
        tasks.setdefault(str(task.get("ServiceID") or ""), []).append(task)
    found, changed = [], {}
    stacks: dict[str, list[ServiceProgress]] = {}
    for service in services:
        spec = service["Spec"]
        name = str(spec["Name"])
        mine = tasks.get(str(service["ID"]), [])
        update = service.get("UpdateStatus") or {}
        spec_at = _moment(service.get("UpdatedAt")) or _EPOCH
        moments = [_moment(v) for v in (service.get("UpdatedAt"), update.get("StartedAt"),
                                        update.get("CompletedAt"))]
        moments += [_moment(v) for t in mine
                    for v in (t.get("UpdatedAt"), (t.get("Status") or {}).get("Timestamp"))]
        known = [m for m in moments if m is not None]
        if known:
            changed[name] = max(known)
        if with_status:
            status = service.get("ServiceStatus") or {}
            running = int(status.get("RunningTasks") or 0)
            desired = int(status.get("DesiredTasks") or 0)
        else:
            current = [t for t in mine if t.get("DesiredState") == "running"]
            running = sum(1 for t in current if (t.get("Status") or {}).get("State") == "running")
            mode = spec.get("Mode") or {}
            desired = (int(mode["Replicated"].get("Replicas", 1)) if "Replicated" in mode
                       else len(current))
        stack = str((spec.get("Labels") or {}).get(STACK_NAMESPACE_LABEL) or name)
        stacks.setdefault(stack, []).append(_progress(service, mine, desired, spec_at))
        image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
        found.append(ServiceState(
            name=name,
            desired=desired,
            running=running,
            image=str(image).split("@", 1)[0],
            update_state=update.get("State") or None,
            wanted=sum(1 for t in mine if t.get("DesiredState") in WANTED_STATES),
        ))
    counts = {name: count for members in stacks.values()
              for name, count in counted_failures(members).items()}
    found = [dataclasses.replace(s, failed_tasks=counts[s.name][0],
                                 start_failures=counts[s.name][1]) for s in found]
    return tuple(sorted(found, key=lambda s: s.name)), changed


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


def observe_engine(client: docker.DockerClient) -> EngineObjects:
    """Every service, image, container and build cache record on the engine."""
    with docker_errors("listing the services and their tasks on the engine"):
        services, changed = _services(client)
    with docker_errors("listing the containers on the engine"):
        listed = cast(list[dict[str, Any]], client.api.containers(all=True))
        containers = _containers(client, listed)
    used = {str(c.get("ImageID") or "") for c in listed}
    with docker_errors("listing the images on the engine"):
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
    with docker_errors("reading the engine's build cache"):
        build_cache, unsupported = _build_cache(client)
    return EngineObjects(services, images, containers, build_cache, unsupported, changed)


# --------------------------------------------------------------------------- remove


def _refused(exc: APIError) -> str:
    return f"the engine refused: {exc.explanation or exc}"


def _remove_container(client: docker.DockerClient, cid: str) -> str | None:
    """Remove a stopped container (never ``force``, never its volumes); why not, or None."""
    with docker_errors(f"removing container {cid[:12]}"):
        try:
            client.api.remove_container(cid, v=False, force=False)
        except NotFound:
            return "already gone"
        except APIError as exc:  # e.g. 409: it was started again since it was observed
            return _refused(exc)
    return None


def _remove_dangling_image(client: docker.DockerClient, image_id: str) -> str | None:
    """Remove an image only if it is still untagged and no container uses it; why not, or None.

    Without ``force`` (the engine refuses an image a container uses) and with ``noprune``
    (exactly this image: its untagged parents stay).
    """
    with docker_errors(f"removing image {image_id[:19]}"):
        try:
            tags = _real_tags(client.api.inspect_image(image_id).get("RepoTags"))
            if tags:
                return f"tagged {tags[0]} since the plan"
            listed = cast(list[dict[str, Any]], client.api.containers(all=True))
            users = [str(c["Id"]) for c in listed if c.get("ImageID") == image_id]
            if users:
                return f"used by container {users[0][:12]} since the plan"
            client.api.remove_image(image_id, force=False, noprune=True)
        except NotFound:
            return "already gone"
        except APIError as exc:  # e.g. 409: a container was created from it just now
            return _refused(exc)
    return None


def _prune_build_cache(client: docker.DockerClient, min_age_h: float) -> tuple[int, str | None]:
    """Let the engine prune build cache unused for ``min_age_h`` (no ``--all``).

    Returns the bytes reclaimed, and why nothing was pruned when the engine cannot.
    """
    until = f"{round(min_age_h * 3600)}s"
    with docker_errors(f"pruning build cache unused for {until}"):
        try:
            result = client.api.prune_builds(filters={"until": until})
        except InvalidVersion as exc:
            return 0, f"the engine cannot prune build cache by age: {exc}"
        except APIError as exc:
            return 0, _refused(exc)
    return int((cast(dict[str, Any], result) or {}).get("SpaceReclaimed") or 0), None


# --------------------------------------------------------------------------- Platform


class EngineHousekeeping:
    """The engine-wide methods of ``Platform`` (the disk prune's observations and removals)
    for a backend that reads the engine through its ``state``."""

    @property
    def state(self) -> DockerState:
        raise NotImplementedError

    def engine_objects(self) -> EngineObjects:
        return observe_engine(self.state.client)

    def remove_stopped_container(self, container_id: str) -> str | None:
        return _remove_container(self.state.client, container_id)

    def remove_dangling_image(self, image_id: str) -> str | None:
        return _remove_dangling_image(self.state.client, image_id)

    def prune_build_cache(self, min_age_h: float) -> tuple[int, str | None]:
        return _prune_build_cache(self.state.client, min_age_h)
