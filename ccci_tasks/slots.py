"""Run admission with fenced leases in Redis: MAX_TESTS slots and exclusive resources.

A run names the *resources* it holds from its first step to its last (its lane declares
them, see ``ccci_tasks.lanes``):

* ``slot`` - one of the MAX_TESTS run slots (R9.1); counted, not exclusive;
* ``canon:<recipe>`` - the recipe's data-warm canonical (R6.8); exclusive;
* ``infra:<app>:shared`` / ``infra:<app>:excl`` - a live-warm app: shared by runs whose recipe
  depends on it, exclusive for the app's reconcile;
* ``sweep`` - the nightly sweep; exclusive.

``enqueue`` puts a run in a FIFO of pending runs; ``admit`` walks the FIFO and admits every
run whose resources are all free, taking all of them or none, in one Lua script (atomic). A
run that does not fit keeps its place; unrelated runs behind it go ahead. Nothing here ever
blocks or waits: whoever frees something (a finishing run, the janitor) calls ``admit``
again.

Leases and fencing
------------------
An admitted run gets a lease (expiry in a zset) and a *fencing token* that only grows (a
counter floored at the server's clock in milliseconds, so it keeps growing even after the
keys were flushed). Until its first step starts, the lease lasts ``start_grace_s`` (the step
may wait in the queue behind another run's step, or for a worker that is down; past the
grace the run is simply queued again); the first ``renew`` starts the TTL proper,
and every step renews it when it starts and before each platform mutation (``renew`` is the
fence check). A lease whose expiry passed is lost for good: ``renew`` never revives it, so a
step that was stopped past its lease cannot act any more; the janitor gets the run from
``reap_expired`` and cleans up after it.

Time is the Redis server's clock (``TIME`` inside the scripts), so workers with skewed
clocks agree on expiry. Tests may inject a ``clock`` instead.

The engine is the truth about what is live: ``admit`` takes the live apps of this system
(``cold:<hex>``, ``warm:<recipe>``) as observed by the caller. A live app that no occupying
run explains counts against MAX_TESTS, and a deployed canonical no run holds keeps its
``canon:`` resource busy, until the janitor has reaped it.

A run whose lease expired keeps occupying its resources (``expired``, then ``reaping``)
until the janitor has removed what it left and calls ``finish_reap``. The janitor can also
hold resources itself while it cleans up after a run Redis forgot (``hold``).

Redis keys (all under ``constants.REDIS_PREFIX``): ``KEY_SLOTS`` zset run_id -> expiry;
``KEY_EXPIRED`` and ``KEY_REAPING`` zsets; ``KEY_PENDING`` list (head = oldest);
``KEY_PARKED`` set of runs that wait for their child runs without holding anything;
``KEY_RUN_SPEC + run_id`` hash of the spec plus ``token`` and ``started``; ``KEY_FENCE``
counter. Every state change is one Lua script on the single Redis instance.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final, cast

import redis
from redis.exceptions import RedisError

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.errors import BrokerError, InvalidInput
from ccci_tasks.naming import validate_recipe, validate_ref, validate_run_id

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

__all__ = [
    "KEY_EXPIRED",
    "KEY_REAPING",
    "Lease",
    "RunSpec",
    "Slots",
    "validate_resource",
]

log = logging.getLogger(__name__)

KEY_EXPIRED: Final = c.KEY_SLOTS + ":expired"
KEY_REAPING: Final = c.KEY_SLOTS + ":reaping"
KEY_PARKED: Final = c.KEY_PENDING + ":parked"  # set of runs waiting for their child runs
SLOT: Final = "slot"

_LANE_RE: Final = re.compile(r"[a-z][a-z-]{0,30}")
_RESOURCE_RE: Final = re.compile(
    r"slot|sweep|canon:[a-z0-9][a-z0-9_-]{0,62}|infra:[a-z0-9][a-z0-9_-]{0,62}:(?:shared|excl)"
)
_LIVE_RE: Final = re.compile(r"cold:[0-9a-f]{6}|warm:[a-z0-9][a-z0-9_-]{0,62}")


def validate_resource(resource: object) -> str:
    """A resource name: ``slot``, ``sweep``, ``canon:<recipe>``, ``infra:<app>:shared|excl``."""
    if not isinstance(resource, str) or not _RESOURCE_RE.fullmatch(resource):
        raise InvalidInput(
            f"resource {resource!r} is invalid: expected slot, sweep, canon:<recipe> or "
            "infra:<app>:shared|excl"
        )
    return resource


# --- run specs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What a pending or running run is: enough to start its lane and to clean up after it."""

    run_id: str  # a Celery task id (uuid4 string)
    lane: str  # a lane name of ``ccci_tasks.lanes``
    recipe: str  # the recipe (or live-warm app) under test
    ref: str | None = None
    resources: tuple[str, ...] = ()
    parent: str | None = None  # the run that started this one (a sweep), if any
    enqueued_at: float = 0.0  # epoch seconds, set by Slots.enqueue
    token: int = 0  # fencing token, set at admission

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        if not isinstance(self.lane, str) or not _LANE_RE.fullmatch(self.lane):
            raise InvalidInput(
                f"lane {self.lane!r} of run {self.run_id} is invalid: expected a lane name "
                "such as quick, cold, reconcile or sweep"
            )
        validate_recipe(self.recipe)
        if self.ref is not None:
            validate_ref(self.ref)
        resources = tuple(self.resources)
        for resource in resources:
            validate_resource(resource)
        object.__setattr__(self, "resources", resources)
        if self.parent is not None:
            validate_run_id(self.parent)
        at = self.enqueued_at
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) \
                or at < 0:
            raise InvalidInput(
                f"enqueued_at {at!r} of run {self.run_id} is invalid: it must be a finite "
                "number of epoch seconds >= 0"
            )
        object.__setattr__(self, "enqueued_at", float(at))
        if isinstance(self.token, bool) or not isinstance(self.token, int) or self.token < 0:
            raise InvalidInput(f"token {self.token!r} of run {self.run_id} is invalid")

    @property
    def canonical(self) -> str | None:
        """The recipe whose canonical this run holds, if any."""
        for resource in self.resources:
            if resource.startswith("canon:"):
                return resource.removeprefix("canon:")
        return None

    def to_json(self) -> str:
        """The spec as a JSON object (for Celery task arguments and logs)."""
        data = asdict(self)
        data["resources"] = list(self.resources)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, s: str | bytes) -> RunSpec:
        """Parse ``to_json`` output; anything else raises ``InvalidInput``."""
        try:
            data = json.loads(s)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"run spec {s!r:.200} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"run spec {s!r:.200} is not a JSON object")
        if isinstance(data.get("resources"), list):
            data["resources"] = tuple(data["resources"])
        return cls._from_mapping(data, f"run spec {s!r:.200}")

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], what: str) -> RunSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted({"run_id", "lane", "recipe"} - set(data))
        if unknown or missing:
            parts = [f"unknown fields {unknown}" if unknown else "",
                     f"missing fields {missing}" if missing else ""]
            raise InvalidInput(f"{what} is invalid: {'; '.join(p for p in parts if p)}; "
                               f"expected the fields {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"{what} is invalid: {exc}") from exc

    def _hash_fields(self) -> dict[str, str]:
        out = {"run_id": self.run_id, "lane": self.lane, "recipe": self.recipe,
               "resources": ",".join(self.resources), "enqueued_at": repr(self.enqueued_at)}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.parent is not None:
            out["parent"] = self.parent
        return out

    @classmethod
    def _from_hash(cls, raw: Mapping[str, str]) -> RunSpec:
        data: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("started", "holder")}
        try:
            if "enqueued_at" in data:
                data["enqueued_at"] = float(data["enqueued_at"])
            if "token" in data:
                data["token"] = int(data["token"])
        except ValueError as exc:
            raise InvalidInput(f"stored run spec {raw!r} has a bad number") from exc
        data["resources"] = tuple(r for r in data.get("resources", "").split(",") if r)
        return cls._from_mapping(data, f"stored run spec {raw!r}")


