"""The admission scripts: one ``lua/<name>.lua`` file each, behind the shared prologue.

Every state change of admission is one of these scripts on the single Redis instance, so it
is atomic. The files are read once, at import; ``Scripts`` registers them on a client
(``register_script``: EVALSHA, and the script is loaded again by itself when the server
lost it, e.g. after a restart).

Each script gets the same KEYS and the same first two ARGV (see ``lua/prologue.lua``); its
own arguments follow from ARGV[3] on.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

import redis

from ccci_tasks import constants as c

KEY_EXPIRED: Final = c.KEY_SLOTS + ":expired"
KEY_REAPING: Final = c.KEY_SLOTS + ":reaping"
KEY_PARKED: Final = c.KEY_PENDING + ":parked"  # set of runs waiting for their child runs
# KEYS of every script: leases, expired, pending, reaping, the fence counter.
KEYS: Final = (c.KEY_SLOTS, KEY_EXPIRED, c.KEY_PENDING, KEY_REAPING, c.KEY_FENCE)
NAMES: Final = (
    "admit", "renew", "release", "requeue", "park", "unpark", "reap", "finish_reap", "hold",
    "enqueue", "occupying",
)


def _read(name: str) -> str:
    return files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


_PROLOGUE: Final = _read("prologue")
SOURCES: Final = {name: _PROLOGUE + _read(name) for name in NAMES}


class Scripts:
    """The admission scripts, registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self._registered = {name: client.register_script(src) for name, src in SOURCES.items()}

    def __call__(self, name: str, now: float | None, *args: object) -> Any:
        """Run script ``name`` at ``now`` (None: the server's clock) with its own ``args``."""
        argv = ["" if now is None else repr(float(now)), c.KEY_RUN_SPEC, *(str(a) for a in args)]
        return self._registered[name](keys=list(KEYS), args=argv)
