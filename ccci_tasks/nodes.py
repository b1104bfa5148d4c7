"""The node registry (R15): the hosts that share this broker, and what each publishes.

A node is a host with its own Docker engine in swarm mode, its own state root and its own
runs worker (queue ``runs.<node>``). The runs worker of each node *beats* every
``CCCI_NODE_BEAT_S``: one script, on the server's clock, writes ``constants.KEY_NODES`` (zset
node -> last beat) and ``constants.KEY_NODE + node`` (hash: ``max_tests``, ``live`` apps,
``canonicals`` it holds usable, ``workers``, ``seen``). A node with no beat for the lease TTL
is ``lost``. Admission (``admission/lua/admit.lua``) reads the same keys to place runs and
count MAX_TESTS per node; placement reads ``canonicals`` to send a quick run where its
canonical lives. Every beat rewrites everything, so a flushed broker knows every live node
again within one beat.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import redis
from redis.exceptions import RedisError

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.admission.spec import NODE_RE, Lease
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Recipe

__all__ = [
    "NodeState",
    "beat",
    "canonical_node",
    "free_slots",
    "live_nodes",
    "publish_canonical",
    "read_nodes",
    "runs_queue",
]

log = logging.getLogger(__name__)

State = Literal["up", "lost"]
_LIVE_RE: Final = re.compile(r"cold:[0-9a-f]{6}|warm:[a-z0-9][a-z0-9_-]{0,62}")
_RECIPE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_WORKER_RE: Final = re.compile(r"[A-Za-z0-9@._-]{1,200}")
# KEYS: 1 nodes zset, 2 this node's hash. ARGV: 1 node, 2 max_tests, 3 live, 4 canonicals,
# 5 workers. Returns the server time of the beat.
_BEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'max_tests', ARGV[2], 'live', ARGV[3], 'canonicals', ARGV[4],
           'workers', ARGV[5], 'seen', tostring(now))
return tostring(now)
"""


def runs_queue(node: str) -> str:
    """The queue of ``node``'s runs worker: every step of a run admitted there goes to it."""
    if not NODE_RE.fullmatch(node):
        raise InvalidInput(f"node {node!r} is invalid: expected 1-63 of [a-z0-9-] (CCCI_NODE)")
    return c.runs_queue(node)


@dataclass(frozen=True)
class NodeState:
    """One node as the registry shows it; ``slots_in_use`` counts runs admitted there that hold
    a slot plus its live apps no run explains (as admission counts them)."""

    node: str
    state: State
    seen: float  # server seconds of its last beat
    max_tests: int
    slots_in_use: int
    live: tuple[str, ...]
    canonicals: tuple[Recipe, ...]
    workers: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"node": self.node, "state": self.state, "slots_in_use": self.slots_in_use,
                "max_tests": self.max_tests, "workers": list(self.workers),
                "canonicals": list(self.canonicals), "seen": self.seen}


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _items(raw: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    return tuple(x for x in raw.split(",") if x and pattern.fullmatch(x))


def beat(client: redis.Redis, node: str, max_tests: int, live: Iterable[str],
         canonicals: Iterable[Recipe], workers: Iterable[str]) -> float:
    """Publish this node: it is up, how many slots it has, what is live on its engine, the
    canonicals it holds usable. Returns the server time of the beat."""
    runs_queue(node)  # validates the name
    lists = []
    for what, values, pattern in (("live app", live, _LIVE_RE),
                                  ("canonical", (str(Recipe(r)) for r in canonicals), None),
                                  ("worker", workers, _WORKER_RE)):
        items = []
        for value in values:
            if pattern is not None and not pattern.fullmatch(value):
                raise InvalidInput(f"{what} {value!r} of node {node} is invalid")
            items.append(value)
        lists.append(",".join(sorted(set(items))))
    with broker.failures(client, f"node {node} beat into the broker"):
        # EVALSHA (the script's text crosses the wire once per connection's server, not
        # every beat)
        reply = client.register_script(_BEAT)(keys=[c.KEY_NODES, c.KEY_NODE + node],
                                              args=[node, int(max_tests), *lists])
    return float(_s(reply))


_PUBLISH: Final = """
local raw = redis.call('HGET', KEYS[1], 'canonicals')
if not raw then return 0 end
for r in string.gmatch(raw, '[^,]+') do
  if r == ARGV[1] then return 0 end
end
redis.call('HSET', KEYS[1], 'canonicals', raw == '' and ARGV[1] or raw .. ',' .. ARGV[1])
return 1
"""


def publish_canonical(client: redis.Redis, node: str, recipe: Recipe) -> None:
    """Add ``recipe`` to the canonicals ``node`` publishes, now (a promotion), rather than at
    its next beat (which rewrites the whole list). A node not in the registry is left alone;
    a broker error is logged: the next beat publishes it anyway."""
    runs_queue(node)
    try:
        client.eval(_PUBLISH, 1, c.KEY_NODE + node, str(Recipe(recipe)))
    except RedisError as exc:
        log.warning("node %s: could not publish the canonical of %s now (%s); its next beat "
                    "does", node, recipe, exc)


def read_nodes(client: redis.Redis, lost_after_s: float,
               occupying: Sequence[Lease] = ()) -> list[NodeState]:
    """Every node that ever beat (until the registry is flushed), ``up`` or ``lost``, by name.
    ``occupying`` (``Slots.occupying()``) gives the runs that hold slots on each node."""
    with broker.failures(client, "reading the nodes"):
        seconds, micros = client.time()
        pairs = cast(list[tuple[bytes, float]],
                     client.zrange(c.KEY_NODES, 0, -1, withscores=True))
        pipe = client.pipeline(transaction=False)
        names = [_s(pair[0]) for pair in pairs]
        for name in names:
            pipe.hgetall(c.KEY_NODE + name)
        hashes = pipe.execute()
    now = seconds + micros / 1e6
    hexes = {lease.run_id[:6] for lease in occupying}
    held = {r.name for lease in occupying if lease.spec for r in lease.spec.resources
            if r.kind == "canon"}
    out = []
    for name, pair, raw in zip(names, pairs, hashes, strict=True):
        seen = pair[1]
        fields = {_s(k): _s(v) for k, v in raw.items()}
        live = _items(fields.get("live", ""), _LIVE_RE)
        in_use = sum(1 for lease in occupying
                     if lease.spec and lease.spec.holds_slot and lease.spec.node == name)
        for app in live:
            kind, _, what = app.partition(":")
            if (kind == "cold" and what not in hexes) or (kind == "warm" and what not in held):
                in_use += 1
        try:
            max_tests = int(fields.get("max_tests", "1"))
        except ValueError:
            max_tests = 1
        out.append(NodeState(
            node=name, state="up" if now - float(seen) <= lost_after_s else "lost",
            seen=float(seen), max_tests=max_tests, slots_in_use=in_use, live=live,
            canonicals=tuple(Recipe(r) for r in _items(fields.get("canonicals", ""), _RECIPE_RE)),
            workers=_items(fields.get("workers", ""), _WORKER_RE)))
    return sorted(out, key=lambda n: n.node)


def live_nodes(nodes: Sequence[NodeState]) -> list[NodeState]:
    return [n for n in nodes if n.state == "up"]


def free_slots(node: NodeState) -> int:
    return max(0, node.max_tests - node.slots_in_use)


def canonical_node(nodes: Sequence[NodeState], recipe: Recipe) -> str | None:
    """The live node that publishes a usable canonical of ``recipe`` (the first by name when
    several do), or None when none does."""
    for node in live_nodes(nodes):
        if recipe in node.canonicals:
            return node.node
    return None