@dataclass(frozen=True)
class Lease:
    """A run that occupies resources: live (``state`` ``live``) or dead and not yet cleaned
    up (``expired``, ``reaping``)."""

    run_id: str
    expires_at: float
    spec: RunSpec | None
    state: str = "live"
    started: bool = True
    holder: str | None = None  # "<node> <pid> <start>" of the step acting for it, if any

    @property
    def node(self) -> str | None:
        """The node whose process last acted for the run."""
        return self.holder.split()[0] if self.holder else None


# --- Lua ----------------------------------------------------------------------------------

# KEYS: 1 leases, 2 expired, 3 pending, 4 reaping, 5 fence counter.
# ARGV: 1 now ('' = server clock), 2 run-spec key prefix.
_LUA_PROLOGUE = """
local leases, expired, pending, reaping, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local spec_prefix = ARGV[2]
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end

-- leases whose expiry passed move to the expired zset for the janitor; they keep their
-- resources until finish_reap
local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'WITHSCORES')
for i = 1, #dead, 2 do
  redis.call('ZADD', expired, dead[i + 1], dead[i])
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end

local function occupying_ids()
  local out = {}
  for _, set in ipairs({leases, expired, reaping}) do
    for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do out[#out + 1] = id end
  end
  return out
end

local function split(s)
  local t = {}
  for r in string.gmatch(s or '', '[^,]+') do t[#t + 1] = r end
  return t
end

local function conflict(a, b)
  if a == 'slot' or b == 'slot' then return false end
  if a == b then return string.sub(a, -7) ~= ':shared' end
  local pa = string.match(a, '^(infra:.+):%a+$')
  local pb = string.match(b, '^(infra:.+):%a+$')
  return pa ~= nil and pa == pb
end
"""

