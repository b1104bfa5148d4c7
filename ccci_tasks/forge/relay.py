"""Deliver the forge outbox, one stream at a time, in order and exactly once.

``deliver_stream`` sends the pending messages of one stream oldest first and stops at the
first one that is not taken, so a commit never gets ``success`` before its ``pending``. Right
after the forge (or a notification target) accepted a message, a Redis done-key
(``KEY_FORGE_DONE + key``, SET NX, 7-day expiry) records it and the file moves to
``forge/sent/``; a retried or redelivered relay skips what is done. Only a crash between the
forge's answer and the SET can send twice. A Redis lock per stream (``KEY_FORGE_LOCK``)
keeps two relays of one stream from running at once, whatever the worker concurrency.
A message still undelivered after ``GIVE_UP_S`` moves to ``forge/failed/`` and is logged.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import redis

from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import AlertRelayError, BrokerError
from ccci_tasks.forge import outbox
from ccci_tasks.forge.client import ForgeClient, forge_configured
from ccci_tasks.push import DONE_TTL_S, Notify, push_once, target_key
from ccci_tasks.state.clock import utc_now

log = logging.getLogger(__name__)

GIVE_UP_S: Final = DONE_TTL_S  # past this, a done-key may be gone: never retry that long
LOCK_TTL_S: Final = 300  # longer than a stream's delivery (a few requests of <= 10 s each)

ClientFactory = Callable[[Settings], ForgeClient]

_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class StreamResult:
    stream: str
    outcome: str  # delivered | busy | not-configured | empty
    sent: int = 0
    left: int = 0


def done_key(key: str, target: str | None = None) -> str:
    if target is not None:
        return target_key(c.KEY_FORGE_DONE, key, target)
    return f"{c.KEY_FORGE_DONE}{key}"


@contextmanager
def _stream_lock(client: redis.Redis, stream: str) -> Iterator[bool]:
    key = c.KEY_FORGE_LOCK + stream
    token = secrets.token_hex(8)
    try:
        acquired = bool(client.set(key, token, nx=True, ex=LOCK_TTL_S))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot lock outbox stream {stream}: {exc}") from exc
    try:
        yield acquired
    finally:
        if acquired:
            try:
                client.eval(_RELEASE, 1, key, token)
            except redis.RedisError as exc:  # it expires on its own
                log.warning("could not release the lock of %s: %s", stream, exc)


def _age_s(item: outbox.Item, now: datetime) -> float:
    try:
        return (now - datetime.fromisoformat(item.created_at)).total_seconds()
    except ValueError:
        return 0.0


def _already_done(client: redis.Redis, item: outbox.Item) -> bool:
    try:
        return bool(client.exists(done_key(item.key)))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read the relay state of {item.key}: {exc}") from exc


def _record_done(client: redis.Redis, item: outbox.Item) -> None:
    try:
        client.set(done_key(item.key), "1", nx=True, ex=DONE_TTL_S)
    except redis.RedisError as exc:
        raise BrokerError(f"{item.key} was delivered but cannot be recorded: {exc}") from exc


def _send_notify(
    settings: Settings, client: redis.Redis, item: outbox.Item, notify: Notify
) -> None:
    urls = settings.notify_url_list()
    if not urls:
        raise AlertRelayError(
            f"notification {item.key} stays pending: no targets (set CCCI_NOTIFY_URLS)"
        )
    title, body = str(item.payload.get("title", "")), str(item.payload.get("body", ""))
    push_once(client, urls, prefix=c.KEY_FORGE_DONE, message=item.key, title=title,
              body=body, what=f"notification {item.key}", setting="CCCI_NOTIFY_URLS",
              notify=notify)


def _send_forge(forge: ForgeClient, item: outbox.Item) -> None:
    p = item.payload
    if item.kind == "status":
        forge.post_status(str(p["owner"]), str(p["repo"]), str(p["sha"]), str(p["state"]),
                          str(p["context"]), str(p["description"]),
                          str(p["target_url"]) if p.get("target_url") else None)
    else:
        forge.post_comment(str(p["owner"]), str(p["repo"]), int(p["number"]), str(p["body"]))


def deliver_stream(
    settings: Settings,
    client: redis.Redis,
    stream: str,
    *,
    notify: Notify,
    forge_factory: ClientFactory = ForgeClient.from_settings,
) -> StreamResult:
    """Deliver the pending messages of ``stream`` in order.

    Raises ``ForgeError`` / ``AlertRelayError`` at the first message not taken (the ones
    after it stay pending behind it) and ``BrokerError`` when Redis fails.
    """
    outbox.validate_stream(stream)
    state = settings.state_dir
    with _stream_lock(client, stream) as locked:
        if not locked:
            return StreamResult(stream, "busy", left=len(outbox.pending(state, stream)))
        items = outbox.pending(state, stream)
        if not items:
            return StreamResult(stream, "empty")
        forge: ForgeClient | None = None
        sent = 0
        try:
            for position, item in enumerate(items):
                if _already_done(client, item):
                    outbox.mark_sent(state, item.key)
                    continue
                if _age_s(item, utc_now()) > GIVE_UP_S:
                    log.error("outbox: giving up %s %s for %s after %d days undelivered",
                              item.kind, item.key, stream, GIVE_UP_S // 86400)
                    outbox.mark_failed(state, item.key)
                    continue
                if item.kind != "notify" and not forge_configured(settings):
                    log.warning("outbox: %s stays pending: the forge is not configured",
                                item.key)
                    return StreamResult(stream, "not-configured", sent, len(items) - position)
                try:
                    if item.kind == "notify":
                        _send_notify(settings, client, item, notify)
                    else:
                        forge = forge or forge_factory(settings)
                        _send_forge(forge, item)
                except (KeyError, TypeError, ValueError) as exc:  # InvalidInput is a ValueError
                    log.error("outbox: %s is malformed and is given up: %s", item.key, exc)
                    outbox.mark_failed(state, item.key)
                    continue
                except redis.RedisError as exc:
                    raise BrokerError(f"cannot record the delivery of {item.key}: {exc}") from exc
                _record_done(client, item)
                outbox.mark_sent(state, item.key)
                sent += 1
                log.info("outbox: %s %s delivered (%s)", item.kind, item.key, stream)
        finally:
            if forge is not None:
                forge.close()
    return StreamResult(stream, "delivered", sent, 0)
