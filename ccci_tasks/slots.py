"""Run admission (MAX_TESTS, R9.1) and per-canonical exclusion (R6.8) with leases in Redis.

A lane (a Celery chain: quick, cold or promote run) holds a *slot* from its first step to
its last. ``enqueue`` puts a run in a FIFO of pending runs; ``admit`` hands out free slots in
FIFO order and returns the runs to start. Nothing here ever blocks or waits: a run that does
not fit stays pending and is returned by a later ``admit`` (call it after every ``enqueue``
and ``release``, and from the janitor). A slot is a lease with an expiry; every step renews it
(``renew``/``keep_alive``), so a crashed holder's lease expires and the janitor gets the run
back from ``reap_expired`` to tear down what it left.

Besides the global slots, a run may name a *canonical* (a recipe): quick runs and promotions
of one recipe share one warm app, so two runs naming the same canonical never hold slots at
once, whatever MAX_TESTS is. The later one keeps its place in the FIFO while unrelated runs
behind it are admitted.

Redis keys (all under ``constants.REDIS_PREFIX``):

* ``KEY_SLOTS`` (``ccci:slots:leases``) - zset run_id -> lease expiry (epoch s). A lease is
  live while its expiry is after ``now``.
* ``KEY_SLOTS + ":expired"`` (``ccci:slots:leases:expired``) - zset run_id -> expiry of the
  leases dropped because they expired, until ``reap_expired`` hands them to the janitor.
* ``KEY_SLOTS + ":reaping"`` (``ccci:slots:leases:reaping``) - zset run_id -> hand-out time
  of the runs the janitor is cleaning up after, until ``finish_reap``.
* ``KEY_PENDING`` (``ccci:slots:pending``) - list of run ids, the FIFO (head = oldest).
* ``KEY_RUN_SPEC + run_id`` (``ccci:run:<run_id>``) - hash of the ``RunSpec`` fields
  (``ref``/``canonical`` absent when None). Kept after release until ``forget``.
* ``KEY_CANON_LOCK + recipe`` (``ccci:canon:<recipe>``) - run id of the run holding the
  canonical. Only meaningful while that run occupies a slot (live, expired or reaping).

A run whose lease expired keeps occupying its slot (and canonical) until the janitor has
removed what it left and calls ``finish_reap``: until then its app may still be live, so
counting it keeps the MAX_TESTS guarantee and keeps the canonical exclusive.

Every state change is one Lua script (atomic on the single Redis instance; the scripts touch
keys derived from prefixes, so this is not for Redis Cluster). Each script first moves the
leases whose expiry passed into the expired zset, so a run past its TTL has lost its lease for
good: ``renew`` and ``release`` then return False and the janitor, not the run, cleans up.
Scripts never read the server clock: ``now`` comes from the injectable ``clock``.

Redis failures are raised as ``BrokerError`` naming the broker host and the operation, never
the password. Run ids and specs are validated before any key is built from them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final, cast

import redis
from redis.exceptions import RedisError

from ccci_tasks import constants as c
from ccci_tasks.errors import BrokerError, InvalidInput
from ccci_tasks.naming import validate_recipe, validate_ref, validate_version

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

__all__ = [
    "KEY_EXPIRED",
    "KEY_REAPING",
    "LANES",
    "Lease",
    "RunSpec",
    "Slots",
]

log = logging.getLogger(__name__)

LANES: Final = ("quick", "cold", "promote")
KEY_EXPIRED: Final = c.KEY_SLOTS + ":expired"
KEY_REAPING: Final = c.KEY_SLOTS + ":reaping"

# --- run specs ----------------------------------------------------------------------------


def _validate_run_id(run_id: object) -> str:
    """Return ``run_id`` if it is a Celery task id (a lowercase uuid4 string)."""
    hint = "pass the Celery task id of the run's first step, e.g. str(uuid.uuid4())"
    if not isinstance(run_id, str):
        raise InvalidInput(
            f"run_id {run_id!r} is invalid: expected a string, got {type(run_id).__name__}; "
            f"{hint}"
        )
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        parsed = None
    if parsed is None or str(parsed) != run_id or parsed.version != 4:
        raise InvalidInput(
            f"run_id {run_id!r} is invalid: it must be a lowercase uuid4 string "
            f"(xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx); {hint}"
        )
    return run_id


def _validate_spec_ref(ref: object) -> str:
    """A ref is a git ref/sha (``validate_ref``) or a recipe version (``validate_version``)."""
    if not isinstance(ref, str):
        raise InvalidInput(
            f"ref {ref!r} is invalid: expected a string or None, got {type(ref).__name__}; "
            "give a git ref, a commit sha or a recipe version"
        )
    try:
        return validate_ref(ref)
    except InvalidInput as as_ref:
        try:
            return validate_version(ref)
        except InvalidInput:
            raise as_ref from None


@dataclass(frozen=True)
class RunSpec:
    """What a pending or running run is: enough to start its lane and to clean up after it."""

    run_id: str  # a Celery task id (uuid4 string)
    lane: str  # "quick" | "cold" | "promote"
    recipe: str
    ref: str | None = None
    canonical: str | None = None  # recipe whose canonical this run touches, or None
    enqueued_at: float = 0.0  # epoch seconds, set by Slots.enqueue

    def __post_init__(self) -> None:
        _validate_run_id(self.run_id)
        if self.lane not in LANES:
            raise InvalidInput(
                f"lane {self.lane!r} of run {self.run_id} is invalid: it must be one of "
                f"{', '.join(LANES)}"
            )
        validate_recipe(self.recipe)
        if self.ref is not None:
            _validate_spec_ref(self.ref)
        if self.canonical is not None:
            validate_recipe(self.canonical)
        at = self.enqueued_at
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) \
                or at < 0:
            raise InvalidInput(
                f"enqueued_at {at!r} of run {self.run_id} is invalid: it must be a finite "
                "number of epoch seconds >= 0"
            )
        object.__setattr__(self, "enqueued_at", float(at))

    def to_json(self) -> str:
        """The spec as a JSON object (for Celery task arguments and logs)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str | bytes) -> RunSpec:
        """Parse ``to_json`` output; anything else raises ``InvalidInput``."""
        try:
            data = json.loads(s)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"run spec {s!r:.200} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"run spec {s!r:.200} is not a JSON object")
        return cls._from_mapping(data, f"run spec {s!r:.200}")

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], what: str) -> RunSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted({"run_id", "lane", "recipe"} - set(data))
        if unknown or missing:
            raise InvalidInput(
                f"{what} is invalid: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown fields {unknown}" if unknown else "",
                        f"missing fields {missing}" if missing else "",
                    )
                    if part
                )
                + f"; expected the fields {sorted(known)}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"{what} is invalid: {exc}") from exc

    def _hash_fields(self) -> dict[str, str]:
        out = {"run_id": self.run_id, "lane": self.lane, "recipe": self.recipe,
               "enqueued_at": repr(self.enqueued_at)}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.canonical is not None:
            out["canonical"] = self.canonical
        return out

    @classmethod
    def _from_hash(cls, raw: Mapping[str, str]) -> RunSpec:
        data: dict[str, Any] = dict(raw)
        if "enqueued_at" in data:
            try:
                data["enqueued_at"] = float(data["enqueued_at"])
            except ValueError as exc:
                raise InvalidInput(f"stored run spec {raw!r} has a bad enqueued_at") from exc
        return cls._from_mapping(data, f"stored run spec {raw!r}")


