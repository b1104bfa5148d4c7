"""Taking a stack off the engine: wait for its services and containers to go, stop or kill
the containers swarm leaves behind, delete its volumes and secrets.

Shared by both backends, after their own removal of the stack's services (``docker stack
rm``, ``abra app undeploy``). No container is touched while any service of the stack still
exists: swarm would start a replacement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

import docker
from docker.errors import DockerException, NotFound

from ccci_tasks import constants
from ccci_tasks.errors import PlatformError, WaitTimeout
from ccci_tasks.naming import Domain, stack_name
from ccci_tasks.platform.engine import docker_errors
from ccci_tasks.platform.engine_events import EVENTS_SLACK_S, StackEvents
from ccci_tasks.platform.stacks import grace_s, stack_services, volumes

__all__ = [
    "kill_containers",
    "remove_secrets",
    "remove_volumes",
    "running_containers",
    "stop_graces",
    "stop_orphan_containers",
    "wait_undeployed",
]

UNDEPLOY_POLL_S: Final = 0.25
SERVICE_NAME_LABEL: Final = "com.docker.swarm.service.name"
REMOVE_VOLUME_TIMEOUT_S: Final = 60.0


def _containers(client: docker.DockerClient, stack: str) -> list[dict[str, Any]]:
    """Every container of ``stack``, running or not."""
    label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
    with docker_errors(f"listing the containers of stack {stack}"):
        found = client.api.containers(all=True, filters={"label": label})
    return cast(list[dict[str, Any]], found)


def wait_undeployed(client: docker.DockerClient, domain: Domain, timeout_s: float,
                    poll_s: float = UNDEPLOY_POLL_S) -> None:
    """Wait until the stack's services and their containers are gone (volumes free)."""
    stack = stack_name(domain)
    deadline = time.monotonic() + timeout_s
    with StackEvents(client, stack, max_s=timeout_s + EVENTS_SLACK_S) as events:
        while True:
            services = stack_services(client, stack)
            containers = _containers(client, stack)
            if not services and not containers:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = (
                    f"services {[s['Spec']['Name'] for s in services]}, "
                    f"containers {[c.get('Names') for c in containers]}"
                )
                raise WaitTimeout(f"stack {stack} of {domain} to be removed", timeout_s, seen)
            events.wait(min(poll_s, remaining))


# --------------------------------------------------------------------------- containers


def _orphan_containers(client: docker.DockerClient, domain: Domain) -> list[dict[str, Any]]:
    """The stack's containers once its services are gone (none while any service exists:
    swarm would start a replacement)."""
    stack = stack_name(domain)
    if stack_services(client, stack):
        return []
    return _containers(client, stack)


def _remove_each(client: docker.DockerClient, domain: Domain, doing: str,
                 remove: Callable[[dict[str, Any]], None]) -> list[str]:
    """``remove`` each orphan container of the stack, all at once (a stop waits for its own
    grace period, never for the others'); the ids removed."""

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

    containers = _orphan_containers(client, domain)
    if len(containers) <= 1:
        return [cid for cid in map(one, containers) if cid is not None]
    with ThreadPoolExecutor(max_workers=min(8, len(containers)),
                            thread_name_prefix="remove") as pool:
        return [cid for cid in pool.map(one, containers) if cid is not None]


def stop_orphan_containers(client: docker.DockerClient, domain: Domain,
                           stop_timeout_s: int | None = None,
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
            client.api.stop(container["Id"], timeout=timeout)
        client.api.remove_container(container["Id"])

    return _remove_each(client, domain, "stopping", stop)


def kill_containers(client: docker.DockerClient, domain: Domain) -> list[str]:
    """Kill (SIGKILL, no grace) and remove the stack's containers once its services are gone.

    For data that is discarded or restored right after. Does nothing while any service
    of the stack still exists (swarm would start a replacement).
    """
    return _remove_each(
        client, domain, "killing",
        lambda container: client.api.remove_container(container["Id"], force=True))


def stop_graces(client: docker.DockerClient, domain: Domain) -> dict[str, float]:
    """The stop grace period of each service of the stack (full service names)."""
    return {str(s["Spec"]["Name"]): grace_s({"Spec": s["Spec"].get("TaskTemplate") or {}})
            for s in stack_services(client, stack_name(domain))}


def running_containers(client: docker.DockerClient,
                       domain: Domain) -> list[tuple[str, str, tuple[str, ...]]]:
    """(container id, full service name, named volumes mounted) of every running container
    of the stack."""
    label = f"{constants.STACK_NAMESPACE_LABEL}={stack_name(domain)}"
    with docker_errors(f"listing the running containers of {domain}"):
        found = client.api.containers(filters={"label": label, "status": "running"})
    return [(str(c["Id"]), str((c.get("Labels") or {}).get(SERVICE_NAME_LABEL, "?")),
             tuple(sorted(str(m.get("Name")) for m in c.get("Mounts") or ()
                          if m.get("Type") == "volume" and m.get("Name"))))
            for c in cast(list[dict[str, Any]], found)]


# --------------------------------------------------------------------------- data


def remove_volumes(client: docker.DockerClient, domain: Domain,
                   timeout_s: float = REMOVE_VOLUME_TIMEOUT_S) -> list[str]:
    """Delete the stack's volumes (retrying while a dying container holds one)."""
    removed = []
    deadline = time.monotonic() + timeout_s
    for volume in volumes(client, domain):
        while True:
            try:
                client.api.remove_volume(volume.name)
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


def remove_secrets(client: docker.DockerClient, domain: Domain) -> list[str]:
    """Delete the secrets of the stack (namespace label) or labelled for ``domain``."""
    stack = stack_name(domain)
    found: dict[str, str] = {}
    for label in (
        f"{constants.STACK_NAMESPACE_LABEL}={stack}",
        f"{constants.LABEL_DOMAIN}={domain}",
    ):
        with docker_errors(f"listing the secrets of {domain}"):
            secrets = client.api.secrets(filters={"label": label})
        for secret in cast(list[dict[str, Any]], secrets):
            found[str(secret["ID"])] = str(secret["Spec"]["Name"])
    removed = []
    for secret_id, name in sorted(found.items(), key=lambda kv: kv[1]):
        try:
            with docker_errors(f"removing secret {name} of {domain}"):
                client.api.remove_secret(secret_id)
        except PlatformError as exc:
            if isinstance(exc.__cause__, NotFound):
                continue
            raise
        removed.append(name)
    return removed
