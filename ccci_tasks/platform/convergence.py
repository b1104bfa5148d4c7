"""Waiting for a deployed stack to converge, and watching that it stays up.

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
import threading
import time
from collections.abc import Callable
from typing import Final

import docker
from docker.errors import DockerException, NotFound

from ccci_tasks.errors import DeployFailed, InvalidInput, WaitTimeout
from ccci_tasks.naming import Domain, stack_name
from ccci_tasks.platform.base import CRASH_LOOP_FAILURES, DeployedState, TaskRef
from ccci_tasks.platform.engine_events import EVENTS_SLACK_S, StackEvents
from ccci_tasks.platform.stacks import ServiceDetail, observe

__all__ = [
    "Readiness",
    "check_failed",
    "is_converged",
    "startup_left_s",
    "still_running",
    "vanished_tasks",
    "wait_converged",
]

log = logging.getLogger(__name__)

# How often the engine is observed without an event: rarely while the event stream works
# (events wake the waiter), often when it does not.
OBSERVE_EVERY_S: Final = 2.0
FALLBACK_POLL_S: Final = 0.5
MIN_POLL_S: Final = 0.05  # right after a change, while tasks move between states
READY_POLL_S: Final = 0.05  # how often a readiness probe runs while the app boots
# A service no readiness probe covers has no sign of being up but that it keeps running: its
# youngest task must have run this long, so one that dies on start is seen failing.
UNPROBED_STARTUP_S: Final = 1.0
LOG_TAIL_LINES: Final = 5

# A readiness probe: None when the app is up, else what it saw (for messages).
Readiness = Callable[[], str | None]


# --------------------------------------------------------------------------- pure


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


# --------------------------------------------------------------------------- failing fast


def _tail_logs(client: docker.DockerClient, container_id: str | None) -> str:
    if not container_id:
        return ""
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
    except (DockerException, OSError):
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:])


def check_failed(client: docker.DockerClient, details: list[ServiceDetail]) -> None:
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
            logs = _tail_logs(client, detail.last_failed_container_id)
            raise DeployFailed(
                f"service {svc.name} (image {svc.image}) is crash-looping: "
                f"{svc.failed_tasks} tasks failed since the deploy; last task error: "
                f"{svc.last_error}" + (f"; last log lines: {logs}" if logs else "")
            )


def _hasten(client: docker.DockerClient, details: list[ServiceDetail],
            started: set[str]) -> None:
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
                target=_stop_quietly, args=(client, cid, stop.grace_s),
                name=f"stop-{cid[:12]}", daemon=True,
            ).start()


def _stop_quietly(client: docker.DockerClient, container_id: str, grace_s: float) -> None:
    try:
        client.api.stop(container_id, timeout=max(1, math.ceil(grace_s)))
    except (DockerException, OSError) as exc:  # gone already, or swarm got there first
        log.debug("stop of %s: %s", container_id[:12], exc)


# --------------------------------------------------------------------------- waiting


def wait_converged(
    client: docker.DockerClient,
    domain: Domain,
    timeout_s: float,
    *,
    ready: Readiness | None = None,
    probed: frozenset[str] = frozenset(),
    observe_every_s: float = OBSERVE_EVERY_S,
    hasten_stops: bool = True,
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
    here. Later deaths are for ``still_running``. ``hasten_stops``: stop the containers of
    replaced tasks at once instead of after swarm's 2 s load-balancer delay.
    """
    deadline = time.monotonic() + timeout_s
    stopping: set[str] = set()
    state: DeployedState | None = None
    details: list[ServiceDetail] = []
    waiting_for: str | None = None
    backoff = MIN_POLL_S
    stack = stack_name(domain)
    up_since: float | None = None  # when this wait first saw the tasks run and the app up
    with StackEvents(client, stack, max_s=timeout_s + EVENTS_SLACK_S) as events:
        woken, observed_at = True, -math.inf
        while True:
            every = observe_every_s if events.streaming else FALLBACK_POLL_S
            converged = state is not None and is_converged(state)
            if woken or not converged or time.monotonic() - observed_at >= every:
                state, details = observe(client, domain)
                observed_at = time.monotonic()
                check_failed(client, details)
                if hasten_stops:
                    _hasten(client, details, stopping)
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
                        fresh, details = observe(client, domain)  # never a stale state
                        check_failed(client, details)
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
                raise WaitTimeout(f"{domain} (stack {stack}) to converge", timeout_s, seen)
            woken = events.wait(min(nap, remaining))
            if woken:
                backoff = MIN_POLL_S


# --------------------------------------------------------------------------- staying up


def still_running(client: docker.DockerClient, domain: Domain, since: DeployedState) -> None:
    """Raise ``DeployFailed`` when a task running in ``since`` died or was replaced."""
    if not any(svc.tasks for svc in since.services):
        raise InvalidInput(
            f"still_running({domain}) needs the state wait_converged returned (it names "
            f"the running tasks); got one without tasks: {since!r}"
        )
    now, _ = observe(client, domain)
    gone = vanished_tasks(since, now)
    if not gone:
        return
    raise DeployFailed(
        f"{domain}: " + "; ".join(_describe_gone(client, name, ref) for name, ref in gone)
        + "; the app died or was restarted after it had come up"
    )


def _describe_gone(client: docker.DockerClient, service: str, ref: TaskRef) -> str:
    """What became of a task that was running: its state, error, exit code and logs."""
    container = ref.container_id[:12] if ref.container_id else "none"
    what = f"service {service}: task {ref.task_id[:12]} (container {container})"
    try:
        task = client.api.inspect_task(ref.task_id)
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
    logs = _tail_logs(client, ref.container_id)
    return text + (f"; last log lines: {logs}" if logs else "")
