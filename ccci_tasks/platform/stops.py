"""Watching a graceful stop: did each container exit by itself, or was it killed (R12.3)?

A database's files are consistent only after a clean shutdown. ``docker stack rm`` (and our
own stop of the stack's containers) sends each container its stop signal and, when the stop
grace period runs out, SIGKILL. The engine reports both as container events: ``kill`` with
the signal number in ``signal`` for every signal it sends (the stop signal, then ``9``), then
``die`` with ``exitCode`` when the process ended, and ``oom`` when the kernel's OOM killer
struck. So the engine's own events say how each container ended, even when the container
is removed right after (its inspect would be gone):

* exited by itself: a ``die`` with no ``kill`` of signal 9 and no ``oom`` before it, and an
  exit code that is not 137 (128 + SIGKILL: a kill nobody sent through the engine);
* killed: otherwise, with the reason (SIGKILL after the grace period, out of memory, ...).

``StopWatch`` opens the event stream (the stack's containers only) before anything is
stopped and classifies every container that was running; ``classify`` is the pure part.
A stream that could not be opened or broke means the stop was not watched: the report says
so, and a snapshot refuses it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import docker
from docker.errors import DockerException

from ccci_tasks import constants
from ccci_tasks.naming import Domain, stack_name
from ccci_tasks.platform.base import ContainerStop, StopReport
from ccci_tasks.platform.docker_state import DockerState
from ccci_tasks.platform.stacks import DEFAULT_STOP_GRACE_S

__all__ = ["Running", "StopWatch", "classify", "stop_watched"]

log = logging.getLogger(__name__)

SIGKILL: Final = "9"
KILLED_EXIT_CODE: Final = 137  # 128 + SIGKILL
DRAIN_S: Final = 3.0  # how long events may trail the removal of the containers
JOIN_S: Final = 1.0


@dataclass(frozen=True)
class Running:
    """A container that ran when the stop began: its service and the service's grace."""

    container_id: str
    service: str
    grace_s: float
    volumes: tuple[str, ...] = ()  # named volumes it has mounted


def classify(running: Running, events: Sequence[tuple[str, Mapping[str, str]]]
             ) -> ContainerStop:
    """How ``running`` ended, from its events in order ((action, attributes) pairs)."""
    killed_by: str | None = None
    exit_code: int | None = None
    for action, attributes in events:
        if action == "kill" and attributes.get("signal") == SIGKILL and killed_by is None:
            killed_by = "killed with SIGKILL after its stop grace period"
        elif action == "oom":
            killed_by = "killed by the kernel (out of memory)"
        elif action == "die":
            code = attributes.get("exitCode", "")
            exit_code = int(code) if code.lstrip("-").isdigit() else None
            if exit_code == KILLED_EXIT_CODE and killed_by is None:
                killed_by = "exited with code 137 (SIGKILL from outside the engine)"
            break
    if exit_code is None and killed_by is None:
        killed_by = "its end was not seen (no 'die' event)"
    return ContainerStop(service=running.service, container_id=running.container_id,
                         grace_s=running.grace_s, exit_code=exit_code, killed=killed_by,
                         volumes=running.volumes)


class StopWatch:
    """``with StopWatch(client, stack, max_s) as watch:`` then stop, then ``report``."""

    def __init__(self, client: docker.DockerClient, stack: str, *, max_s: float) -> None:
        self._client = client
        self._stack = stack
        self._max_s = max_s
        self._events: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self.streaming = False
        self.broke = False

    def __enter__(self) -> StopWatch:
        now = time.time()
        label = f"{constants.STACK_NAMESPACE_LABEL}={self._stack}"
        try:
            self._stream = self._client.api.events(
                since=int(now), until=int(now + self._max_s) + 1,
                filters={"type": ["container"], "label": [label]}, decode=True)
        except (DockerException, OSError) as exc:
            log.warning("cannot watch the stop of %s: engine events unavailable (%s)",
                        self._stack, exc)
            return self
        self.streaming = True
        self._thread = threading.Thread(target=self._read, name=f"stops-{self._stack}",
                                        daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            for event in self._stream:
                if self._closing.is_set():
                    return
                if not isinstance(event, dict) or event.get("Type") != "container":
                    continue
                actor = event.get("Actor") or {}
                cid = str(actor.get("ID") or event.get("id") or "")
                attributes = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
                with self._changed:
                    self._events.setdefault(cid, []).append(
                        (str(event.get("Action") or event.get("status") or ""), attributes))
                    self._changed.notify_all()
        except Exception as exc:  # a broken stream: the stop is not watched any more
            if not self._closing.is_set():
                log.warning("engine event stream for the stop of %s broke: %s",
                            self._stack, exc)
                self.broke = True
        finally:
            self.streaming = False
            with self._changed:
                self._changed.notify_all()

    def report(self, running: Sequence[Running], drain_s: float = DRAIN_S) -> StopReport:
        """Classify every container of ``running``; waits up to ``drain_s`` for the events
        of containers whose end was not read yet."""
        deadline = time.monotonic() + drain_s
        with self._changed:
            while self.streaming and not all(
                any(a == "die" for a, _ in self._events.get(r.container_id, ()))
                for r in running
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            seen = {cid: list(events) for cid, events in self._events.items()}
            watched = self._stream is not None and not self.broke
        stops = tuple(classify(r, seen.get(r.container_id, ())) for r in running)
        return StopReport(graceful=True, stops=stops, watched=watched)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closing.set()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        if self._thread is not None:
            self._thread.join(JOIN_S)


def stop_watched(state: DockerState, domain: Domain, remove: Callable[[], None],
                 timeout_s: float) -> StopReport:
    """A graceful undeploy that watches each container's end: ``remove()`` takes the stack's
    services away (``docker stack rm``, ``abra app undeploy``), then the containers left
    get their stop signal and their service's own grace period, and the wait lasts until
    they are gone (``timeout_s`` plus the longest grace)."""
    stack = stack_name(domain)
    graces = state.stop_graces(domain)
    longest = max(graces.values(), default=0.0)
    with StopWatch(state.client, stack, max_s=timeout_s + longest + DRAIN_S) as watch:
        running = [Running(cid, service.removeprefix(stack + "_"),
                           graces.get(service, DEFAULT_STOP_GRACE_S), volumes)
                   for cid, service, volumes in state.running_containers(domain)]
        remove()
        state.stop_orphan_containers(domain, graces={r.container_id: r.grace_s
                                                     for r in running})
        state.wait_undeployed(domain, timeout_s + longest)
        return watch.report(running)
