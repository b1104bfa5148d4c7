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

Converged means every service runs its desired replicas of the current spec and its update
settled (no update status, ``completed`` or ``rollback_completed``), and that this held for
``STABLE_S`` (see ``wait_converged``), so a fresh deploy that dies seconds after starting is
caught as a crash loop instead of passing for converged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import docker
from docker.errors import DockerException, NotFound

from ccci_tasks import constants
from ccci_tasks.config import Settings
from ccci_tasks.errors import DeployFailed, PlatformError, WaitTimeout
from ccci_tasks.naming import stack_name, validate_domain, validate_run_hex
from ccci_tasks.platform.base import AppInfo, DeployedState, Kind, ServiceState, VolumeInfo

__all__ = [
    "CRASH_LOOP_FAILURES",
    "STABLE_S",
    "DockerState",
    "ServiceDetail",
    "docker_client",
    "docker_errors",
    "parse_timestamp",
]

CRASH_LOOP_FAILURES: Final = 3
STABLE_S: Final = 5.0  # like swarm's default update monitor period
APP_SERVICE: Final = "app"
REMOVE_VOLUME_TIMEOUT_S: Final = 60.0
LOG_TAIL_LINES: Final = 5
_FAILED_STATES: Final = ("failed", "rejected")
_MISSING_IMAGE_RE: Final = re.compile(
    r"no such image|pull access denied|manifest unknown|manifest for .* not found|"
    r"repository does not exist|not found: manifest",
    re.IGNORECASE,
)
_TS_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)

T = TypeVar("T")


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


@dataclass(frozen=True)
class ServiceDetail:
    """What ``DeployedState`` does not carry but fail-fast decisions and messages need."""

    service: ServiceState
    missing_image_error: str | None = None  # Err of a task rejected for a missing image
    last_task_state: str | None = None  # state of the newest task
    last_task_error: str | None = None  # Err of the newest task
    last_failed_task_id: str | None = None
    last_failed_container_id: str | None = None
    running_since_ns: int = 0  # engine time the youngest current running task started

    def describe(self) -> str:
        svc = self.service
        parts = [f"{svc.name}: {svc.running}/{svc.desired} running"]
        if svc.update_state:
            parts.append(f"update {svc.update_state}")
        if svc.failed_tasks:
            parts.append(f"{svc.failed_tasks} failed task(s) since the deploy")
        if self.last_task_state:
            last = f"last task {self.last_task_state}"
            if self.last_task_error:
                last += f" ({self.last_task_error})"
            parts.append(last)
        return ", ".join(parts)


# --------------------------------------------------------------------------- DockerState


class DockerState:
    """Read-mostly view of the stacks on one Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

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

    def _detail(self, service: dict[str, Any]) -> ServiceDetail:
        spec = service["Spec"]
        name = str(spec["Name"])
        template = spec.get("TaskTemplate") or {}
        image = str((template.get("ContainerSpec") or {}).get("Image", "")).split("@", 1)[0]
        update = service.get("UpdateStatus") or {}
        update_state = update.get("State") or None
        anchor = parse_timestamp(update.get("StartedAt")) if update else 0
        if not anchor:
            anchor = parse_timestamp(service.get("UpdatedAt") or service.get("CreatedAt"))
        tasks = sorted(self._tasks(service["ID"]), key=lambda t: parse_timestamp(t["CreatedAt"]))
        current = [t for t in tasks if _task_is_current(t, template)]
        running = [
            t
            for t in current
            if t.get("DesiredState") == "running" and t["Status"].get("State") == "running"
        ]
        mode = spec.get("Mode") or {}
        if "Replicated" in mode:
            desired = int(mode["Replicated"].get("Replicas", 1))
        elif "Global" in mode:
            desired = sum(1 for t in current if t.get("DesiredState") == "running")
        else:  # jobs run to completion: nothing stays running
            desired = 0
        failed = [
            t
            for t in current
            if t["Status"].get("State") in _FAILED_STATES
            and parse_timestamp(t["CreatedAt"]) >= anchor
        ]
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
            failed_tasks=len(failed),
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
            running_since_ns=running_since,
        )

    def observe(self, domain: str) -> tuple[DeployedState, list[ServiceDetail]]:
        """``deployed(domain)`` plus the per-service details behind it."""
        stack = stack_name(domain)
        services = self._services(stack)
        details = [self._detail(s) for s in services]
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

    def wait_converged(
        self,
        domain: str,
        timeout_s: float,
        poll_s: float = 0.5,
        stable_s: float = STABLE_S,
    ) -> DeployedState:
        """Wait until every service runs its desired replicas and its update settled.

        The state must also hold ``stable_s``: every current task has been running that
        long (by the engine's clock), or this wait saw it converged that long. So a fresh
        deploy whose task dies a few seconds after starting is not taken for converged
        (an update gets the same from swarm's update monitor, so it seldom waits extra).
        ``DeployFailed`` early for a missing image or a crash loop; ``WaitTimeout`` naming
        each service's running/desired and last task state/error otherwise.
        """
        deadline = time.monotonic() + timeout_s
        converged_since: float | None = None
        while True:
            state, details = self.observe(domain)
            self.check_failed(details)
            if state.is_deployed and all(
                s.running == s.desired and s.settled for s in state.services
            ):
                now = time.monotonic()
                converged_since = now if converged_since is None else converged_since
                youngest = max((d.running_since_ns for d in details), default=0)
                if (
                    time.time_ns() - youngest >= stable_s * 1e9
                    or now - converged_since >= stable_s
                ):
                    return state
            else:
                converged_since = None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "; ".join(d.describe() for d in details) or "no services deployed"
                raise WaitTimeout(f"{domain} (stack {state.stack}) to converge", timeout_s, seen)
            time.sleep(min(poll_s, remaining))

    def wait_undeployed(self, domain: str, timeout_s: float, poll_s: float = 0.3) -> None:
        """Wait until the stack's services and their containers are gone (volumes free)."""
        stack = stack_name(domain)
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
        deadline = time.monotonic() + timeout_s
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
                raise WaitTimeout(f"stack {stack} of {domain} to be removed", timeout_s, seen)
            time.sleep(min(poll_s, remaining))

    # --- removal ----------------------------------------------------------------------

    def stop_orphan_containers(self, domain: str, stop_timeout_s: int | None = None) -> list[str]:
        """Stop and remove the stack's containers once its services are gone.

        Swarm's agent takes several seconds to notice a removed service; stopping its
        containers here (SIGTERM, then SIGKILL after ``stop_timeout_s``, by default the
        container's own stop grace period) frees the volumes sooner. Does nothing while any
        service of the stack still exists.
        """
        stack = stack_name(domain)
        if self._services(stack):
            return []
        label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
        containers = self._call(
            f"listing the containers of stack {stack}",
            lambda: self.client.api.containers(all=True, filters={"label": label}),
        )
        removed = []
        for container in cast(list[dict[str, Any]], containers):
            cid = str(container["Id"])
            try:
                if container.get("State") == "running":
                    self.client.api.stop(cid, timeout=stop_timeout_s)
                self.client.api.remove_container(cid)
                removed.append(cid)
            except DockerException:
                continue  # the swarm agent got there first (gone, or being removed)
            except OSError as exc:
                raise PlatformError(
                    f"cannot reach the Docker engine stopping container {cid[:12]}: {exc}"
                ) from exc
        return removed

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