# ARGV: 3 ttl, 4 start grace, 5 max_tests, 6.. live apps ('cold:<hex>' / 'warm:<recipe>').
# Returns {{run_id, HGETALL spec}, ...} of the admitted runs.
_LUA_ADMIT = _LUA_PROLOGUE + """
local grace, max_tests = tonumber(ARGV[4]), tonumber(ARGV[5])
local held, slots_used = {}, 0
local hexes = {}
for _, id in ipairs(occupying_ids()) do
  local res = split(redis.call('HGET', spec_prefix .. id, 'resources'))
  for _, r in ipairs(res) do
    held[#held + 1] = r
    if r == 'slot' then slots_used = slots_used + 1 end
  end
  hexes[string.sub(id, 1, 6)] = true
end
-- live apps no occupying run explains
for i = 6, #ARGV do
  local kind, name = string.match(ARGV[i], '^(%a+):(.+)$')
  if kind == 'cold' and not hexes[name] then
    slots_used = slots_used + 1
  elseif kind == 'warm' then
    local canon = 'canon:' .. name
    local explained = false
    for _, r in ipairs(held) do if r == canon then explained = true end end
    if not explained then
      slots_used = slots_used + 1
      held[#held + 1] = canon
    end
  end
end

local out = {}
-- the resources of runs that wait earlier in the FIFO: a later run may not take one that
-- conflicts with them, so a waiting exclusive request is not starved by a stream of shared
-- ones (and the reverse)
local reserved = {}
for _, id in ipairs(redis.call('LRANGE', pending, 0, -1)) do
  local key = spec_prefix .. id
  if redis.call('EXISTS', key) == 0 or redis.call('ZSCORE', leases, id)
      or redis.call('ZSCORE', expired, id) or redis.call('ZSCORE', reaping, id) then
    redis.call('LREM', pending, 1, id)  -- forgotten, or already admitted: drop the entry
  else
    local want = split(redis.call('HGET', key, 'resources'))
    local fits = true
    local needs_slot = false
    for _, r in ipairs(want) do
      if r == 'slot' then needs_slot = true end
      for _, h in ipairs(held) do
        if conflict(r, h) then fits = false end
      end
      for _, h in ipairs(reserved) do
        if conflict(r, h) then fits = false end
      end
    end
    if needs_slot and slots_used >= max_tests then fits = false end
    if not fits then
      for _, r in ipairs(want) do reserved[#reserved + 1] = r end
    end
    if fits then
      local token = redis.call('INCR', fence)
      local floor = math.floor(now * 1000)
      if token < floor then
        redis.call('SET', fence, floor)
        token = floor
      end
      redis.call('HSET', key, 'token', token, 'started', 0)
      redis.call('ZADD', leases, now + grace, id)
      redis.call('LREM', pending, 1, id)
      for _, r in ipairs(want) do held[#held + 1] = r end
      if needs_slot then slots_used = slots_used + 1 end
      out[#out + 1] = {id, redis.call('HGETALL', key)}
    end
  end
end
return out
"""

