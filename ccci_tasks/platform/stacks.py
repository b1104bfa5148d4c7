"""Reading a deployed stack off the engine: its services, their tasks, its volumes.

Shared by the swarm and the abra backends: both deploy stacks named ``naming.stack_name(domain)``
whose objects carry ``com.docker.stack.namespace=<stack>``, so what is deployed and which
volumes it has are read the same way. Every function takes the docker SDK client and returns
plain values (``DeployedState``, ``ServiceDetail``, ``VolumeInfo``, ``AppInfo``).

"Since the current deploy"
--------------------------
Failed and rejected tasks are counted only when they belong to the current deploy: created at
or after the deploy's start and running the service's current container spec. The start is
``UpdateStatus.StartedAt`` when the service has an update status, else the service's
``UpdatedAt``. (``UpdatedAt`` alone is not enough: swarm bumps it again when it *pauses* a
failing update, which would hide the very task failures that paused it.)

A task counts as running for the current deploy only if its container spec is the service's
current one, so the old task that still runs in the instant after ``docker stack deploy``
returned is never mistaken for convergence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, cast

import docker

from ccci_tasks import constants
from ccci_tasks.naming import (
    Domain,
    RunHex,
    stack_name,
)
from ccci_tasks.platform.base import (
    AppInfo,
    DeployedState,
    Kind,
    ServiceState,
    TaskRef,
    VolumeInfo,
)
from ccci_tasks.platform.engine import docker_errors, parse_timestamp
from ccci_tasks.platform.startorder import Failed, ServiceProgress, counted_failures

__all__ = [
    "DEFAULT_STOP_GRACE_S",
    "FAILED_TASK_STATES",
    "ServiceDetail",
    "Stopping",
    "grace_s",
    "labelled_apps",
    "observe",
    "stack_services",
    "volumes",
]

DEFAULT_STOP_GRACE_S: Final = 10.0  # Docker's default when a service sets none
APP_SERVICE: Final = "app"
FAILED_TASK_STATES: Final = ("failed", "rejected")
_MISSING_IMAGE_RE: Final = re.compile(
    r"no such image|pull access denied|manifest unknown|manifest for .* not found|"
    r"repository does not exist|not found: manifest",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- one task


def _labels(spec: dict[str, Any]) -> dict[str, str]:
    raw = spec.get("Labels") or {}
    return {str(k): str(v) for k, v in raw.items()}


def _task_is_current(task: dict[str, Any], template: dict[str, Any]) -> bool:
    """True when ``task`` runs the service's current container spec (and force counter)."""
    spec = task.get("Spec") or {}
    return bool(
        spec.get("ContainerSpec") == template.get("ContainerSpec")
        and (spec.get("ForceUpdate") or 0) == (template.get("ForceUpdate") or 0)
    )


def _running(current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks of the current spec that run and should."""
    return [t for t in current
            if t.get("DesiredState") == "running" and t["Status"].get("State") == "running"]


def _desired(spec: dict[str, Any], current: list[dict[str, Any]]) -> int:
    mode = spec.get("Mode") or {}
    if "Replicated" in mode:
        return int(mode["Replicated"].get("Replicas", 1))
    if "Global" in mode:
        return sum(1 for t in current if t.get("DesiredState") == "running")
    return 0  # jobs run to completion: nothing stays running


def _healthchecked(template: dict[str, Any]) -> bool:
    """Whether the service's spec has a healthcheck (swarm then holds a task ``starting``
    until it passes)."""
    test = ((template.get("ContainerSpec") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def grace_s(task: dict[str, Any]) -> float:
    """The stop grace period of a task's container spec, in seconds."""
    grace_ns = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("StopGracePeriod")
    return grace_ns / 1e9 if isinstance(grace_ns, int) else DEFAULT_STOP_GRACE_S


def _task_ref(task: dict[str, Any]) -> TaskRef:
    container = (task.get("Status") or {}).get("ContainerStatus") or {}
    return TaskRef(str(task["ID"]), container.get("ContainerID") or None)


@dataclass(frozen=True)
class Stopping:
    """A task swarm wants stopped (desired state past ``running``) whose container still runs."""

    task: TaskRef
    grace_s: float


