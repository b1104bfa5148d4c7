"""The admission client: ``Slots`` enqueues, admits, renews, ends, parks and reaps runs.

Every call that changes state is one admission script (``scripts``); reads are plain
commands. Redis errors become ``BrokerError`` naming the host and the operation, never the
password. See the package docstring for the model.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, cast

import redis

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.admission.resources import Resource
from ccci_tasks.admission.scripts import KEY_PARKED, Scripts
from ccci_tasks.admission.spec import NODE_RE, Lease, RunSpec
from ccci_tasks.constants import KEY_NODE, KEY_NODES
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Recipe, RunId

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

log = logging.getLogger(__name__)

DEFAULT_NODE: Final = "local"  # a client built without settings (tests, tools)
_LIVE_RE: Final = re.compile(r"cold:[0-9a-f]{6}|warm:[a-z0-9][a-z0-9_-]{0,62}")


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[object]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


class Slots:
    """Run admission, fenced leases and resource holds in Redis; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        max_tests: int,
        ttl_s: float,
        clock: Callable[[], float] | None = None,
        *,
        start_grace_s: float | None = None,
        node: str = DEFAULT_NODE,
    ) -> None:
        if isinstance(max_tests, bool) or not isinstance(max_tests, int) or max_tests < 1:
            raise InvalidInput(f"max_tests {max_tests!r} is invalid: it must be an int >= 1")
        for name, value in (("ttl_s", ttl_s), ("start_grace_s", start_grace_s)):
            if value is None and name == "start_grace_s":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise InvalidInput(f"lease {name} {value!r} is invalid: it must be a number > 0")
        self._client = client
        self._max_tests = max_tests
        self._ttl_s = float(ttl_s)
        self._grace_s = float(start_grace_s) if start_grace_s is not None else self._ttl_s
        if not isinstance(node, str) or not NODE_RE.fullmatch(node):
            raise InvalidInput(f"node {node!r} is invalid: expected 1-63 of [a-z0-9-] (CCCI_NODE)")
        self._node = node
        self._clock = clock
        self._scripts = Scripts(client)

    @classmethod
    def from_settings(cls, settings: Settings) -> Slots:
        """Slots on the broker Redis with the MAX_TESTS and lease settings."""
        client = broker.client(settings)
        return cls(client, settings.max_tests, settings.lease_ttl_s,
                   start_grace_s=settings.lease_start_grace_s, node=settings.node)

    @property
    def node(self) -> str:
        """The node this client admits for (CCCI_NODE)."""
        return self._node

    @property
    def max_tests(self) -> int:
        return self._max_tests

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def client(self) -> redis.Redis:
        return self._client

    # --- plumbing -------------------------------------------------------------------------

    def broker(self, what: str) -> AbstractContextManager[None]:
        """Translate Redis errors into ``BrokerError`` naming the host, never the password."""
        return broker.failures(self._client, what)

    def _call(self, name: str, what: str, *args: object) -> Any:
        now = None if self._clock is None else self._clock()
        with self.broker(what):
            return self._scripts(name, now, *args)

    def now(self) -> float:
        """The lease clock: the Redis server's time, or the injected clock."""
        if self._clock is not None:
            return float(self._clock())
        with self.broker("reading the server clock"):
            seconds, micros = self._client.time()
        return seconds + micros / 1e6

    @staticmethod
    def _spec_or_none(run_id: str, raw: Mapping[str, str]) -> RunSpec | None:
        if not raw or "lane" not in raw:
            return None
        try:
            return RunSpec._from_hash(raw)
        except InvalidInput as exc:
            log.warning("run %s: unreadable stored spec ignored: %s", run_id, exc)
            return None

    def _specs_from_script(self, reply: object, what: str) -> list[RunSpec]:
        out: list[RunSpec] = []
        for item in cast(list[list[Any]], reply):
            run_id, raw = _s(item[0]), _pairs(item[1])
            spec = self._spec_or_none(run_id, raw)
            if spec is None:
                log.warning("run %s %s but has no stored spec (forgotten?)", run_id, what)
                continue
            out.append(spec)
        return out

    def _read_specs(self, run_ids: Sequence[str], what: str) -> list[RunSpec | None]:
        if not run_ids:
            return []
        with self.broker(what):
            pipe = self._client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hgetall(c.KEY_RUN_SPEC + run_id)
            raws = pipe.execute()
        return [
            self._spec_or_none(run_id, {_s(k): _s(v) for k, v in cast(dict[Any, Any], raw).items()})
            for run_id, raw in zip(run_ids, raws, strict=True)
        ]

    # --- API ------------------------------------------------------------------------------

    def enqueue(self, spec: RunSpec) -> RunSpec:
        """Store ``spec`` and append it to the FIFO; returns it with ``enqueued_at`` set.

        Idempotent: enqueueing a run id that is already known changes nothing and returns
        the stored spec. The same run id with a different spec raises ``InvalidInput``.
        """
        if not isinstance(spec, RunSpec):
            raise InvalidInput(f"enqueue expects a RunSpec, got {type(spec).__name__}")
        args: list[str] = [spec.run_id]
        for key, value in spec._hash_fields().items():
            if key != "enqueued_at":
                args += [key, value]
        reply = cast(list[Any], self._call("enqueue", f"enqueueing run {spec.run_id}", *args))
        if int(reply[0]) == 1:
            log.info("run %s (%s %s) enqueued", spec.run_id, spec.lane, spec.recipe)
            return replace(spec, enqueued_at=float(_s(reply[1])), token=0)
        stored = RunSpec._from_hash(_pairs(reply[1]))
        if replace(stored, enqueued_at=0.0, token=0, node=None) \
                != replace(spec, enqueued_at=0.0, token=0, node=None):
            raise InvalidInput(
                f"run {spec.run_id} is already enqueued with a different spec "
                f"(stored {stored.to_json()}, given {spec.to_json()}); use a new run id"
            )
        return stored

    def admit(self, live: Iterable[str] = ()) -> list[RunSpec]:
        """Lease free resources to pending runs in FIFO order; return the runs to start.

        Admits for this client's node only (R15): runs pinned to it, and unpinned runs while
        no other live node (``ccci_tasks.nodes``) has more free slots; MAX_TESTS counts per
        node. A node that does not beat while others do admits nothing (it runs no runs
        worker). ``live`` are the live apps of this system as observed on this node's engine
        (``cold:<hex>`` for a deployed cold app, ``warm:<recipe>`` for a deployed canonical);
        those no occupying run explains count against MAX_TESTS (and keep their canonical
        busy); they are published for the other nodes too. Each admitted run carries its
        fencing token and this node. Never waits.
        """
        observed = []
        for item in live:
            if not isinstance(item, str) or not _LIVE_RE.fullmatch(item):
                raise InvalidInput(f"live app {item!r} is invalid: expected cold:<hex> or "
                                   "warm:<recipe>")
            observed.append(item)
        reply = self._call("admit", "admitting pending runs", self._ttl_s, self._grace_s,
                           self._max_tests, self._node, self._ttl_s, KEY_NODE, KEY_NODES,
                           *observed)
        admitted = self._specs_from_script(reply, "was admitted")
        for spec in admitted:
            log.info("run %s (%s %s) admitted with token %d", spec.run_id, spec.lane,
                     spec.recipe, spec.token)
        return admitted

    def renew(self, run_id: RunId, token: int, holder: str = "") -> bool:
        """Check the run's lease and extend it to now + ttl (the fence check); with
        ``holder`` (``"<node> <pid> <start>"``), record who acts for the run now.

        False when the run holds no live lease with this token (expired, released, flushed
        or re-admitted): a lost lease is never revived here.
        """
        return int(self._call("renew", f"renewing the lease of run {run_id}", self._ttl_s, run_id,
                              int(token), holder)) == 1

    def end(self, run_id: RunId, token: int) -> bool:
        """The run ended: drop its lease and forget its spec in one step, only while it
        holds its live lease with ``token``. False (and nothing changed) otherwise."""
        ended = int(self._call("release", f"ending run {run_id}", run_id, int(token), "1")) == 1
        if ended:
            log.info("run %s released its resources and was forgotten", run_id)
        return ended

    def release(self, run_id: RunId, token: int | None = None) -> bool:
        """Drop the run's live lease (with ``token``: only if it still holds that token).
        True if a live lease was dropped. The spec is kept until ``forget``."""
        released = int(self._call("release", f"releasing the lease of run {run_id}", run_id,
                                  "" if token is None else int(token), "0")) == 1
        if released:
            log.info("run %s released its resources", run_id)
        return released

    def requeue(self, run_id: RunId, token: int) -> bool:
        """A run could not be launched: drop its lease and put it first in line again."""
        return int(self._call("requeue", f"requeueing run {run_id}", run_id, int(token))) == 1

    def park(self, run_id: RunId, token: int) -> bool:
        """The run waits for its child runs: it gives up its lease and resources (its spec
        stays) until ``unpark``. False if it holds no live lease with this token."""
        return int(self._call("park", f"parking run {run_id}", run_id, int(token))) == 1

    def unpark(self, run_id: RunId) -> bool:
        """Put a parked run first in line again (to be admitted and continued). True if it
        was parked."""
        return int(self._call("unpark", f"unparking run {run_id}", run_id)) == 1

    def parked(self) -> list[RunId]:
        """The parked runs."""
        with self.broker("listing parked runs"):
            found = cast(set[Any], self._client.smembers(KEY_PARKED))
        return sorted(RunId(_s(x)) for x in found)

    def holds(self, run_id: RunId, token: int | None = None) -> bool:
        """True if the run holds a live (unexpired) lease (with ``token``, if given)."""
        for lease in self.occupying():
            if lease.run_id == run_id and lease.state == "live":
                return token is None or (lease.spec is not None and lease.spec.token == token)
        return False

    def occupying(self) -> list[Lease]:
        """Every run that holds resources: live leases, then expired, then reaping."""
        reply = cast(list[Any], self._call("occupying", "listing occupying runs"))
        out: list[Lease] = []
        for item in reply[1:]:
            run_id, score, state, raw = _s(item[0]), float(_s(item[1])), _s(item[2]), item[3]
            fields_ = _pairs(raw)
            out.append(Lease(RunId(run_id), score, self._spec_or_none(run_id, fields_), state,
                             fields_.get("started", "1") == "1", fields_.get("holder")))
        return out

    def leases(self) -> list[Lease]:
        """Live leases, soonest expiry first (for ``ccci status``)."""
        return sorted((x for x in self.occupying() if x.state == "live"),
                      key=lambda x: x.expires_at)

    def pending(self) -> list[RunSpec]:
        """The pending runs, head of the FIFO first."""
        with self.broker("listing pending runs"):
            ids = [_s(x) for x in cast(list[Any], self._client.lrange(c.KEY_PENDING, 0, -1))]
        specs = self._read_specs(ids, "reading the specs of pending runs")
        return [spec for spec in specs if spec is not None]

    def spec(self, run_id: RunId) -> RunSpec | None:
        """The stored spec of a run, or None if unknown or forgotten."""
        return self._read_specs([run_id], f"reading the spec of run {run_id}")[0]

    def cancel(self, run_id: RunId) -> bool:
        """Remove a pending run from the FIFO. True if it was pending."""
        with self.broker(f"cancelling pending run {run_id}"):
            removed = int(self._client.lrem(c.KEY_PENDING, 0, run_id))
        return removed > 0

    def reap_expired(self) -> list[RunSpec]:
        """Hand every lease whose expiry passed to the caller (the janitor), soonest expiry
        first, exactly once even to concurrent janitors. A reaped run keeps its resources
        until ``finish_reap``: what it left may still be live. A run admitted whose first
        step never started (its worker was down) is not reaped: it is queued again, first
        in line."""
        reaped = self._specs_from_script(self._call("reap", "reaping expired leases"),
                                         "lease expired")
        for spec in reaped:
            log.warning("run %s (%s %s): lease expired", spec.run_id, spec.lane, spec.recipe)
        return reaped

    def reaping(self) -> list[tuple[RunId, RunSpec | None]]:
        """Runs (and janitor holds) handed to the janitor and not yet cleaned up."""
        return [(x.run_id, x.spec) for x in self.occupying() if x.state == "reaping"]

    def hold(self, hold_id: RunId, recipe: Recipe, resources: Sequence[Resource]) -> None:
        """The janitor holds ``resources`` (as a reaping entry ``hold_id``) while it cleans
        up after a run Redis no longer knows; ``finish_reap(hold_id)`` frees them."""
        spec = RunSpec.for_hold(RunId(hold_id), recipe, tuple(resources), self._node)
        args: list[str] = [spec.run_id]
        for key, value in spec._hash_fields().items():
            args += [key, value]
        self._call("hold", f"holding {', '.join(map(str, resources))} for the janitor", *args)

    def finish_reap(self, run_id: RunId) -> bool:
        """The janitor cleaned up after a reaped run (or a hold): free its resources and
        drop its spec. True if it was being reaped."""
        done = int(self._call("finish_reap", f"finishing the reap of run {run_id}", run_id)) == 1
        if done:
            log.info("run %s: cleaned up; its resources are free", run_id)
        return done

    def forget(self, run_id: RunId) -> None:
        """Drop the stored spec (after release/cancel and cleanup are done)."""
        with self.broker(f"forgetting run {run_id}"):
            self._client.delete(c.KEY_RUN_SPEC + run_id)