# ARGV: 3 ttl, 4 run_id, 5 token, 6 holder ('' = unchanged). Returns 1 if the run holds a
# live lease with that token (then extended to now + ttl, which starts the TTL at the first
# renewal, and the holder "<node> <pid> <start>" recorded), else 0.
_LUA_RENEW = _LUA_PROLOGUE + """
local ttl, id, token, holder = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local score = redis.call('ZSCORE', leases, id)
if not score or tonumber(score) <= now then return 0 end
local key = spec_prefix .. id
if redis.call('HGET', key, 'token') ~= token then return 0 end
if holder ~= nil and holder ~= '' then redis.call('HSET', key, 'holder', holder) end
local started = redis.call('HGET', key, 'started')
if started == '1' and tonumber(score) > now + ttl then return 1 end
redis.call('ZADD', leases, now + ttl, id)
redis.call('HSET', key, 'started', 1)
return 1
"""

# ARGV: 3 run_id, 4 token ('' = any), 5 forget ('1': the spec goes too). Returns 1 if a live
# lease was dropped, else 0 and nothing changed. ``end`` forgets in the same step, so a stale
# end never frees (or forgets) what the janitor is still cleaning up (R13.1).
_LUA_RELEASE = _LUA_PROLOGUE + """
local id, token, forget = ARGV[3], ARGV[4], ARGV[5]
if not redis.call('ZSCORE', leases, id) then return 0 end
if token ~= '' and redis.call('HGET', spec_prefix .. id, 'token') ~= token then return 0 end
redis.call('ZREM', leases, id)
if forget == '1' then
  redis.call('DEL', spec_prefix .. id)
else
  redis.call('HDEL', spec_prefix .. id, 'token', 'started', 'holder')
end
return 1
"""

# ARGV: 3 run_id, 4 token. A launch failed: the lease goes and the run is first in line again.
_LUA_REQUEUE = _LUA_PROLOGUE + """
local id, token = ARGV[3], ARGV[4]
if not redis.call('ZSCORE', leases, id) then return 0 end
if redis.call('HGET', spec_prefix .. id, 'token') ~= token then return 0 end
redis.call('ZREM', leases, id)
redis.call('HDEL', spec_prefix .. id, 'token', 'started', 'holder')
redis.call('LPUSH', pending, id)
return 1
"""

# ARGV: 3 run_id, 4 token. The run waits for something else (its child runs): its lease and
# resources go, its spec stays, it is listed as parked until unpark puts it back in line.
_LUA_PARK = _LUA_PROLOGUE + """
local id, token = ARGV[3], ARGV[4]
if not redis.call('ZSCORE', leases, id) then return 0 end
if redis.call('HGET', spec_prefix .. id, 'token') ~= token then return 0 end
redis.call('ZREM', leases, id)
redis.call('HDEL', spec_prefix .. id, 'token', 'started', 'holder')
redis.call('SADD', KEYS[3] .. ':parked', id)
return 1
"""