@dataclass(frozen=True)
class ServiceDetail:
    """What ``DeployedState`` does not carry but fail-fast decisions and messages need."""

    service: ServiceState
    missing_image_error: str | None = None  # Err of a task rejected for a missing image
    last_task_state: str | None = None  # state of the newest task
    last_task_error: str | None = None  # Err of the newest task
    last_failed_task_id: str | None = None
    last_failed_container_id: str | None = None
    stopping: tuple[Stopping, ...] = ()
    running_since_ns: int = 0  # engine time the youngest current running task started
    healthchecked: bool = False  # swarm holds its tasks "starting" until a healthcheck passes

    def describe(self) -> str:
        svc = self.service
        parts = [f"{svc.name}: {svc.running}/{svc.desired} running"]
        if svc.update_state:
            parts.append(f"update {svc.update_state}")
        if svc.failed_tasks:
            parts.append(f"{svc.failed_tasks} failed task(s) since the deploy")
        if svc.start_failures:
            parts.append(f"{svc.start_failures} failed while other services were starting")
        if self.last_task_state:
            last = f"last task {self.last_task_state}"
            if self.last_task_error:
                last += f" ({self.last_task_error})"
            parts.append(last)
        return ", ".join(parts)


# --------------------------------------------------------------------------- one service


def _progress(service: dict[str, Any],
              tasks: list[dict[str, Any]]) -> tuple[ServiceProgress, list[dict[str, Any]]]:
    """The service as the start-order rule sees it, and its failed tasks since the current
    deploy (oldest first)."""
    template = service["Spec"].get("TaskTemplate") or {}
    update = service.get("UpdateStatus") or {}
    anchor = parse_timestamp(update.get("StartedAt")) if update else 0
    if not anchor:
        anchor = parse_timestamp(service.get("UpdatedAt") or service.get("CreatedAt"))
    current = [t for t in tasks if _task_is_current(t, template)]
    failed = [
        t for t in current
        if t["Status"].get("State") in FAILED_TASK_STATES
        and parse_timestamp(t["CreatedAt"]) >= anchor
    ]
    running = _running(current)
    desired = _desired(service["Spec"], current)
    up_since = (max((parse_timestamp(t["Status"].get("Timestamp")) for t in running),
                    default=0) if len(running) >= desired else None)
    progress = ServiceProgress(
        name=str(service["Spec"]["Name"]),
        failures=tuple(Failed(parse_timestamp(t["Status"].get("Timestamp")),
                              str(t["Status"].get("State"))) for t in failed),
        up_since_ns=up_since,
        healthchecked=_healthchecked(template),
    )
    return progress, failed


def _detail(service: dict[str, Any], tasks: list[dict[str, Any]],
            failed: list[dict[str, Any]], counts: tuple[int, int],
            healthchecked: bool = False) -> ServiceDetail:
    spec = service["Spec"]
    name = str(spec["Name"])
    template = spec.get("TaskTemplate") or {}
    image = str((template.get("ContainerSpec") or {}).get("Image", "")).split("@", 1)[0]
    update = service.get("UpdateStatus") or {}
    update_state = update.get("State") or None
    current = [t for t in tasks if _task_is_current(t, template)]
    running = _running(current)
    desired = _desired(spec, current)
    last_failed = failed[-1] if failed else None
    missing = next(
        (
            str(t["Status"].get("Err"))
            for t in reversed(failed)
            if t["Status"].get("State") == "rejected"
            and _MISSING_IMAGE_RE.search(str(t["Status"].get("Err") or ""))
        ),
        None,
    )
    newest = tasks[-1] if tasks else None
    running_since = max(
        (parse_timestamp(t["Status"].get("Timestamp")) for t in running), default=0
    )
    stopping = tuple(
        Stopping(_task_ref(t), grace_s(t))
        for t in tasks
        if t.get("DesiredState") in ("shutdown", "remove")
        and t["Status"].get("State") == "running"
    )
    state = ServiceState(
        name=name,
        desired=desired,
        running=len(running),
        image=image,
        update_state=update_state,
        last_error=(
            str(last_failed["Status"].get("Err") or last_failed["Status"]["State"])
            if last_failed
            else None
        ),
        failed_tasks=counts[0],
        tasks=tuple(_task_ref(t) for t in running),
        start_failures=counts[1],
    )
    container = (
        ((last_failed["Status"].get("ContainerStatus") or {}).get("ContainerID") or None)
        if last_failed
        else None
    )
    return ServiceDetail(
        service=state,
        missing_image_error=missing,
        last_task_state=str(newest["Status"].get("State")) if newest else None,
        last_task_error=(
            str(newest["Status"]["Err"]) if newest and newest["Status"].get("Err") else None
        ),
        last_failed_task_id=str(last_failed["ID"]) if last_failed else None,
        last_failed_container_id=container,
        stopping=stopping,
        running_since_ns=running_since,
        healthchecked=healthchecked,
    )


# --------------------------------------------------------------------------- one stack


