"""The forge outbox: what must reach the forge or the notification targets, durably.

``<state>/forge/outbox/<key>.json`` is one pending message: a commit status, a PR comment or
a finish notification, ``{key, kind, stream, seq, created_at, payload}``. Delivered ones move
to ``forge/sent/`` (one atomic rename), given-up ones to ``forge/failed/``. Files are
written atomically, so a reader never sees half a message.

* ``key`` names the message once and for all (``<run_id>-pending``, ``<run_id>-final``, ...):
  ``put`` of a key that is pending, sent or failed writes nothing, so a hook called twice
  (a redelivered task, the beat safety net) never sends twice.
* ``stream`` is the unit of ordering: the statuses of one commit (``status:<owner>/<repo>@<sha>``),
  the comments of one PR, one run's notification. Messages of a stream are delivered in
  ``seq`` order; ``seq`` grows within a stream even if the clock steps back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ccci_tasks import atomic
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.state.clock import iso, utc_now

log = logging.getLogger(__name__)

FORGE_DIR: Final = "forge"
OUTBOX_DIR: Final = "outbox"
SENT_DIR: Final = "sent"
FAILED_DIR: Final = "failed"
LOCK_FILE: Final = ".lock"
Kind = Literal["status", "comment", "notify"]
KINDS: Final = ("status", "comment", "notify")

_KEY_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,120}")
_STREAM_RE: Final = re.compile(r"[a-z]+:[A-Za-z0-9_.@#/-]{1,300}")


@dataclass(frozen=True)
class Item:
    key: str
    kind: Kind
    stream: str
    seq: int
    created_at: str
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "stream": self.stream, "seq": self.seq,
                "created_at": self.created_at, "payload": self.payload}


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


def forge_dir(state_dir: Path) -> Path:
    return Path(state_dir) / FORGE_DIR


def _dir(state_dir: Path, which: str) -> Path:
    return forge_dir(state_dir) / which


def _path(state_dir: Path, which: str, key: str) -> Path:
    return _dir(state_dir, which) / f"{validate_key(key)}.json"


def known(state_dir: Path, key: str) -> bool:
    """True when ``key`` is pending, sent or failed."""
    return any(_path(state_dir, which, key).exists()
               for which in (OUTBOX_DIR, SENT_DIR, FAILED_DIR))


def is_sent(state_dir: Path, key: str) -> bool:
    return _path(state_dir, SENT_DIR, key).exists()


def _load(path: Path) -> Item:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        kind = raw["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if not isinstance(raw["payload"], dict):
            raise ValueError("payload is not an object")
        return Item(key=validate_key(raw["key"]), kind=kind,
                    stream=validate_stream(raw["stream"]), seq=int(raw["seq"]),
                    created_at=str(raw["created_at"]), payload=raw["payload"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path}: unreadable outbox message: {exc}") from exc


def _list(directory: Path) -> list[Item]:
    if not directory.is_dir():
        return []
    found: list[Item] = []
    for path in directory.glob("*.json"):
        if path.name.startswith("."):
            continue
        try:
            found.append(_load(path))
        except StateError as exc:
            if path.exists():  # else it was just delivered (moved)
                log.warning("skipping %s", exc)
    found.sort(key=lambda item: (item.seq, item.key))
    return found


def pending(state_dir: Path, stream: str | None = None) -> list[Item]:
    """Pending messages in delivery order (of one stream, or all)."""
    items = _list(_dir(state_dir, OUTBOX_DIR))
    return [item for item in items if stream is None or item.stream == stream]


def sent(state_dir: Path) -> list[Item]:
    return _list(_dir(state_dir, SENT_DIR))


def failed(state_dir: Path) -> list[Item]:
    return _list(_dir(state_dir, FAILED_DIR))


def streams(state_dir: Path) -> list[str]:
    """Streams with pending messages, the one with the oldest message first."""
    seen: dict[str, None] = {}
    for item in pending(state_dir):
        seen.setdefault(item.stream, None)
    return list(seen)


def put(
    state_dir: Path, key: str, kind: Kind, stream: str, payload: dict[str, Any]
) -> Item | None:
    """Write a pending message; ``None`` (and nothing written) when ``key`` is known already."""
    validate_key(key)
    validate_stream(stream)
    if kind not in KINDS:
        raise InvalidInput(f"outbox kind {kind!r} is invalid: one of {KINDS}")
    for which in (OUTBOX_DIR, SENT_DIR, FAILED_DIR):
        _dir(state_dir, which).mkdir(parents=True, exist_ok=True)
    with atomic.file_lock(forge_dir(state_dir) / LOCK_FILE):
        if known(state_dir, key):
            return None
        last = max((item.seq for item in pending(state_dir, stream)), default=0)
        item = Item(key=key, kind=kind, stream=stream, seq=max(time.time_ns(), last + 1),
                    created_at=iso(utc_now()), payload=payload)
        atomic.write_json(_path(state_dir, OUTBOX_DIR, key), item.to_json())
    log.info("outbox: %s %s queued for %s", kind, key, stream)
    return item


def _move(state_dir: Path, key: str, which: str) -> bool:
    source = _path(state_dir, OUTBOX_DIR, key)
    dest = _path(state_dir, which, key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
    except FileNotFoundError:
        return False
    atomic.fsync_dir(dest.parent)
    atomic.fsync_dir(source.parent)
    return True


def mark_sent(state_dir: Path, key: str) -> bool:
    """Move a pending message to ``sent/``; False if it was not pending."""
    return _move(state_dir, key, SENT_DIR)


def mark_failed(state_dir: Path, key: str) -> bool:
    """Move a pending message to ``failed/`` (given up); False if it was not pending."""
    return _move(state_dir, key, FAILED_DIR)


def prune_sent(state_dir: Path, older_than_s: float) -> int:
    """Remove delivered messages older than ``older_than_s``; return how many."""
    directory = _dir(state_dir, SENT_DIR)
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in directory.glob("*.json"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