# ARGV: 3 run_id. A parked run goes first in line again. Returns 1 if it was parked.
_LUA_UNPARK = _LUA_PROLOGUE + """
local id = ARGV[3]
if redis.call('SREM', KEYS[3] .. ':parked', id) == 0 then return 0 end
redis.call('LPUSH', pending, id)
return 1
"""

# Returns {{run_id, HGETALL spec}, ...} of every expired lease of a run that had started,
# once; they move to the reaping zset (scored by hand-out time) and keep their resources
# until finish_reap. A run whose first step never started left nothing behind: it goes back
# to the head of the FIFO (its token is dropped, so a late first step is fenced off).
_LUA_REAP = _LUA_PROLOGUE + """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', expired, 0, -1)) do
  local key = spec_prefix .. id
  if redis.call('HGET', key, 'started') == '0' then
    redis.call('HDEL', key, 'token', 'started', 'holder')
    redis.call('LPUSH', pending, id)
  else
    out[#out + 1] = {id, redis.call('HGETALL', key)}
    redis.call('ZADD', reaping, now, id)
  end
end
redis.call('DEL', expired)
return out
"""

# ARGV: 3 run_id. Frees the resources of a reaped run (or a janitor hold), drops its spec.
_LUA_FINISH_REAP = _LUA_PROLOGUE + """
local id = ARGV[3]
local removed = redis.call('ZREM', reaping, id)
redis.call('DEL', spec_prefix .. id)
return removed
"""

# ARGV: 3 hold id, 4.. field/value pairs. The janitor holds resources while it cleans up.
_LUA_HOLD = _LUA_PROLOGUE + """
local id = ARGV[3]
redis.call('HSET', spec_prefix .. id, unpack(ARGV, 4))
redis.call('ZADD', reaping, now, id)
return 1
"""

# ARGV: 3 run_id, 4.. field/value pairs. Returns {1} if stored and appended, {0, HGETALL}
# if the run was already known.
_LUA_ENQUEUE = _LUA_PROLOGUE + """
local id = ARGV[3]
local key = spec_prefix .. id
if redis.call('EXISTS', key) == 1 then
  return {0, redis.call('HGETALL', key)}
end
redis.call('HSET', key, 'enqueued_at', tostring(now), unpack(ARGV, 4))
redis.call('RPUSH', pending, id)
return {1, tostring(now)}
"""

# Returns {now, {id, score, state, HGETALL}...} of every occupying run.
_LUA_OCCUPYING = _LUA_PROLOGUE + """
local out = {tostring(now)}
for _, pair in ipairs({{leases, 'live'}, {expired, 'expired'}, {reaping, 'reaping'}}) do
  local rows = redis.call('ZRANGE', pair[1], 0, -1, 'WITHSCORES')
  for i = 1, #rows, 2 do
    out[#out + 1] = {rows[i], rows[i + 1], pair[2], redis.call('HGETALL', spec_prefix .. rows[i])}
  end
end
return out
"""


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[object]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


