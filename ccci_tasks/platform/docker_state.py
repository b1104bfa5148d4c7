"""Observing (and cleaning up) deployed apps with the docker SDK.

Shared by the swarm and the abra backends: both deploy stacks named ``naming.stack_name(domain)``
whose objects carry ``com.docker.stack.namespace=<stack>``, so what is deployed, whether it
converged and which volumes it has are read the same way.

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

Fail fast (SPEC R6.7)
---------------------
``wait_converged`` raises ``DeployFailed`` as soon as a task of the current deploy was
rejected because its image is missing (no registry can fix that: the recipe's image tag is
wrong), or a service has failed ``CRASH_LOOP_FAILURES`` tasks since the deploy (a crash loop).
Docker keeps at most 5 old tasks per slot, so the count saturates there.

Converged means every service runs its desired replicas of the current spec, its update
settled (no update status, ``completed`` or ``rollback_completed``), and the platform's
readiness probe (if it gives one) says the app is up.

Watching instead of waiting
---------------------------
``wait_converged`` holds no fixed window. It observes the engine whenever the engine reports a
change of the stack (``engine_events.StackEvents``: service and container events), and at a
slow period otherwise (a faster one when the event stream is unavailable); it probes the
platform's readiness often while the tasks run but the app is not up yet. A fresh deploy whose
task dies a few seconds after it started, before the app is up, is therefore still seen dying,
restarting and dying again: a crash loop (R6.7). A task that dies *after* the app came up is
caught by ``still_running``, which compares the running tasks (ids and containers) with the
ones ``wait_converged`` returned; the lane calls it right before it declares a run green.

Stopping replaced tasks without swarm's delay
---------------------------------------------
When an update replaces a task, swarm's agent first takes the task out of the service's load
balancer and waits a hard-coded 2 s (``defaultGossipConvergeDelay``) before it sends the
stop signal. No CI app serves traffic through that balancer, so ``wait_converged`` stops a
task whose desired state is already ``shutdown`` itself, at once, exactly as swarm would: the
container's stop signal, then SIGKILL after the service's stop grace period. Swarm starts the
new task as soon as the old one stopped (stop-first), and its own stop later finds the
container gone.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import docker
from docker.errors import DockerException, NotFound

from ccci_tasks import constants
from ccci_tasks.config import Settings
from ccci_tasks.errors import DeployFailed, InvalidInput, PlatformError, WaitTimeout
from ccci_tasks.naming import stack_name, validate_domain, validate_run_hex
from ccci_tasks.platform.base import (
    AppInfo,
    DeployedState,
    Kind,
    ServiceState,
    TaskRef,
    VolumeInfo,
)
from ccci_tasks.platform.engine_events import StackEvents
from ccci_tasks.platform.startorder import Failed, ServiceProgress, counted_failures

__all__ = [
    "CRASH_LOOP_FAILURES",
    "FAILED_TASK_STATES",
    "DockerState",
    "Readiness",
    "ServiceDetail",
    "Stopping",
    "docker_client",
    "docker_errors",
    "is_converged",
    "parse_timestamp",
    "startup_left_s",
    "vanished_tasks",
]

log = logging.getLogger(__name__)

CRASH_LOOP_FAILURES: Final = 3
# How often the engine is observed without an event: rarely while the event stream works
# (events wake the waiter), often when it does not.
OBSERVE_EVERY_S: Final = 2.0
FALLBACK_POLL_S: Final = 0.5
MIN_POLL_S: Final = 0.05  # right after a change, while tasks move between states
READY_POLL_S: Final = 0.05  # how often a readiness probe runs while the app boots
# A service no readiness probe covers has no sign of being up but that it keeps running: its
# youngest task must have run this long, so one that dies on start is seen failing.
UNPROBED_STARTUP_S: Final = 1.0
EVENTS_SLACK_S: Final = 5.0
DEFAULT_STOP_GRACE_S: Final = 10.0  # Docker's default when a service sets none
UNDEPLOY_POLL_S: Final = 0.25
APP_SERVICE: Final = "app"
SERVICE_NAME_LABEL: Final = "com.docker.swarm.service.name"
REMOVE_VOLUME_TIMEOUT_S: Final = 60.0
LOG_TAIL_LINES: Final = 5
FAILED_TASK_STATES: Final = ("failed", "rejected")
_MISSING_IMAGE_RE: Final = re.compile(
    r"no such image|pull access denied|manifest unknown|manifest for .* not found|"
    r"repository does not exist|not found: manifest",
    re.IGNORECASE,
)
_TS_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)

T = TypeVar("T")
# A readiness probe: None when the app is up, else what it saw (for messages).
Readiness = Callable[[], str | None]


# --------------------------------------------------------------------------- helpers


@contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Translate docker SDK and connection errors into ``PlatformError`` naming ``doing``."""
    try:
        yield
    except DockerException as exc:
        raise PlatformError(f"Docker failed while {doing}: {exc}") from exc
    except OSError as exc:  # requests' ConnectionError/Timeout are OSErrors
        raise PlatformError(
            f"cannot reach the Docker engine while {doing}: {exc}; check that dockerd runs "
            "and CCCI_DOCKER_HOST"
        ) from exc