def stack_services(client: docker.DockerClient, stack: str) -> list[dict[str, Any]]:
    """The services of ``stack`` as the engine lists them, by name."""
    label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
    with docker_errors(f"listing the services of stack {stack}"):
        services = client.api.services(filters={"label": label})
    return sorted(cast(list[dict[str, Any]], services), key=lambda s: s["Spec"]["Name"])


def _tasks(client: docker.DockerClient, service_id: str) -> list[dict[str, Any]]:
    with docker_errors(f"listing the tasks of service {service_id}"):
        tasks = client.api.tasks(filters={"service": service_id})
    return [t for t in cast(list[dict[str, Any]], tasks) if t.get("ServiceID") == service_id]


def observe(client: docker.DockerClient,
            domain: Domain) -> tuple[DeployedState, list[ServiceDetail]]:
    """What is deployed for ``domain`` now plus the per-service details behind it."""
    stack = stack_name(domain)
    services = stack_services(client, stack)
    tasks = [sorted(_tasks(client, s["ID"]), key=lambda t: parse_timestamp(t["CreatedAt"]))
             for s in services]
    seen = [_progress(svc, its) for svc, its in zip(services, tasks, strict=True)]
    counts = counted_failures([progress for progress, _ in seen])
    details = [_detail(svc, its, failed, counts[progress.name], progress.healthchecked)
               for svc, its, (progress, failed) in zip(services, tasks, seen, strict=True)]
    version = chaos = None
    by_name = {s["Spec"]["Name"]: s for s in services}
    app = by_name.get(f"{stack}_{APP_SERVICE}")
    candidates = [app] if app is not None else services
    for service in candidates:
        labels = _labels(service["Spec"])
        if constants.version_label(stack) in labels:
            version = labels[constants.version_label(stack)]
            chaos = labels.get(constants.chaos_version_label(stack))
            break
    state = DeployedState(
        domain=domain,
        stack=stack,
        version=version,
        chaos_version=chaos,
        services=tuple(d.service for d in details),
    )
    return state, details


def volumes(client: docker.DockerClient, domain: Domain) -> list[VolumeInfo]:
    """The named volumes of ``domain``'s stack (they survive undeploy)."""
    stack = stack_name(domain)
    label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
    with docker_errors(f"listing the volumes of stack {stack}"):
        listed = client.api.volumes(filters={"label": label})
    found = (cast(dict[str, Any], listed) or {}).get("Volumes") or []
    return sorted(
        (
            VolumeInfo(
                name=str(v["Name"]),
                mountpoint=str(v.get("Mountpoint") or ""),
                labels={str(k): str(val) for k, val in (v.get("Labels") or {}).items()},
            )
            for v in found
        ),
        key=lambda v: v.name,
    )


# --------------------------------------------------------------------------- every app


def labelled_apps(client: docker.DockerClient) -> list[AppInfo]:
    """Apps whose services or volumes carry ``ccci.kind`` (sorted by domain)."""
    with docker_errors("listing ccci services"):
        services = client.api.services(filters={"label": constants.LABEL_KIND})
    with docker_errors("listing ccci volumes"):
        listed = client.api.volumes(filters={"label": constants.LABEL_KIND})
    apps: dict[str, AppInfo] = {}
    for service in cast(list[dict[str, Any]], services):
        info = _app_from_labels(_labels(service["Spec"]), deployed=True)
        if info is not None:
            apps[info.domain] = info
    for volume in (cast(dict[str, Any], listed) or {}).get("Volumes") or []:
        labels = {str(k): str(v) for k, v in (volume.get("Labels") or {}).items()}
        info = _app_from_labels(labels, deployed=False)
        if info is not None and info.domain not in apps:
            apps[info.domain] = info
    return [apps[d] for d in sorted(apps)]


def _app_from_labels(labels: dict[str, str], *, deployed: bool) -> AppInfo | None:
    """An ``AppInfo`` from ccci labels, or ``None`` when they are incomplete or invalid."""
    kind = labels.get(constants.LABEL_KIND)
    domain = labels.get(constants.LABEL_DOMAIN)
    recipe = labels.get(constants.LABEL_RECIPE, "")
    found = labels.get(constants.LABEL_RUN) or None
    if kind not in constants.KINDS or not domain:
        return None
    try:
        domain = Domain(domain)  # labels read from the engine
        run = None if found is None else RunHex(found)
    except ValueError:
        return None
    stack = labels.get(constants.STACK_NAMESPACE_LABEL) or stack_name(domain)
    return AppInfo(
        domain=domain,
        stack=stack,
        recipe=recipe,
        kind=cast(Kind, kind),
        run=run,
        deployed=deployed,
    )