# --- slots --------------------------------------------------------------------------------


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
        self._clock = clock
        scripts = {
            "admit": _LUA_ADMIT, "renew": _LUA_RENEW, "release": _LUA_RELEASE,
            "requeue": _LUA_REQUEUE, "reap": _LUA_REAP, "finish_reap": _LUA_FINISH_REAP,
            "hold": _LUA_HOLD, "enqueue": _LUA_ENQUEUE, "occupying": _LUA_OCCUPYING,
            "park": _LUA_PARK, "unpark": _LUA_UNPARK,
        }
        self._scripts = {name: client.register_script(src) for name, src in scripts.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> Slots:
        """Slots on the broker Redis with the MAX_TESTS and lease settings."""
        client = broker.client(settings)
        return cls(client, settings.max_tests, settings.lease_ttl_s,
                   start_grace_s=settings.lease_start_grace_s)

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

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            place = f"unix:{kwargs['path']}"
        else:
            place = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return f"{place}/{kwargs.get('db', 0)}"

    @contextmanager
    def broker(self, what: str) -> Iterator[None]:
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

    def _call(self, name: str, what: str, *args: object) -> Any:
        keys = [c.KEY_SLOTS, KEY_EXPIRED, c.KEY_PENDING, KEY_REAPING, c.KEY_FENCE]
        now = "" if self._clock is None else repr(float(self._clock()))
        argv = [now, c.KEY_RUN_SPEC, *(str(a) for a in args)]
        with self.broker(what):
            return self._scripts[name](keys=keys, args=argv)

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
        if replace(stored, enqueued_at=0.0, token=0) != replace(spec, enqueued_at=0.0, token=0):
            raise InvalidInput(
                f"run {spec.run_id} is already enqueued with a different spec "
                f"(stored {stored.to_json()}, given {spec.to_json()}); use a new run id"
            )
        return stored

    def admit(self, live: Iterable[str] = ()) -> list[RunSpec]:
        """Lease free resources to pending runs in FIFO order; return the runs to start.

        ``live`` are the live apps of this system as observed on the engine (``cold:<hex>``
        for a deployed cold app, ``warm:<recipe>`` for a deployed canonical); those no
        occupying run explains count against MAX_TESTS (and keep their canonical busy).
        Each admitted run carries its fencing token. Never waits.
        """
        observed = []
        for item in live:
            if not isinstance(item, str) or not _LIVE_RE.fullmatch(item):
                raise InvalidInput(f"live app {item!r} is invalid: expected cold:<hex> or "
                                   "warm:<recipe>")
            observed.append(item)
        reply = self._call("admit", "admitting pending runs", self._ttl_s, self._grace_s,
                           self._max_tests, *observed)
        admitted = self._specs_from_script(reply, "was admitted")
        for spec in admitted:
            log.info("run %s (%s %s) admitted with token %d", spec.run_id, spec.lane,
                     spec.recipe, spec.token)
        return admitted

    def renew(self, run_id: str, token: int, holder: str = "") -> bool:
        """Check the run's lease and extend it to now + ttl (the fence check); with
        ``holder`` (``"<node> <pid> <start>"``), record who acts for the run now.

        False when the run holds no live lease with this token (expired, released, flushed
        or re-admitted): a lost lease is never revived here.
        """
        rid = validate_run_id(run_id)
        return int(self._call("renew", f"renewing the lease of run {rid}", self._ttl_s, rid,
                              int(token), holder)) == 1

    def end(self, run_id: str, token: int) -> bool:
        """The run ended: drop its lease and forget its spec in one step, only while it
        holds its live lease with ``token``. False (and nothing changed) otherwise."""
        rid = validate_run_id(run_id)
        ended = int(self._call("release", f"ending run {rid}", rid, int(token), "1")) == 1
        if ended:
            log.info("run %s released its resources and was forgotten", rid)
        return ended

    def release(self, run_id: str, token: int | None = None) -> bool:
        """Drop the run's live lease (with ``token``: only if it still holds that token).
        True if a live lease was dropped. The spec is kept until ``forget``."""
        rid = validate_run_id(run_id)
        released = int(self._call("release", f"releasing the lease of run {rid}", rid,
                                  "" if token is None else int(token), "0")) == 1
        if released:
            log.info("run %s released its resources", rid)
        return released

    def requeue(self, run_id: str, token: int) -> bool:
        """A run could not be launched: drop its lease and put it first in line again."""
        rid = validate_run_id(run_id)
        return int(self._call("requeue", f"requeueing run {rid}", rid, int(token))) == 1

    def park(self, run_id: str, token: int) -> bool:
        """The run waits for its child runs: it gives up its lease and resources (its spec
        stays) until ``unpark``. False if it holds no live lease with this token."""
        rid = validate_run_id(run_id)
        return int(self._call("park", f"parking run {rid}", rid, int(token))) == 1

    def unpark(self, run_id: str) -> bool:
        """Put a parked run first in line again (to be admitted and continued). True if it
        was parked."""
        rid = validate_run_id(run_id)
        return int(self._call("unpark", f"unparking run {rid}", rid)) == 1

    def parked(self) -> list[str]:
        """The parked runs."""
        with self.broker("listing parked runs"):
            return sorted(_s(x) for x in cast(set[Any], self._client.smembers(KEY_PARKED)))

    def holds(self, run_id: str, token: int | None = None) -> bool:
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
            out.append(Lease(run_id, score, self._spec_or_none(run_id, fields_), state,
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

    def spec(self, run_id: str) -> RunSpec | None:
        """The stored spec of a run, or None if unknown or forgotten."""
        rid = validate_run_id(run_id)
        return self._read_specs([rid], f"reading the spec of run {rid}")[0]

    def cancel(self, run_id: str) -> bool:
        """Remove a pending run from the FIFO. True if it was pending."""
        rid = validate_run_id(run_id)
        with self.broker(f"cancelling pending run {rid}"):
            removed = int(self._client.lrem(c.KEY_PENDING, 0, rid))
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

    def reaping(self) -> list[tuple[str, RunSpec | None]]:
        """Runs (and janitor holds) handed to the janitor and not yet cleaned up."""
        return [(x.run_id, x.spec) for x in self.occupying() if x.state == "reaping"]

    def hold(self, hold_id: str, recipe: str, resources: Sequence[str]) -> None:
        """The janitor holds ``resources`` (as a reaping entry ``hold_id``) while it cleans
        up after a run Redis no longer knows; ``finish_reap(hold_id)`` frees them."""
        spec = RunSpec(validate_run_id(hold_id), "janitor", recipe, resources=tuple(resources))
        args: list[str] = [spec.run_id]
        for key, value in spec._hash_fields().items():
            args += [key, value]
        self._call("hold", f"holding {', '.join(resources)} for the janitor", *args)

    def finish_reap(self, run_id: str) -> bool:
        """The janitor cleaned up after a reaped run (or a hold): free its resources and
        drop its spec. True if it was being reaped."""
        rid = validate_run_id(run_id)
        done = int(self._call("finish_reap", f"finishing the reap of run {rid}", rid)) == 1
        if done:
            log.info("run %s: cleaned up; its resources are free", rid)
        return done

    def forget(self, run_id: str) -> None:
        """Drop the stored spec (after release/cancel and cleanup are done)."""
        rid = validate_run_id(run_id)
        with self.broker(f"forgetting run {rid}"):
            self._client.delete(c.KEY_RUN_SPEC + rid)

    @contextmanager
    def keep_alive(
        self, run_id: str, token: int, interval_s: float | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> Iterator[threading.Event]:
        """Renew the run's lease from a daemon thread every ``interval_s`` (default ttl/3)
        while the block runs. Yields an event that is set once the lease is lost (then the
        thread stops renewing and calls ``on_lost``)."""
        rid = validate_run_id(run_id)
        interval = self._ttl_s / 3 if interval_s is None else interval_s
        if isinstance(interval, bool) or not isinstance(interval, int | float) \
                or not 0 < interval < self._ttl_s:
            raise InvalidInput(
                f"keep_alive interval_s {interval_s!r} is invalid: it must be > 0 and below "
                f"the lease ttl ({self._ttl_s:g} s), or the lease expires between renewals"
            )
        stop, lost = threading.Event(), threading.Event()

        def renew_loop() -> None:
            while not stop.wait(interval):
                try:
                    if not self.renew(rid, token):
                        log.warning("run %s: lease lost (expired, released or flushed); "
                                    "keep_alive stops renewing", rid)
                        lost.set()
                        if on_lost is not None:
                            on_lost()
                        return
                except Exception as exc:  # keep trying: the lease may still be alive
                    log.warning("run %s: lease renewal failed: %s", rid, exc)

        thread = threading.Thread(target=renew_loop, name=f"ccci-lease-{rid[:8]}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join(timeout=max(5.0, interval))