@dataclass(frozen=True)
class Lease:
    """A live slot lease (for ``ccci status``)."""

    run_id: str
    expires_at: float
    spec: RunSpec | None


# --- Lua ----------------------------------------------------------------------------------

# Shared prologue. KEYS[1] leases zset, KEYS[2] expired zset, KEYS[3] pending list;
# ARGV[1] now, ARGV[2] run-spec key prefix, ARGV[3] canonical-lock key prefix.
_LUA_SWEEP = """
local leases, expired, pending, reaping = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, spec_prefix, canon_prefix = ARGV[1], ARGV[2], ARGV[3]

local function unlock_canonical(id)
  local canon = redis.call('HGET', spec_prefix .. id, 'canonical')
  if canon then
    local lock = canon_prefix .. canon
    if redis.call('GET', lock) == id then redis.call('DEL', lock) end
  end
end

-- A run holds its slot and canonical while it has a live lease, and after its lease expired
-- until the janitor has cleaned up what it left (expired, then reaping, then finish_reap).
local function occupying(id)
  return redis.call('ZSCORE', leases, id) or redis.call('ZSCORE', expired, id)
    or redis.call('ZSCORE', reaping, id)
end

-- leases whose expiry passed (expiry <= now) move to the expired zset for the janitor;
-- they keep their slot and canonical until finish_reap
local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'WITHSCORES')
for i = 1, #dead, 2 do
  redis.call('ZADD', expired, dead[i + 1], dead[i])
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end
"""

