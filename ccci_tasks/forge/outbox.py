"""The forge's outbox: what must reach the forge or the notification targets, durably.

``<state>/forge/outbox/<key>.json`` is one pending message: a commit status, a PR comment or
a finish notification, ``{key, kind, stream, seq, created_at, payload}``. Delivered ones move
to ``forge/sent/``, given-up ones to ``forge/failed/`` (``state.outbox``: atomic files, one
rename to move).

* ``key`` names the message once and for all (``<run_id>-pending``, ``<run_id>-final``, ...):
  ``put`` of a key that is pending, sent or failed writes nothing, so a hook called twice
  (a redelivered task, the beat safety net) never sends twice.
* ``stream`` is the unit of ordering: the statuses of one commit (``status:<owner>/<repo>@<sha>``),
  the comments of one PR, one run's notification. Messages of a stream are delivered in
  ``seq`` order; ``seq`` grows within a stream even if the clock steps back.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator

from ccci_tasks.errors import InvalidInput
from ccci_tasks.state.clock import iso, utc_now
from ccci_tasks.state.outbox import Box, Message

FORGE_DIR: Final = "forge"
Kind = Literal["status", "comment", "notify"]
KINDS: Final = ("status", "comment", "notify")

_KEY_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,120}")
_STREAM_RE: Final = re.compile(r"[a-z]+:[A-Za-z0-9_.@#/-]{1,300}")


def validate_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InvalidInput(
            f"outbox key {key!r} is invalid: expected lowercase letters, digits and '-', "
            "e.g. '<run id>-final'"
        )
    return key


def validate_stream(stream: object) -> str:
    if not isinstance(stream, str) or not _STREAM_RE.fullmatch(stream) or ".." in stream:
        raise InvalidInput(
            f"outbox stream {stream!r} is invalid: expected '<kind>:<name>', e.g. "
            "'status:owner/recipe@<sha>'"
        )
    return stream


class Item(Message):
    """One message for the forge or the notification targets."""

    key: Annotated[str, BeforeValidator(validate_key)]
    kind: Kind
    stream: Annotated[str, BeforeValidator(validate_stream)]
    seq: int
    created_at: str
    payload: dict[str, Any]

    @property
    def position(self) -> tuple[int, str]:
        return (self.seq, self.key)

    @property
    def written_at(self) -> str:
        return self.created_at


BOX: Final = Box(model=Item, pending_dir=f"{FORGE_DIR}/outbox", sent_dir=f"{FORGE_DIR}/sent",
                 failed_dir=f"{FORGE_DIR}/failed", check_key=validate_key,
                 lock_file=f"{FORGE_DIR}/.lock")


def forge_dir(state_dir: Path) -> Path:
    return Path(state_dir) / FORGE_DIR


def put(
    state_dir: Path, key: str, kind: Kind, stream: str, payload: dict[str, Any]
) -> Item | None:
    """Queue a message; ``None`` (and nothing written) when ``key`` is known already."""

    def build() -> Item:  # under the box's lock: seq follows the stream's last one
        last = max((item.seq for item in BOX.pending(state_dir, stream)), default=0)
        return Item(key=key, kind=kind, stream=stream, seq=max(time.time_ns(), last + 1),
                    created_at=iso(utc_now()), payload=payload)

    validate_stream(stream)
    if kind not in KINDS:
        raise InvalidInput(f"outbox kind {kind!r} is invalid: one of {KINDS}")
    return BOX.put(state_dir, key, build)


def known(state_dir: Path, key: str) -> bool:
    """True when ``key`` is pending, sent or failed."""
    return BOX.known(state_dir, key)


def is_sent(state_dir: Path, key: str) -> bool:
    return BOX.is_sent(state_dir, key)


def pending(state_dir: Path, stream: str | None = None) -> list[Item]:
    """Pending messages in delivery order (of one stream, or all)."""
    return BOX.pending(state_dir, stream)


def sent(state_dir: Path) -> list[Item]:
    return BOX.sent(state_dir)


def failed(state_dir: Path) -> list[Item]:
    return BOX.failed(state_dir)


def streams(state_dir: Path) -> list[str]:
    """Streams with pending messages, the one with the oldest message first."""
    return BOX.streams(state_dir)


def mark_sent(state_dir: Path, key: str) -> bool:
    """Move a pending message to ``sent/``; False if it was not pending."""
    return BOX.mark_sent(state_dir, key)
