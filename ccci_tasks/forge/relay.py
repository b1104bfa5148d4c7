"""The forge's outbox, declared: commit statuses and PR comments through the forge API, finish
notifications through Apprise (``CCCI_NOTIFY_URLS``).

The relay is the one of every outbox (``ccci_tasks.outbox``): a stream in order, each message
exactly once, a lock per stream. Particular to the forge: statuses and comments wait while
the forge is not configured, retries back off up to 60 s (INTERFACES: "backoff capped at
60 s"), a message still undelivered after ``GIVE_UP_S`` moves to ``forge/failed/`` (past
it, its done-key may be gone) and sent ones are pruned after ``SENT_KEEP_S``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import redis

import ccci_tasks.forge.outbox as outbox
from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import AlertRelayError
from ccci_tasks.forge.client import ForgeClient, forge_configured
from ccci_tasks.forge.outbox import Item
from ccci_tasks.outbox import Outbox, StreamResult, deliver
from ccci_tasks.push import DONE_TTL_S, Notify, apprise_notify, push_once

GIVE_UP_S: Final = DONE_TTL_S  # past this, a done-key may be gone: never retry that long
SENT_KEEP_S: Final = 30 * 24 * 3600
DELIVER_BACKOFF_MAX_S: Final = 60

ClientFactory = Callable[[Settings], ForgeClient]


class ForgeSender:
    """Sends statuses and comments to the forge, notifications to the push targets."""

    def __init__(self, settings: Settings, client: redis.Redis, *,
                 notify: Notify = apprise_notify,
                 forge_factory: ClientFactory = ForgeClient.from_settings) -> None:
        self.settings, self.client, self.notify = settings, client, notify
        self._forge_factory = forge_factory
        self._forge: ForgeClient | None = None

    def send(self, message: Item, done_key: str) -> None:
        p = message.payload
        if message.kind == "notify":
            self._notify(message, done_key)
            return
        self._forge = self._forge or self._forge_factory(self.settings)
        if message.kind == "status":
            self._forge.post_status(str(p["owner"]), str(p["repo"]), str(p["sha"]),
                                    str(p["state"]), str(p["context"]), str(p["description"]),
                                    str(p["target_url"]) if p.get("target_url") else None)
        else:
            self._forge.post_comment(str(p["owner"]), str(p["repo"]), int(p["number"]),
                                     str(p["body"]))

    def _notify(self, message: Item, done_key: str) -> None:
        urls = self.settings.notify_url_list()
        if not urls:
            raise AlertRelayError(
                f"notification {message.key} stays pending: no targets (set CCCI_NOTIFY_URLS)"
            )
        push_once(self.client, urls, done_key=done_key, title=str(message.payload.get("title", "")),
                  body=str(message.payload.get("body", "")), what=f"notification {message.key}",
                  setting="CCCI_NOTIFY_URLS", notify=self.notify)

    def close(self) -> None:
        if self._forge is not None:
            self._forge.close()
            self._forge = None


def _waiting(settings: Settings, message: Item) -> str | None:
    if message.kind != "notify" and not forge_configured(settings):
        return "the forge is not configured"
    return None


def _backoff_cap_s(settings: Settings) -> int:
    return DELIVER_BACKOFF_MAX_S


FORGE: Final = Outbox(
    name="forge", box=outbox.BOX, sender=ForgeSender, waiting=_waiting,
    check_stream=outbox.validate_stream,
    deliver_task=c.task_name(c.QUEUE_ALERTS, "forge_deliver"),
    done_prefix=c.KEY_FORGE_DONE, lock_prefix=c.KEY_FORGE_LOCK, backoff_cap_s=_backoff_cap_s,
    give_up_s=GIVE_UP_S, keep_sent_s=SENT_KEEP_S,
)


def done_key(key: str) -> str:
    return FORGE.done_key(key)


def deliver_stream(
    settings: Settings,
    client: redis.Redis,
    stream: str,
    *,
    notify: Notify,
    forge_factory: ClientFactory = ForgeClient.from_settings,
) -> StreamResult:
    """Deliver the pending messages of ``stream`` in order (``outbox.deliver``)."""
    sender = ForgeSender(settings, client, notify=notify, forge_factory=forge_factory)
    return deliver(FORGE, settings, client, stream, sender)