# ARGV[4] expiry of new leases, ARGV[5] max_tests. Returns {{run_id, HGETALL spec}, ...}.
_LUA_ADMIT = _LUA_SWEEP + """
local expiry, max_tests = ARGV[4], tonumber(ARGV[5])
local n = redis.call('ZCARD', leases) + redis.call('ZCARD', expired)
  + redis.call('ZCARD', reaping)
local out = {}
if n >= max_tests then return out end
for _, id in ipairs(redis.call('LRANGE', pending, 0, -1)) do
  if n >= max_tests then break end
  local key = spec_prefix .. id
  if redis.call('EXISTS', key) == 0 or redis.call('ZSCORE', leases, id) then
    redis.call('LREM', pending, 1, id)  -- forgotten spec or already admitted: drop the entry
  else
    local canon = redis.call('HGET', key, 'canonical')
    local lock = canon and (canon_prefix .. canon)
    local holder = lock and redis.call('GET', lock)
    if not (holder and occupying(holder)) then
      redis.call('ZADD', leases, expiry, id)
      if lock then redis.call('SET', lock, id) end
      redis.call('LREM', pending, 1, id)
      n = n + 1
      out[#out + 1] = {id, redis.call('HGETALL', key)}
    end
  end
end
return out
"""

# ARGV[4] run_id, ARGV[5] new expiry. Returns 1 if a live lease was extended, else 0.
_LUA_RENEW = _LUA_SWEEP + """
local id, expiry = ARGV[4], ARGV[5]
local score = redis.call('ZSCORE', leases, id)
if not score then return 0 end
if tonumber(expiry) > tonumber(score) then redis.call('ZADD', leases, 'XX', expiry, id) end
return 1
"""

# ARGV[4] run_id. Returns 1 if a live lease was dropped, else 0.
_LUA_RELEASE = _LUA_SWEEP + """
local id = ARGV[4]
local removed = redis.call('ZREM', leases, id)
if not occupying(id) then unlock_canonical(id) end  -- an expired run's is the janitor's
return removed
"""

# Returns {{run_id, HGETALL spec}, ...} of every expired lease, in expiry order, once; they
# move to the reaping zset (scored by hand-out time) and keep their slot until finish_reap.
_LUA_REAP = _LUA_SWEEP + """
local out = {}
local gone = redis.call('ZRANGE', expired, 0, -1)
for _, id in ipairs(gone) do
  out[#out + 1] = {id, redis.call('HGETALL', spec_prefix .. id)}
  redis.call('ZADD', reaping, now, id)
end
redis.call('DEL', expired)
return out
"""

# ARGV[4] run_id. Frees the slot and canonical of a reaped run. Returns 1 if it was reaping.
_LUA_FINISH_REAP = _LUA_SWEEP + """
local id = ARGV[4]
local removed = redis.call('ZREM', reaping, id)
if not occupying(id) then unlock_canonical(id) end
redis.call('DEL', spec_prefix .. id)
return removed
"""

