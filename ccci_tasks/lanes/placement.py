"""Where a run goes when several hosts share the broker (R15), and waking the nodes.

Read from the node registry (``ccci_tasks.nodes``): a quick run goes to the live node that
holds a usable canonical of its recipe; every other run goes to whichever live node has the
most free slots (admission decides, at the moment a slot frees). A green cold run promotes
where it ran unless the canonical already lives on another live node (``lanes/cold.py``); a
cold run on a node without the recipe's canonical has no known-good to upgrade from there, so
its upgrade tier is skipped, as on a host that never seeded it. With no node beating (one
host whose runs worker predates the registry, or a broker flushed a moment ago) nothing is
pinned: the run goes to whoever admits it, as on one host.
"""

from __future__ import annotations

import logging

from ccci_tasks import broker, enqueue, nodes
from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError
from ccci_tasks.naming import Recipe

log = logging.getLogger(__name__)


def registry(settings: Settings) -> list[nodes.NodeState] | None:
    """Every node of the registry, or None when it cannot be read (then place nothing)."""
    try:
        return nodes.read_nodes(broker.client(settings), settings.lease_ttl_s)
    except CcciError as exc:
        log.warning("could not read the nodes: %s", exc)
        return None


def canonical_home(settings: Settings, recipe: Recipe) -> str | None:
    """The live node that publishes a usable canonical of ``recipe``, if any."""
    found = registry(settings)
    return nodes.canonical_node(found, recipe) if found else None


def canonical_homes(settings: Settings, recipe: Recipe) -> list[str]:
    """Every live node that publishes a usable canonical of ``recipe``, by name."""
    return [n.node for n in nodes.live_nodes(registry(settings) or [])
            if recipe in n.canonicals]


def here(settings: Settings) -> str | bool | None:
    """Where a run that needs this host's canonical goes: this node when it is a live node
    of the registry (it runs a runs worker); None when no node beats (one host, as before:
    whoever admits it); False when other nodes beat and this one does not (its runs worker
    is gone: nothing here can run it)."""
    live = nodes.live_nodes(registry(settings) or [])
    if not live:
        return None
    return settings.node if any(n.node == settings.node for n in live) else False


def wake(settings: Settings, pin: str | None = None) -> list[str]:
    """Ask the other live nodes a queued run may go to (``pin``, or all) to admit now: a
    ``dispatch`` task on each one's ``runs.<node>``. Best effort: a lost wake-up costs the run
    one janitor round. Returns the nodes woken."""
    woken = []
    for node in nodes.live_nodes(registry(settings) or []):
        if node.node == settings.node or (pin is not None and node.node != pin):
            continue
        try:
            enqueue.send(enqueue.Call(c.task_name(c.QUEUE_RUNS, "dispatch")),
                         queue=c.runs_queue(node.node), ignore_result=True)
            woken.append(node.node)
        except Exception as exc:  # broker trouble: the janitor's round wakes it
            log.warning("could not wake node %s: %s", node.node, exc)
    return woken
