"""An outbox is declared once, as data: where its messages live, who sends them, how it retries.

``Outbox`` holds everything particular to one outbox (the alerts, the forge's messages); the
relay (``outbox.relay``), the Celery tasks and beat's sweep read it and never ask which
outbox they have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ccci_tasks.backoff import backoff_s
from ccci_tasks.state.outbox import Box, M, Message

if TYPE_CHECKING:
    import redis

    from ccci_tasks.config import Settings

M_contra = TypeVar("M_contra", bound=Message, contravariant=True)


class Sender(Protocol[M_contra]):
    """Sends one outbox's messages; made per delivery, closed after it."""

    def send(self, message: M_contra, done_key: str) -> None:
        """Deliver ``message``; raise an ``InfraError`` when it was not taken (it stays
        pending and is retried). ``done_key`` prefixes the keys of a per-target record."""

    def close(self) -> None:
        """Let go of what ``send`` opened."""


@dataclass(frozen=True)
class Outbox(Generic[M]):
    """One outbox (see the module docstring)."""

    name: str
    box: Box[M]
    sender: Callable[[Settings, redis.Redis], Sender[M]]
    # Why a message cannot be sent now (it waits, no retry), or None.
    waiting: Callable[[Settings, M], str | None]
    check_stream: Callable[[str], str]  # a stream name from outside (a task argument)
    deliver_task: str  # the task that delivers one stream: (stream, retry=True)
    done_prefix: str  # Redis: + message key -> 1 once delivered
    lock_prefix: str  # Redis: + stream -> token while one relay delivers it
    backoff_cap_s: Callable[[Settings], int]
    give_up_s: int | None = None  # None: never give a message up
    keep_sent_s: int | None = None  # None: keep sent messages for good

    def done_key(self, key: str) -> str:
        return f"{self.done_prefix}{key}"

    def countdown_s(self, retries: int, settings: Settings) -> int:
        """How long the delivery task waits before retry number ``retries + 1``."""
        return backoff_s(retries, settings, self.backoff_cap_s(settings))
