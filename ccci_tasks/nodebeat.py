"""The node beat (R15): the runs worker of each node keeps it in the node registry.

A worker that consumes this node's queue ``runs.<node>`` (the runs worker) starts, when it is
ready, a daemon thread in its main process that beats (``nodes.beat``) every
``CCCI_NODE_BEAT_S``: this node (``CCCI_NODE``), its ``CCCI_MAX_TESTS``, the live apps of this
system on its engine (``lanes.runner.observe_live``), the recipes whose canonical is usable in
its state root (``lanes.canon.usable``), and the worker's name. The thread stops on
``worker_shutdown`` (after a warm shutdown drained the steps, so a node that still runs steps
still beats). A node whose runs worker is gone stops beating and is ``lost`` after
``CCCI_LEASE_TTL_S``.

A beat never kills the thread: a broker error is logged and the next beat tries again; an
engine that cannot be read is logged and the beat carries the last live apps it knew (none
before the first good reading), as does a state root that cannot be read for canonicals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis
from celery.signals import worker_ready, worker_shutdown

from ccci_tasks import broker, nodes
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import CcciError
from ccci_tasks.naming import Recipe

log = logging.getLogger(__name__)

BEAT_TIMEOUT_S: Final = 10.0  # per broker command of a beat; a late beat is only late
REPEAT_LOG_S: Final = 60.0  # a failure that lasts is logged again this often
JOIN_TIMEOUT_S: Final = 15.0


def usable_canonicals(settings: Settings) -> list[Recipe]:
    """The recipes whose canonical in this node's state root a quick run may use now."""
    from ccci_tasks.lanes import canon
    from ccci_tasks.state.canonical import REGISTRIES

    found = []
    # by name, then each checked: one corrupt registry hides no other
    for recipe in sorted(REGISTRIES.names(settings.state_dir)):
        try:
            if canon.usable(settings, recipe).registry is not None:
                found.append(recipe)
        except CcciError as exc:
            log.warning("canonical of %s left out of the node beat: %s", recipe, exc)
    return found


def observe_live(settings: Settings) -> list[str]:
    """The live apps of this system on this node's engine (``lanes.runner.observe_live``)."""
    from ccci_tasks.lanes import runner

    return runner.observe_live(settings)


class _Failing:
    """Logs a failure when it starts, again every ``REPEAT_LOG_S`` while it lasts, and once
    when it is over."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.logged_at = 0.0
        self.count = 0

    def failed(self, why: str) -> None:
        now = time.monotonic()
        self.count += 1
        if self.since is None:
            self.since = now
        if self.count == 1 or now - self.logged_at >= REPEAT_LOG_S:
            self.logged_at = now
            log.warning("node beat: %s failed (%d time(s) in %.0f s): %s", self.what,
                        self.count, now - self.since, why)

    def ok(self) -> None:
        if self.since is not None:
            log.info("node beat: %s works again after %d failure(s) in %.0f s", self.what,
                     self.count, time.monotonic() - self.since)
        self.since, self.count = None, 0


class NodeBeat:
    """Beats for ``settings.node`` every ``settings.node_beat_s`` from a daemon thread."""

    def __init__(self, settings: Settings, worker: str, *,
                 client: redis.Redis | None = None,
                 live: Callable[[Settings], Sequence[str]] = observe_live,
                 canonicals: Callable[[Settings], Sequence[Recipe]] = usable_canonicals) -> None:
        nodes.runs_queue(settings.node)  # a bad node name fails here, not in the thread
        self.settings = settings
        self.worker = worker
        self._client = client or broker.client(settings, BEAT_TIMEOUT_S)
        self._live_of, self._canonicals_of = live, canonicals
        self._live: list[str] = []
        self._canonicals: list[Recipe] = []
        self._engine = _Failing(f"reading the Docker engine at {settings.docker_host}")
        self._state = _Failing(f"reading the canonicals under {settings.state_dir}")
        self._broker = _Failing("beating into the broker")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0  # beats that reached the broker

    def beat_once(self) -> float | None:
        """One beat; the server time it was written at, or None when the broker failed."""
        # what cannot be read now is published as last known: a node that cannot read its
        # engine still runs and must not look lost (its runs are renewed on their own)
        try:
            self._live = list(self._live_of(self.settings))
            self._engine.ok()
        except Exception as exc:  # PlatformError, or anything the engine's client raised
            self._engine.failed(f"{type(exc).__name__}: {exc}; beating with the last known "
                                f"live apps {self._live}")
        try:
            self._canonicals = list(self._canonicals_of(self.settings))
            self._state.ok()
        except Exception as exc:
            self._state.failed(f"{type(exc).__name__}: {exc}; beating with the last known "
                               f"canonicals {self._canonicals}")
        try:
            at = nodes.beat(self._client, self.settings.node, self.settings.max_tests,
                            self._live, self._canonicals, [self.worker])
        except CcciError as exc:  # BrokerError (InvalidInput: a live app we cannot name)
            self._broker.failed(str(exc))
            return None
        self._broker.ok()
        self.beats += 1
        return at

    def _run(self) -> None:
        interval = self.settings.node_beat_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.beat_once()
            except Exception:  # a bug must not stop the node from beating
                log.exception("node beat: unexpected error; beating again in %g s", interval)
            next_at = max(next_at + interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ccci-node-beat", daemon=True)
        self._thread.start()
        log.info("node %s: beating every %g s as %s (lost after %d s without a beat)",
                 self.settings.node, self.settings.node_beat_s, self.worker,
                 self.settings.lease_ttl_s)

    def stop(self) -> None:
        """Stop beating (the node turns lost after the lease TTL unless it beats again)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


_current: NodeBeat | None = None
_lock = threading.Lock()


def start_for_worker(queues: set[str], worker: str) -> NodeBeat | None:
    """Start the beat of this process when it consumes this node's ``runs.<node>``."""
    global _current
    settings = get_settings()
    if nodes.runs_queue(settings.node) not in queues:
        return None
    with _lock:
        if _current is None:
            _current = NodeBeat(settings, worker)
        _current.start()
        return _current


def stop_for_worker() -> None:
    global _current
    with _lock:
        running, _current = _current, None
    if running is not None:
        running.stop()
        log.info("node %s: stopped beating", running.settings.node)


def on_worker_ready(sender: Any) -> None:
    """``worker_ready`` (its sender is the worker's consumer): start beating if it is a runs
    worker of this node."""
    try:
        queues = {str(q.name) for q in sender.task_consumer.queues}
        worker = str(sender.hostname)
    except AttributeError:
        return
    try:
        start_for_worker(queues, worker)
    except CcciError as exc:
        log.error("node beat not started: %s", exc)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _beat_when_ready(sender: Any = None, **_: Any) -> None:
    on_worker_ready(sender)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_at_shutdown(**_: Any) -> None:
    stop_for_worker()
