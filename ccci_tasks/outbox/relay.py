"""The relay of every outbox: deliver a stream's messages in order, each exactly once.

``deliver`` sends the pending messages of one stream oldest first and stops at the first one
not taken (the sender raises; the task retries with the one backoff), so a commit never gets
``success`` before its ``pending``. Right after the sender is done with a message a Redis
done-key (``done_prefix + key``, SET NX, 7-day expiry) records it and its file moves to sent;
a retried or redelivered relay finds the done-key and only moves the file. Only a crash
between the sender's success and the SET can send twice. A Redis lock per stream
(``lock_prefix + stream``) keeps two relays of one stream apart whatever the worker
concurrency. A message the sender cannot send yet (``waiting``: no push targets, the forge
not configured) stays pending without an error. One that is malformed, or still undelivered
after ``give_up_s``, is given up (moved to failed), when the outbox may give up.

``publish`` asks the alerts queue to deliver streams now, through ``enqueue``; when the broker
is down the messages stay pending and ``sweep`` (beat, every 60 s) asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import redis

from ccci_tasks import enqueue
from ccci_tasks.config import Settings
from ccci_tasks.errors import BrokerError, StateError
from ccci_tasks.outbox.model import Outbox, Sender
from ccci_tasks.push import DONE_TTL_S
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.outbox import M

log = logging.getLogger(__name__)

LOCK_TTL_S: Final = 300  # longer than a stream's delivery (a few requests of <= 10 s each)


@dataclass(frozen=True)
class StreamResult:
    stream: str
    outcome: str  # delivered | busy | waiting | empty
    sent: int = 0
    left: int = 0


@dataclass(frozen=True)
class SweepResult:
    pending: int  # streams with pending messages
    enqueued: int  # of them, asked to be delivered now
    pruned: int = 0  # sent messages removed for their age


def deliver(outbox: Outbox[M], settings: Settings, client: redis.Redis, stream: str,
            sender: Sender[M]) -> StreamResult:
    """Deliver the pending messages of ``stream`` in order (and close ``sender``).

    Raises the sender's error at the first message not taken (the ones after it stay
    pending behind it) and ``BrokerError`` when Redis fails.
    """
    outbox.check_stream(stream)
    lock = client.lock(outbox.lock_prefix + stream, timeout=LOCK_TTL_S, blocking=False)
    try:
        try:
            locked = lock.acquire(blocking=False)
        except redis.RedisError as exc:
            raise BrokerError(f"cannot lock {outbox.name} stream {stream}: {exc}") from exc
        if not locked:
            left = len(outbox.box.pending(settings.state_dir, stream))
            return StreamResult(stream, "busy", left=left)
        try:
            return _deliver_locked(outbox, settings, client, stream, sender)
        finally:
            try:
                lock.release()
            except redis.RedisError as exc:  # it expires on its own
                log.warning("could not release the lock of %s: %s", stream, exc)
    finally:
        sender.close()


def _deliver_locked(outbox: Outbox[M], settings: Settings, client: redis.Redis, stream: str,
                    sender: Sender[M]) -> StreamResult:
    state, box = settings.state_dir, outbox.box
    messages = box.pending(state, stream)
    if not messages:
        return StreamResult(stream, "empty")
    sent = 0
    for position, message in enumerate(messages):
        done_key = outbox.done_key(message.key)
        if _exists(client, done_key):
            box.mark_sent(state, message.key)  # sent before, then a crash: only archive it
            continue
        if outbox.give_up_s is not None and _age_s(message.written_at) > outbox.give_up_s:
            log.error("%s: giving up %s %s after %d days undelivered", outbox.name, box.what,
                      message.key, outbox.give_up_s // 86400)
            box.mark_failed(state, message.key)
            continue
        why = outbox.waiting(settings, message)
        if why is not None:
            log.warning("%s %s stays pending: %s", box.what, message.key, why)
            return StreamResult(stream, "waiting", sent, len(messages) - position)
        try:
            sender.send(message, done_key)
        except (KeyError, TypeError, ValueError) as exc:  # InvalidInput is a ValueError
            if not box.mark_failed(state, message.key):
                raise StateError(f"{box.what} {message.key} is malformed: {exc}") from exc
            log.error("%s: %s %s is malformed and is given up: %s", outbox.name, box.what,
                      message.key, exc)
            continue
        except redis.RedisError as exc:
            raise BrokerError(f"cannot record the delivery of {message.key}: {exc}") from exc
        try:
            client.set(done_key, "1", nx=True, ex=DONE_TTL_S)
        except redis.RedisError as exc:
            raise BrokerError(f"{message.key} was delivered but cannot be recorded: {exc}"
                              ) from exc
        box.mark_sent(state, message.key)
        sent += 1
        log.info("%s: %s %s delivered (%s)", outbox.name, box.what, message.key, stream)
    return StreamResult(stream, "delivered", sent, 0)


def _exists(client: redis.Redis, key: str) -> bool:
    try:
        return bool(client.exists(key))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read the relay state {key}: {exc}") from exc


def _age_s(written_at: str) -> float:
    try:
        return (utc_now() - datetime.fromisoformat(written_at)).total_seconds()
    except (TypeError, ValueError):
        return 0.0


def publish(outbox: Outbox[Any], streams: Sequence[str], *, once: bool = False) -> int:
    """Ask the alerts queue to deliver ``streams`` now; return how many were asked. When the
    broker is down they stay pending (the sweep asks again). ``once``: one delivery attempt
    each, no retry chain (the sweep's own asks: it comes back every minute)."""
    kwargs: dict[str, Any] = {"retry": False} if once else {}
    for done, stream in enumerate(streams):
        try:
            # No result to wait for: without ignore_result Celery first subscribes to the
            # result backend, which retries a down broker for about 15 s before giving up.
            enqueue.send(enqueue.Call(outbox.deliver_task, (stream,), kwargs),
                         ignore_result=True)
        except Exception as exc:  # broker down or misconfigured: the files are the truth
            log.warning("%s: %s stays pending; could not enqueue its delivery: %s",
                        outbox.name, ", ".join(streams[done:]), exc)
            return done
    return len(streams)


def sweep(outbox: Outbox[Any], settings: Settings) -> SweepResult:
    """Ask once for every stream whose next message can be sent (beat's safety net: a
    message written while the broker was down, or whose retries were lost), and prune
    old sent messages."""
    heads = outbox.box.heads(settings.state_dir)
    ready = [head.stream for head in heads if outbox.waiting(settings, head) is None]
    if len(ready) < len(heads):
        why = next(w for head in heads if (w := outbox.waiting(settings, head)) is not None)
        log.warning("%s: %d stream(s) pending, %d not relayed now: %s", outbox.name,
                    len(heads), len(heads) - len(ready), why)
    enqueued = publish(outbox, ready, once=True)
    pruned = 0
    if outbox.keep_sent_s is not None:
        pruned = outbox.box.prune_sent(settings.state_dir, outbox.keep_sent_s)
    return SweepResult(len(heads), enqueued, pruned)
