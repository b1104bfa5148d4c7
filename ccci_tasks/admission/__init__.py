"""Run admission with fenced leases in Redis: MAX_TESTS slots and exclusive resources.

A run names the *resources* it holds from its first step to its last: its lane declares
them as ``Resource`` values (``resources``: a run slot, a canonical, a live-warm app shared
or exclusive, the sweep).

``Slots.enqueue`` puts a run in a FIFO of pending runs; ``admit`` walks the FIFO and admits
every run whose resources are all free, taking all of them or none, in one Lua script
(atomic). A run that does not fit keeps its place; unrelated runs behind it go ahead.
Nothing here ever blocks or waits: whoever frees something (a finishing run, the janitor)
calls ``admit`` again.

Leases and fencing
------------------
An admitted run gets a lease (expiry in a zset) and a *fencing token* that only grows (a
counter floored at the server's clock in milliseconds, so it keeps growing even after the
keys were flushed). Until its first step starts, the lease lasts ``start_grace_s`` (the step
may wait in the queue behind another run's step, or for a worker that is down; past the
grace the run is simply queued again); the first ``renew`` starts the TTL proper, and every
step renews it when it starts and before each platform mutation (``renew`` is the fence
check; ``keep_alive`` renews it while a step runs). A lease whose expiry passed is lost for
good: ``renew`` never revives it, so a step that was stopped past its lease cannot act any
more; the janitor gets the run from ``reap_expired`` and cleans up after it.

Time is the Redis server's clock (``TIME`` inside the scripts), so workers with skewed
clocks agree on expiry. Tests may inject a ``clock`` instead.

The engine is the truth about what is live: ``admit`` takes the live apps of this system
(``cold:<hex>``, ``warm:<recipe>``) as observed by the caller. A live app that no occupying
run explains counts against MAX_TESTS, and a deployed canonical no run holds keeps its
canonical busy, until the janitor has reaped it.

A run whose lease expired keeps occupying its resources (``expired``, then ``reaping``)
until the janitor has removed what it left and calls ``finish_reap``. The janitor can also
hold resources itself while it cleans up after a run Redis forgot (``hold``).

Redis keys (all under ``constants.REDIS_PREFIX``): ``KEY_SLOTS`` zset run_id -> expiry;
``KEY_EXPIRED`` and ``KEY_REAPING`` zsets; ``KEY_PENDING`` list (head = oldest);
``KEY_PARKED`` set of runs that wait for their child runs without holding anything;
``KEY_RUN_SPEC + run_id`` hash of the spec plus ``token`` and ``started``; ``KEY_FENCE``
counter. Every state change is one Lua script (``lua/*.lua``) on the single Redis instance.

Modules: ``resources`` (the ``Resource`` value and its wire form), ``spec`` (``RunSpec``,
``Lease``), ``scripts`` (the Lua, loaded once), ``slots`` (the ``Slots`` client),
``keepalive`` (a step's lease heartbeat).
"""

from ccci_tasks.admission.keepalive import keep_alive
from ccci_tasks.admission.resources import Resource
from ccci_tasks.admission.scripts import KEY_EXPIRED, KEY_PARKED, KEY_REAPING
from ccci_tasks.admission.slots import Slots
from ccci_tasks.admission.spec import Lease, RunSpec

__all__ = [
    "KEY_EXPIRED",
    "KEY_PARKED",
    "KEY_REAPING",
    "Lease",
    "Resource",
    "RunSpec",
    "Slots",
    "keep_alive",
]
