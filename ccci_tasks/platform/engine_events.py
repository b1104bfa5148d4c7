"""Engine events of one stack: wake a waiter the moment the engine reports a change.

The Docker events API streams service events (``create``/``update``/``remove``, an update
carrying ``updatestate.old``/``updatestate.new``) and container events (``create``,
``start``, ``die``, ``kill``, ``stop``, ``destroy``, ``health_status``, carrying the
container's labels, among them ``com.docker.stack.namespace``). ``StackEvents`` reads that
stream in a background thread and raises a flag for the events of one stack.

Events only say *when* to look. Every decision is still taken from the state observed right
after waking (``platform.stacks``), so a lost, late or unexpected event can delay a
decision, never falsify it. When the stream cannot be opened or breaks, ``wait`` degrades
to plain polling at the caller's period; the waiter never depends on the stream.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from types import TracebackType
from typing import Any, Final

import docker
from docker.errors import DockerException

from ccci_tasks import constants

__all__ = ["EVENTS_SLACK_S", "StackEvents", "concerns_stack"]

log = logging.getLogger(__name__)

EVENT_TYPES: Final = ("service", "container")
EVENTS_SLACK_S: Final = 5.0  # a waiter's stream lasts this much longer than its timeout
JOIN_S: Final = 1.0


def concerns_stack(event: dict[str, Any], stack: str) -> bool:
    """Whether a decoded engine event is about ``stack``'s services or containers."""
    kind = event.get("Type")
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    if kind == "container":
        return bool(attributes.get(constants.STACK_NAMESPACE_LABEL) == stack)
    if kind == "service":
        return str(attributes.get("name", "")).startswith(stack + "_")
    return False


class StackEvents:
    """A context manager: ``wait(timeout_s)`` returns early when ``stack`` changes.

    ``max_s`` bounds the stream on the engine side (its ``until``), so even a stream that
    cannot be cancelled (an ``ssh://`` engine) ends by itself.
    """

    def __init__(self, client: docker.DockerClient, stack: str, *, max_s: float) -> None:
        self._client = client
        self._stack = stack
        self._max_s = max_s
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self.streaming = False
        self.seen = 0  # events of this stack so far

    def __enter__(self) -> StackEvents:
        now = time.time()
        try:
            # The request is made here, so every change after __enter__ is reported.
            self._stream = self._client.api.events(
                since=int(now), until=int(now + self._max_s) + 1,
                filters={"type": list(EVENT_TYPES)}, decode=True,
            )
        except (DockerException, OSError) as exc:
            log.info("engine events unavailable for %s (%s); polling instead", self._stack, exc)
            return self
        self.streaming = True
        self._thread = threading.Thread(
            target=self._read, name=f"events-{self._stack}", daemon=True
        )
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            for event in self._stream:
                if self._closing.is_set():
                    return
                if isinstance(event, dict) and concerns_stack(event, self._stack):
                    self.seen += 1
                    self._wake.set()
        except Exception as exc:  # a broken or cancelled stream: fall back to polling
            if not self._closing.is_set():
                log.info("engine event stream for %s broke (%s); polling", self._stack, exc)
        finally:
            self.streaming = False
            self._wake.set()  # let a waiter notice the fallback at once

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True when woken by an event of the stack."""
        woken = self._wake.wait(max(0.0, timeout_s))
        self._wake.clear()
        return woken

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._stream is not None:
            with contextlib.suppress(Exception):  # ssh streams cannot be cancelled: until ends it
                self._stream.close()
        if self._thread is not None:
            self._thread.join(JOIN_S)

