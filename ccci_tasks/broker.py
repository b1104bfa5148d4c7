"""The one place that builds Redis clients (the broker also holds slots, outboxes and beat).

A client is a connection pool, so there is one per broker URL, timeout and process, made on
first use. ``timeout_s`` bounds connecting and every command: long enough for a Lua script
under load (the default), short for whoever must answer quickly (a webhook, ``ccci check``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import redis
from redis.exceptions import RedisError

from ccci_tasks.errors import BrokerError

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


def where(client: redis.Redis) -> str:
    """The server a client talks to (``host:port/db`` or ``unix:path/db``), never a password."""
    kwargs = client.connection_pool.connection_kwargs
    place = f"unix:{kwargs['path']}" if kwargs.get("path") else \
        f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{place}/{kwargs.get('db', 0)}"


@contextmanager
def failures(client: redis.Redis, what: str) -> Iterator[None]:
    """Translate Redis errors into ``BrokerError`` naming the server and ``what`` was being
    done, never the password."""
    try:
        yield
    except RedisError as exc:
        detail = f"{type(exc).__name__}: {exc}"
        password = client.connection_pool.connection_kwargs.get("password")
        leaks = bool(password) and str(password) in detail
        error = BrokerError(
            f"Redis at {where(client)} failed while {what}: "
            f"{detail.replace(str(password), '***') if leaks else detail}; check that "
            "redis-server is running and CCCI_BROKER_URL points at it")
        if leaks:  # do not chain an exception whose text holds the password
            raise error from None
        raise error from exc
