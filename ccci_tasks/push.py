"""Push a message to every Apprise target once: the alerts and the finish notifications.

``push_once`` sends ``(title, body)`` to each URL and records, per message and target, a Redis
key (``<message's done key>:<url hash>``, SET NX, ``DONE_TTL_S``) right after the target took
it: a retried or redelivered push skips the targets already done, so each target gets the
message once (only a crash between a target's answer and the SET can push twice). A target
that refuses or fails makes the whole push raise ``AlertRelayError`` (the message stays
pending and is retried); URLs carry tokens, so failures name a target by its position, never
by its URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

import redis

from ccci_tasks.errors import AlertRelayError, ConfigError

DONE_TTL_S: Final = 7 * 24 * 3600

Notify = Callable[[str, str, str], bool]  # (url, title, body) -> accepted


def apprise_notify(url: str, title: str, body: str) -> bool:
    """Send through Apprise to one URL; False when Apprise says it was not delivered."""
    import apprise  # a third of a second to import: only where a push is made

    sender = apprise.Apprise()
    if not sender.add(url):
        raise ConfigError(
            f"a push target is not a valid Apprise URL (scheme {url.split(':', 1)[0]!r}); "
            "see https://github.com/caronc/apprise/wiki"
        )
    return bool(sender.notify(title=title, body=body))


def target_key(done_key: str, url: str) -> str:
    """The Redis key that says ``url`` took the message whose done key is ``done_key``."""
    return f"{done_key}:{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def push_once(
    client: redis.Redis, urls: Sequence[str], *, done_key: str, title: str, body: str,
    what: str, setting: str, notify: Notify = apprise_notify,
) -> None:
    """Push ``(title, body)`` to every target that has not taken the message yet."""
    failures: list[str] = []
    for index, url in enumerate(urls, start=1):
        key = target_key(done_key, url)
        if client.exists(key):
            continue
        try:
            accepted = notify(url, title, body)
        except ConfigError:
            failures.append(f"target {index}: not a valid Apprise URL (check {setting})")
            continue
        except Exception as exc:  # Apprise plugins raise anything; the URL may hold a token
            failures.append(f"target {index}: {type(exc).__name__}")
            continue
        if not accepted:
            failures.append(f"target {index}: not accepted")
            continue
        client.set(key, "1", nx=True, ex=DONE_TTL_S)
    if failures:
        raise AlertRelayError(
            f"{what} not taken by {len(failures)} of {len(urls)} target(s): "
            f"{'; '.join(failures)}; it stays pending and is retried"
        )
