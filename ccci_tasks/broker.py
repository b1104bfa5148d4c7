"""The one place that builds Redis clients (the broker also holds slots, outboxes and beat).

A client is a connection pool, so there is one per broker URL, timeout and process, made on
first use. ``timeout_s`` bounds connecting and every command: long enough for a Lua script
under load (the default), short for whoever must answer quickly (a webhook, ``ccci check``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

import redis

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

DEFAULT_TIMEOUT_S: Final = 30.0  # connect timeout is the smaller of this and 10 s
QUICK_TIMEOUT_S: Final = 3.0  # for answers a person or a forge waits for

_CLIENTS: dict[tuple[str, float], redis.Redis] = {}
_LOCK = threading.Lock()


def client_for(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> redis.Redis:
    """The process's Redis client for ``url`` with ``timeout_s`` per command."""
    key = (url, float(timeout_s))
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = redis.Redis.from_url(url, socket_connect_timeout=min(timeout_s, 10.0),
                                          socket_timeout=timeout_s, health_check_interval=30)
            _CLIENTS[key] = client
        return client


def client(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> redis.Redis:
    """The process's Redis client for the settings' broker."""
    return client_for(settings.broker_url.get_secret_value(), timeout_s)