def docker_client(settings: Settings) -> docker.DockerClient:
    """A docker SDK client for ``settings.docker_host`` (API version negotiated)."""
    with docker_errors(f"connecting to {settings.docker_host}"):
        return docker.DockerClient(base_url=settings.docker_host, version="auto", timeout=120)


def parse_timestamp(value: str | None) -> int:
    """Nanoseconds since the epoch of a Docker RFC 3339 time (``0`` when absent/zero).

    Docker trims trailing zeros of the fraction, so these strings do not sort as text.
    """
    if not value:
        return 0
    match = _TS_RE.match(value)
    if match is None:
        return 0
    whole, frac, zone = match.groups()
    offset = "+00:00" if zone == "Z" else zone
    stamp = datetime.fromisoformat(whole + offset)
    if stamp.year <= 1:
        return 0
    seconds = int((stamp - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


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


def _grace_s(task: dict[str, Any]) -> float:
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


# --------------------------------------------------------------------------- DockerState


def is_converged(state: DeployedState) -> bool:
    """Every service runs its desired replicas of the current spec and its update settled."""
    return state.is_deployed and all(
        s.running == s.desired and s.settled for s in state.services
    )


def vanished_tasks(since: DeployedState, now: DeployedState) -> list[tuple[str, TaskRef]]:
    """The tasks running in ``since`` that do not run (in the same container) in ``now``."""
    running = {svc.name: set(svc.tasks) for svc in now.services}
    return [
        (svc.name, ref)
        for svc in since.services
        for ref in svc.tasks
        if ref not in running.get(svc.name, set())
    ]


def startup_left_s(
    details: list[ServiceDetail], probed: frozenset[str], stack: str, now_ns: int,
    startup_s: float = UNPROBED_STARTUP_S,
) -> float:
    """How long until every service outside ``probed`` (short names, e.g. ``app``) has had
    its youngest running task up for ``startup_s`` (engine clock); 0 when they all have.
    A service with a healthcheck is up once swarm calls its task running (healthy)."""
    left = 0.0
    for detail in details:
        if detail.healthchecked or detail.service.name.removeprefix(stack + "_") in probed:
            continue
        age_s = (now_ns - detail.running_since_ns) / 1e9
        left = max(left, startup_s - age_s)
    return max(0.0, left)


class DockerState:
    """Read-mostly view of the stacks on one Docker engine.

    ``hasten_stops``: while waiting for convergence, stop the containers of replaced tasks
    at once instead of after swarm's 2 s load-balancer delay (see the module docstring).
    """

    def __init__(self, client: docker.DockerClient, *, hasten_stops: bool = True) -> None:
        self.client = client
        self.hasten_stops = hasten_stops

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        with docker_errors(doing):
            return fn()

    # --- observation ------------------------------------------------------------------

    def _services(self, stack: str) -> list[dict[str, Any]]:
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
        services = self._call(
            f"listing the services of stack {stack}",
            lambda: self.client.api.services(filters={"label": label}),
        )
        return sorted(cast(list[dict[str, Any]], services), key=lambda s: s["Spec"]["Name"])

    def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        tasks = self._call(
            f"listing the tasks of service {service_id}",
            lambda: self.client.api.tasks(filters={"service": service_id}),
        )
        return [t for t in cast(list[dict[str, Any]], tasks) if t.get("ServiceID") == service_id]

    def _progress(self, service: dict[str, Any],
                  tasks: list[dict[str, Any]]) -> tuple[ServiceProgress, list[dict[str, Any]]]:
        """The service as the start-order rule sees it, and its failed tasks since the
        current deploy (oldest first)."""
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

    def _detail(self, service: dict[str, Any], tasks: list[dict[str, Any]],
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
            Stopping(_task_ref(t), _grace_s(t))
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

    def observe(self, domain: str) -> tuple[DeployedState, list[ServiceDetail]]:
        """``deployed(domain)`` plus the per-service details behind it."""
        stack = stack_name(domain)
        services = self._services(stack)
        tasks = [sorted(self._tasks(s["ID"]), key=lambda t: parse_timestamp(t["CreatedAt"]))
                 for s in services]
        seen = [self._progress(svc, its) for svc, its in zip(services, tasks, strict=True)]
        counts = counted_failures([progress for progress, _ in seen])
        details = [self._detail(svc, its, failed, counts[progress.name], progress.healthchecked)
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

    def deployed(self, domain: str) -> DeployedState:
        """What is deployed for ``domain`` now (no services: not deployed)."""
        return self.observe(domain)[0]

    def volumes(self, domain: str) -> list[VolumeInfo]:
        """The named volumes of ``domain``'s stack (they survive undeploy)."""
        stack = stack_name(domain)
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
        volumes = self._call(
            f"listing the volumes of stack {stack}",
            lambda: self.client.api.volumes(filters={"label": label}),
        )
        found = (cast(dict[str, Any], volumes) or {}).get("Volumes") or []
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

    def labelled_apps(self) -> list[AppInfo]:
        """Apps whose services or volumes carry ``ccci.kind`` (sorted by domain)."""
        services = self._call(
            "listing ccci services",
            lambda: self.client.api.services(filters={"label": constants.LABEL_KIND}),
        )
        volumes = self._call(
            "listing ccci volumes",
            lambda: self.client.api.volumes(filters={"label": constants.LABEL_KIND}),
        )
        apps: dict[str, AppInfo] = {}
        for service in cast(list[dict[str, Any]], services):
            info = _app_from_labels(_labels(service["Spec"]), deployed=True)
            if info is not None:
                apps[info.domain] = info
        for volume in (cast(dict[str, Any], volumes) or {}).get("Volumes") or []:
            labels = {str(k): str(v) for k, v in (volume.get("Labels") or {}).items()}
            info = _app_from_labels(labels, deployed=False)
            if info is not None and info.domain not in apps:
                apps[info.domain] = info
        return [apps[d] for d in sorted(apps)]

    # --- waiting ----------------------------------------------------------------------

    def _tail_logs(self, container_id: str | None) -> str:
        if not container_id:
            return ""
        try:
            raw = self.client.api.logs(container_id, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except (DockerException, OSError):
            return ""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:])

    def check_failed(self, details: list[ServiceDetail]) -> None:
        """Raise ``DeployFailed`` for a missing image or a crash loop since the deploy."""
        for detail in details:
            svc = detail.service
            if detail.missing_image_error is not None:
                raise DeployFailed(
                    f"service {svc.name}: image {svc.image} is missing, its task was rejected "
                    f"({detail.missing_image_error}); no registry is consulted, so check the "
                    f"recipe's image tag ({svc.image}) and that the image exists on the host"
                )
            if svc.failed_tasks >= CRASH_LOOP_FAILURES:
                logs = self._tail_logs(detail.last_failed_container_id)
                raise DeployFailed(
                    f"service {svc.name} (image {svc.image}) is crash-looping: "
                    f"{svc.failed_tasks} tasks failed since the deploy; last task error: "
                    f"{svc.last_error}" + (f"; last log lines: {logs}" if logs else "")
                )

    def _hasten(self, details: list[ServiceDetail], started: set[str]) -> None:
        """Stop replaced tasks' containers now, each with its own stop grace (in a thread)."""
        for detail in details:
            for stop in detail.stopping:
                cid = stop.task.container_id
                if cid is None or cid in started:
                    continue
                started.add(cid)
                log.info("stopping replaced task %s (container %s, grace %.0f s)",
                         stop.task.task_id[:12], cid[:12], stop.grace_s)
                threading.Thread(
                    target=self._stop_quietly, args=(cid, stop.grace_s),
                    name=f"stop-{cid[:12]}", daemon=True,
                ).start()

    def _stop_quietly(self, container_id: str, grace_s: float) -> None:
        try:
            self.client.api.stop(container_id, timeout=max(1, math.ceil(grace_s)))
        except (DockerException, OSError) as exc:  # gone already, or swarm got there first
            log.debug("stop of %s: %s", container_id[:12], exc)

    def wait_converged(
        self,
        domain: str,
        timeout_s: float,
        *,
        ready: Readiness | None = None,
        probed: frozenset[str] = frozenset(),
        observe_every_s: float = OBSERVE_EVERY_S,
    ) -> DeployedState:
        """Wait until every service runs its desired replicas, its update settled, and
        ``ready`` (if given) says the app is up; return the state (with its running tasks).

        No fixed window. While tasks move (not converged) the engine is observed right after
        each event of the stack and then at a period that grows from ``MIN_POLL_S`` (task
        states have no events of their own); once the tasks run, it is observed on events and
        every ``observe_every_s`` (``FALLBACK_POLL_S`` without the event stream), and ``ready``
        is probed every ``READY_POLL_S``. A task that dies before the app is up is seen
        failing, so a crash loop fails fast (``DeployFailed`` with the last task error), as
        does a missing image; ``WaitTimeout`` names each service's running/desired, its last
        task state and error, and what the readiness probe last saw.

        ``probed`` names the services (``app``) whose being up ``ready`` tells; every other
        service without a healthcheck (swarm's healthy is its readiness) must also have had
        its youngest task run ``UNPROBED_STARTUP_S``, so a task that dies on start is caught
        here. Later deaths are for ``still_running``.
        """
        deadline = time.monotonic() + timeout_s
        stopping: set[str] = set()
        state: DeployedState | None = None
        details: list[ServiceDetail] = []
        waiting_for: str | None = None
        backoff = MIN_POLL_S
        stack = stack_name(domain)
        up_since: float | None = None  # when this wait first saw the tasks run and the app up
        with StackEvents(self.client, stack, max_s=timeout_s + EVENTS_SLACK_S) as events:
            woken, observed_at = True, -math.inf
            while True:
                every = observe_every_s if events.streaming else FALLBACK_POLL_S
                converged = state is not None and is_converged(state)
                if woken or not converged or time.monotonic() - observed_at >= every:
                    state, details = self.observe(domain)
                    observed_at = time.monotonic()
                    self.check_failed(details)
                    if self.hasten_stops:
                        self._hasten(details, stopping)
                    converged = is_converged(state)
                if converged:
                    waiting_for = ready() if ready is not None else None
                    nap = READY_POLL_S
                    if waiting_for is None:
                        up_since = time.monotonic() if up_since is None else up_since
                        # The engine's clock, but never longer than the same time on ours.
                        left = min(startup_left_s(details, probed, stack, time.time_ns()),
                                   up_since + UNPROBED_STARTUP_S - time.monotonic())
                        if left > 0:
                            waiting_for = f"services outside {sorted(probed)} to stay up"
                            nap = left
                        else:
                            fresh, details = self.observe(domain)  # never a stale state
                            self.check_failed(details)
                            if is_converged(fresh):
                                return fresh
                            state, observed_at = fresh, time.monotonic()
                else:
                    up_since = None
                    # Task states follow container events by a moment and have no events of
                    # their own: look again soon after a change, then less and less often.
                    nap = backoff
                    backoff = min(backoff * 2, every)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "; ".join(d.describe() for d in details) or "no services deployed"
                    if waiting_for is not None:
                        seen += f"; the app is not up: {waiting_for}"
                    raise WaitTimeout(f"{domain} (stack {stack}) to converge", timeout_s,
                                      seen)
                woken = events.wait(min(nap, remaining))
                if woken:
                    backoff = MIN_POLL_S

    def still_running(self, domain: str, since: DeployedState) -> None:
        """Raise ``DeployFailed`` when a task running in ``since`` died or was replaced."""
        if not any(svc.tasks for svc in since.services):
            raise InvalidInput(
                f"still_running({domain}) needs the state wait_converged returned (it names "
                f"the running tasks); got one without tasks: {since!r}"
            )
        now, _ = self.observe(domain)
        gone = vanished_tasks(since, now)
        if not gone:
            return
        raise DeployFailed(
            f"{domain}: " + "; ".join(self._describe_gone(name, ref) for name, ref in gone)
            + "; the app died or was restarted after it had come up"
        )

    def _describe_gone(self, service: str, ref: TaskRef) -> str:
        """What became of a task that was running: its state, error, exit code and logs."""
        container = ref.container_id[:12] if ref.container_id else "none"
        what = f"service {service}: task {ref.task_id[:12]} (container {container})"
        try:
            task = self.client.api.inspect_task(ref.task_id)
        except NotFound:
            return f"{what} that was running is gone (swarm pruned it)"
        except (DockerException, OSError) as exc:
            return f"{what} that was running cannot be inspected: {exc}"
        status = task.get("Status") or {}
        exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
        text = f"{what} that was running is now {status.get('State')}"
        if status.get("Err"):
            text += f" ({status['Err']})"
        if exit_code is not None and status.get("State") != "running":
            text += f", exit code {exit_code}"
        logs = self._tail_logs(ref.container_id)
        return text + (f"; last log lines: {logs}" if logs else "")

    def wait_undeployed(self, domain: str, timeout_s: float,
                        poll_s: float = UNDEPLOY_POLL_S) -> None:
        """Wait until the stack's services and their containers are gone (volumes free)."""
        stack = stack_name(domain)
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
        deadline = time.monotonic() + timeout_s
        with StackEvents(self.client, stack, max_s=timeout_s + EVENTS_SLACK_S) as events:
            while True:
                services = self._services(stack)
                containers = self._call(
                    f"listing the containers of stack {stack}",
                    lambda: self.client.api.containers(all=True, filters={"label": label}),
                )
                if not services and not containers:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = (
                        f"services {[s['Spec']['Name'] for s in services]}, "
                        f"containers {[c.get('Names') for c in containers]}"
                    )
                    raise WaitTimeout(f"stack {stack} of {domain} to be removed", timeout_s,
                                      seen)
                events.wait(min(poll_s, remaining))

    # --- removal ----------------------------------------------------------------------

    def _orphan_containers(self, domain: str) -> list[dict[str, Any]]:
        """The stack's containers once its services are gone (none while any service
        exists: swarm would start a replacement)."""
        stack = stack_name(domain)
        if self._services(stack):
            return []
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
        return cast(list[dict[str, Any]], self._call(
            f"listing the containers of stack {stack}",
            lambda: self.client.api.containers(all=True, filters={"label": label}),
        ))

    def _remove_each(self, domain: str, doing: str,
                     remove: Callable[[dict[str, Any]], None]) -> list[str]:
        """``remove`` each orphan container of the stack, all at once (a stop waits for its
        own grace period, never for the others'); the ids removed."""

        def one(container: dict[str, Any]) -> str | None:
            cid = str(container["Id"])
            try:
                remove(container)
            except DockerException:
                return None  # the swarm agent got there first (gone, or being removed)
            except OSError as exc:
                raise PlatformError(
                    f"cannot reach the Docker engine {doing} container {cid[:12]}: {exc}"
                ) from exc
            return cid

        containers = self._orphan_containers(domain)
        if len(containers) <= 1:
            return [cid for cid in map(one, containers) if cid is not None]
        with ThreadPoolExecutor(max_workers=min(8, len(containers)),
                                thread_name_prefix="remove") as pool:
            return [cid for cid in pool.map(one, containers) if cid is not None]

    def stop_orphan_containers(self, domain: str, stop_timeout_s: int | None = None,
                               graces: Mapping[str, float] | None = None) -> list[str]:
        """Stop and remove the stack's containers once its services are gone.

        Swarm's agent takes several seconds to notice a removed service; stopping its
        containers here (their stop signal, then SIGKILL after ``graces[<container id>]``,
        else ``stop_timeout_s``, else the container's own default) frees the volumes sooner.
        Does nothing while any service of the stack still exists.
        """

        def stop(container: dict[str, Any]) -> None:
            if container.get("State") == "running":
                grace = (graces or {}).get(str(container["Id"]))
                timeout = math.ceil(grace) if grace is not None else stop_timeout_s
                self.client.api.stop(container["Id"], timeout=timeout)
            self.client.api.remove_container(container["Id"])

        return self._remove_each(domain, "stopping", stop)

    def stop_graces(self, domain: str) -> dict[str, float]:
        """The stop grace period of each service of the stack (full service names)."""
        return {str(s["Spec"]["Name"]): _grace_s({"Spec": s["Spec"].get("TaskTemplate") or {}})
                for s in self._services(stack_name(domain))}

    def running_containers(self, domain: str) -> list[tuple[str, str, tuple[str, ...]]]:
        """(container id, full service name, named volumes mounted) of every running
        container of the stack."""
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack_name(domain)}"
        found = self._call(
            f"listing the running containers of {domain}",
            lambda: self.client.api.containers(filters={"label": label, "status": "running"}),
        )
        return [(str(c["Id"]), str((c.get("Labels") or {}).get(SERVICE_NAME_LABEL, "?")),
                 tuple(sorted(str(m.get("Name")) for m in c.get("Mounts") or ()
                              if m.get("Type") == "volume" and m.get("Name"))))
                for c in cast(list[dict[str, Any]], found)]

    def kill_containers(self, domain: str) -> list[str]:
        """Kill (SIGKILL, no grace) and remove the stack's containers once its services are gone.

        For data that is discarded or restored right after. Does nothing while any service
        of the stack still exists (swarm would start a replacement).
        """
        return self._remove_each(
            domain, "killing",
            lambda container: self.client.api.remove_container(container["Id"], force=True))

    def remove_volumes(self, domain: str, timeout_s: float = REMOVE_VOLUME_TIMEOUT_S) -> list[str]:
        """Delete the stack's volumes (retrying while a dying container holds one)."""
        removed = []
        deadline = time.monotonic() + timeout_s
        for volume in self.volumes(domain):
            while True:
                try:
                    self.client.api.remove_volume(volume.name)
                    removed.append(volume.name)
                    break
                except NotFound:
                    break
                except DockerException as exc:
                    if time.monotonic() >= deadline:
                        raise PlatformError(
                            f"cannot remove volume {volume.name} of {domain}: {exc}; is a "
                            "container still using it? (docker ps -a --filter "
                            f"volume={volume.name})"
                        ) from exc
                    time.sleep(0.5)
                except OSError as exc:
                    raise PlatformError(
                        f"cannot reach the Docker engine removing volume {volume.name}: {exc}"
                    ) from exc
        return removed

    def remove_secrets(self, domain: str) -> list[str]:
        """Delete the secrets of the stack (namespace label) or labelled for ``domain``."""
        stack = stack_name(domain)
        found: dict[str, str] = {}
        for label in (
            f"{constants.STACK_NAMESPACE_LABEL}={stack}",
            f"{constants.LABEL_DOMAIN}={domain}",
        ):
            with docker_errors(f"listing the secrets of {domain}"):
                secrets = self.client.api.secrets(filters={"label": label})
            for secret in cast(list[dict[str, Any]], secrets):
                found[str(secret["ID"])] = str(secret["Spec"]["Name"])
        removed = []
        for secret_id, name in sorted(found.items(), key=lambda kv: kv[1]):
            try:
                with docker_errors(f"removing secret {name} of {domain}"):
                    self.client.api.remove_secret(secret_id)
            except PlatformError as exc:
                if isinstance(exc.__cause__, NotFound):
                    continue
                raise
            removed.append(name)
        return removed


def _app_from_labels(labels: dict[str, str], *, deployed: bool) -> AppInfo | None:
    """An ``AppInfo`` from ccci labels, or ``None`` when they are incomplete or invalid."""
    kind = labels.get(constants.LABEL_KIND)
    domain = labels.get(constants.LABEL_DOMAIN)
    recipe = labels.get(constants.LABEL_RECIPE, "")
    run = labels.get(constants.LABEL_RUN) or None
    if kind not in constants.KINDS or not domain:
        return None
    try:
        validate_domain(domain)
        if run is not None:
            validate_run_hex(run)
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