# KEYS[1] pending list, KEYS[2] spec hash; ARGV[1] run_id, ARGV[2..] field/value pairs.
# Returns {1} if stored and appended, {0, HGETALL existing} if the run was already known.
_LUA_ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, redis.call('HGETALL', KEYS[2])}
end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
redis.call('RPUSH', KEYS[1], ARGV[1])
return {1}
"""


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[object]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


# --- slots --------------------------------------------------------------------------------


class Slots:
    """MAX_TESTS run slots and canonical locks in Redis; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        max_tests: int,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_tests, bool) or not isinstance(max_tests, int) or max_tests < 1:
            raise InvalidInput(f"max_tests {max_tests!r} is invalid: it must be an int >= 1")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) \
                or not math.isfinite(ttl_s) or ttl_s <= 0:
            raise InvalidInput(f"lease ttl_s {ttl_s!r} is invalid: it must be a number > 0")
        self._client = client
        self._max_tests = max_tests
        self._ttl_s = float(ttl_s)
        self._clock = clock
        self._admit = client.register_script(_LUA_ADMIT)
        self._renew = client.register_script(_LUA_RENEW)
        self._release = client.register_script(_LUA_RELEASE)
        self._reap = client.register_script(_LUA_REAP)
        self._finish_reap = client.register_script(_LUA_FINISH_REAP)
        self._enqueue = client.register_script(_LUA_ENQUEUE)

    @classmethod
    def from_settings(cls, settings: Settings) -> Slots:
        """Slots on the broker Redis with ``max_tests`` and ``lease_ttl_s`` from settings."""
        client = redis.Redis.from_url(
            settings.broker_url.get_secret_value(),
            socket_connect_timeout=10,
            socket_timeout=30,
            health_check_interval=30,
        )
        return cls(client, settings.max_tests, settings.lease_ttl_s)

    @property
    def max_tests(self) -> int:
        return self._max_tests

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    # --- plumbing -------------------------------------------------------------------------

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            place = f"unix:{kwargs['path']}"
        else:
            place = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return f"{place}/{kwargs.get('db', 0)}"

    @contextmanager
    def _broker(self, what: str) -> Iterator[None]:
        """Translate Redis errors into ``BrokerError`` naming the host, never the password."""
        try:
            yield
        except RedisError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            password = self._client.connection_pool.connection_kwargs.get("password")
            leaks = bool(password) and str(password) in detail
            if leaks:
                detail = detail.replace(str(password), "***")
            error = BrokerError(
                f"Redis at {self._where()} failed while {what}: {detail}; check that "
                "redis-server is running and CCCI_BROKER_URL points at it"
            )
            if leaks:  # do not chain an exception whose text holds the password
                raise error from None
            raise error from exc

    def _script_args(self, now: float) -> tuple[list[str], list[str]]:
        keys = [c.KEY_SLOTS, KEY_EXPIRED, c.KEY_PENDING, KEY_REAPING]
        return keys, [repr(now), c.KEY_RUN_SPEC, c.KEY_CANON_LOCK]

    def _now(self) -> float:
        return float(self._clock())

    @staticmethod
    def _spec_or_none(run_id: str, raw: Mapping[str, str]) -> RunSpec | None:
        if not raw:
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
        with self._broker(what):
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
        stamped = replace(spec, enqueued_at=self._now())
        args: list[str] = [stamped.run_id]
        for key, value in stamped._hash_fields().items():
            args += [key, value]
        with self._broker(f"enqueueing run {spec.run_id}"):
            reply = cast(list[Any], self._enqueue(
                keys=[c.KEY_PENDING, c.KEY_RUN_SPEC + spec.run_id], args=args))
        if int(reply[0]) == 1:
            log.info("run %s (%s %s) enqueued", spec.run_id, spec.lane, spec.recipe)
            return stamped
        stored = RunSpec._from_hash(_pairs(reply[1]))
        if replace(stored, enqueued_at=0.0) != replace(spec, enqueued_at=0.0):
            raise InvalidInput(
                f"run {spec.run_id} is already enqueued with a different spec "
                f"(stored {stored.to_json()}, given {spec.to_json()}); use a new run id"
            )
        return stored

    def admit(self) -> list[RunSpec]:
        """Lease free slots to pending runs in FIFO order; return the runs to start.

        Atomically drops expired leases (kept for ``reap_expired``), then walks the FIFO and
        admits every run that fits: fewer than ``max_tests`` live leases and its canonical
        (if any) not held by a live lease. Runs that do not fit keep their place. Never waits.
        """
        now = self._now()
        keys, args = self._script_args(now)
        args += [repr(now + self._ttl_s), str(self._max_tests)]
        with self._broker("admitting pending runs"):
            reply = self._admit(keys=keys, args=args)
        admitted = self._specs_from_script(reply, "was admitted")
        for spec in admitted:
            log.info("run %s (%s %s) admitted", spec.run_id, spec.lane, spec.recipe)
        return admitted

    def renew(self, run_id: str) -> bool:
        """Extend the run's lease to now + ttl. False if it holds none (expired or released);
        a lease is never re-created here."""
        rid = _validate_run_id(run_id)
        now = self._now()
        keys, args = self._script_args(now)
        args += [rid, repr(now + self._ttl_s)]
        with self._broker(f"renewing the lease of run {rid}"):
            return int(cast(int, self._renew(keys=keys, args=args))) == 1

    def release(self, run_id: str) -> bool:
        """Drop the run's lease and canonical lock (idempotent). True if a live lease was
        dropped. The spec is kept until ``forget``."""
        rid = _validate_run_id(run_id)
        keys, args = self._script_args(self._now())
        args += [rid]
        with self._broker(f"releasing the lease of run {rid}"):
            released = int(cast(int, self._release(keys=keys, args=args))) == 1
        if released:
            log.info("run %s released its slot", rid)
        return released

    def holds(self, run_id: str) -> bool:
        """True if the run holds a live (unexpired) lease."""
        rid = _validate_run_id(run_id)
        with self._broker(f"reading the lease of run {rid}"):
            score = self._client.zscore(c.KEY_SLOTS, rid)
        return score is not None and score > self._now()

    def leases(self) -> list[Lease]:
        """Live leases, soonest expiry first (for ``ccci status``)."""
        now = self._now()
        with self._broker("listing leases"):
            rows = cast(list[tuple[Any, float]], self._client.zrangebyscore(
                c.KEY_SLOTS, f"({now!r}", "+inf", withscores=True))
        ids = [_s(member) for member, _ in rows]
        specs = self._read_specs(ids, "reading the specs of leased runs")
        return [Lease(run_id, float(score), spec)
                for run_id, (_, score), spec in zip(ids, rows, specs, strict=True)]

    def pending(self) -> list[RunSpec]:
        """The pending runs, head of the FIFO first."""
        with self._broker("listing pending runs"):
            ids = [_s(x) for x in cast(list[Any], self._client.lrange(c.KEY_PENDING, 0, -1))]
        specs = self._read_specs(ids, "reading the specs of pending runs")
        return [spec for spec in specs if spec is not None]

    def spec(self, run_id: str) -> RunSpec | None:
        """The stored spec of a run, or None if unknown or forgotten."""
        rid = _validate_run_id(run_id)
        return self._read_specs([rid], f"reading the spec of run {rid}")[0]

    def cancel(self, run_id: str) -> bool:
        """Remove a pending run from the FIFO. True if it was pending."""
        rid = _validate_run_id(run_id)
        with self._broker(f"cancelling pending run {rid}"):
            removed = int(self._client.lrem(c.KEY_PENDING, 0, rid))
        return removed > 0

    def reap_expired(self) -> list[RunSpec]:
        """Hand every lease whose expiry passed to the caller (the janitor), soonest expiry
        first. Atomic: each expired run is returned exactly once, even to concurrent janitors.
        A reaped run keeps its slot and canonical until ``finish_reap``: what it left is
        still live until the janitor has removed it."""
        keys, args = self._script_args(self._now())
        with self._broker("reaping expired leases"):
            reply = self._reap(keys=keys, args=args)
        reaped = self._specs_from_script(reply, "lease expired")
        for spec in reaped:
            log.warning("run %s (%s %s): lease expired", spec.run_id, spec.lane, spec.recipe)
        return reaped

    def reaping(self) -> list[tuple[str, RunSpec | None]]:
        """Runs handed to the janitor and not yet cleaned up (they still hold a slot), with
        their specs (None when the run forgot its spec itself)."""
        with self._broker("listing reaped runs"):
            ids = [_s(x) for x in cast(list[Any], self._client.zrange(KEY_REAPING, 0, -1))]
        specs = self._read_specs(ids, "reading the specs of reaped runs")
        return list(zip(ids, specs, strict=True))

    def finish_reap(self, run_id: str) -> bool:
        """The janitor cleaned up after a reaped run: free its slot and canonical and drop
        its spec. True if the run was being reaped."""
        rid = _validate_run_id(run_id)
        keys, args = self._script_args(self._now())
        args += [rid]
        with self._broker(f"finishing the reap of run {rid}"):
            done = int(cast(int, self._finish_reap(keys=keys, args=args))) == 1
        if done:
            log.info("run %s: cleaned up after its expired lease; slot freed", rid)
        return done

    def forget(self, run_id: str) -> None:
        """Drop the stored spec (after release/cancel and cleanup are done)."""
        rid = _validate_run_id(run_id)
        with self._broker(f"forgetting run {rid}"):
            self._client.delete(c.KEY_RUN_SPEC + rid)

    @contextmanager
    def keep_alive(self, run_id: str, interval_s: float | None = None) -> Iterator[None]:
        """Renew the run's lease from a daemon thread every ``interval_s`` (default ttl/3)
        while the block runs; the thread stops on exit. If the lease is lost the thread logs
        and stops renewing (the next ``renew`` of the lane returns False)."""
        rid = _validate_run_id(run_id)
        interval = self._ttl_s / 3 if interval_s is None else interval_s
        if isinstance(interval, bool) or not isinstance(interval, int | float) \
                or not 0 < interval < self._ttl_s:
            raise InvalidInput(
                f"keep_alive interval_s {interval_s!r} is invalid: it must be > 0 and below "
                f"the lease ttl ({self._ttl_s:g} s), or the lease expires between renewals"
            )
        stop = threading.Event()

        def renew_loop() -> None:
            while not stop.wait(interval):
                try:
                    if not self.renew(rid):
                        log.warning("run %s: lease lost (expired or released); "
                                    "keep_alive stops renewing", rid)
                        return
                except Exception as exc:  # keep trying: the lease may still be alive
                    log.warning("run %s: lease renewal failed: %s", rid, exc)

        thread = threading.Thread(target=renew_loop, name=f"ccci-lease-{rid[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=max(5.0, interval))
