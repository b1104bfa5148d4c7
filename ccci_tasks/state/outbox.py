"""A durable outbox under the state root: messages waiting to be delivered, one file each.

A ``Box`` names its folders under the state root: pending messages, delivered ones
(``sent``) and, if it may give up, given-up ones (``failed``). A message is a ``Message``
record that knows

* its ``key``, which names its file: a key is written once, so a second ``put`` of a key
  that is pending, sent or failed writes nothing (a hook called twice sends once);
* its ``stream``, the unit of order: a stream's messages are delivered one after the other,
  in ``position`` order;
* ``written_at``, when it was queued.

Files are written atomically, so a reader never sees half a message; delivering or giving up
is one atomic rename. Unreadable files are skipped with a warning. Files only: who delivers
a message, how and when, is ``ccci_tasks.outbox``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import ccci_tasks.atomic as atomic
from ccci_tasks.errors import StateError
from ccci_tasks.state import records

log = logging.getLogger(__name__)


class Message(records.Record):
    """A record an outbox holds. Each kind provides these (as fields or properties)."""

    if TYPE_CHECKING:  # declared for the type checker only: a field may provide them

        @property
        def key(self) -> str: ...

        @property
        def stream(self) -> str: ...

        @property
        def position(self) -> tuple[int, str]:
            """Where it goes in its stream (and in listings): smaller first."""

        @property
        def written_at(self) -> str:
            """When it was queued, ISO 8601 with a UTC offset."""


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Box(Generic[M]):
    """Where an outbox keeps its messages, relative to the state root."""

    model: type[M]
    pending_dir: str
    sent_dir: str
    failed_dir: str | None  # None: this outbox never gives a message up
    check_key: Callable[[str], str]  # the key's own validation (it names a file)
    lock_file: str | None = None  # held while a key is checked and written
    what: str = "outbox message"

    def folder(self, state_dir: Path, which: str) -> Path:
        return Path(state_dir) / which

    def path(self, state_dir: Path, which: str, key: str) -> Path:
        return self.folder(state_dir, which) / f"{self.check_key(key)}.json"

    def _places(self) -> tuple[str, ...]:
        return (self.pending_dir, self.sent_dir,
                *((self.failed_dir,) if self.failed_dir is not None else ()))

    def known(self, state_dir: Path, key: str) -> bool:
        """True when ``key`` is pending, sent or failed."""
        return any(self.path(state_dir, which, key).exists() for which in self._places())

    def is_sent(self, state_dir: Path, key: str) -> bool:
        return self.path(state_dir, self.sent_dir, key).exists()

    @contextlib.contextmanager
    def _locked(self, state_dir: Path) -> Iterator[None]:
        if self.lock_file is None:
            yield
            return
        with atomic.file_lock(Path(state_dir) / self.lock_file):
            yield

    def put(self, state_dir: Path, key: str, build: Callable[[], M]) -> M | None:
        """Write the message ``build()`` makes under ``key``; ``None`` (nothing written, nothing
        built) when ``key`` is known already."""
        self.check_key(key)
        for which in self._places():
            self.folder(state_dir, which).mkdir(parents=True, exist_ok=True)
        with self._locked(state_dir):
            if self.known(state_dir, key):
                return None
            message = build()
            if message.key != key:
                raise StateError(f"{self.what} built for key {key!r} has key {message.key!r}")
            records.write(self.path(state_dir, self.pending_dir, key), message)
        return message

    def load(self, path: Path) -> M | None:
        return records.read(path, self.model, what=self.what)

    def _list(self, state_dir: Path, which: str | None) -> list[M]:
        directory = self.folder(state_dir, which) if which is not None else None
        if directory is None or not directory.is_dir():
            return []
        found: list[M] = []
        for path in directory.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                message = self.load(path)
            except StateError as exc:
                log.warning("skipping %s", exc)
                continue
            if message is not None:  # else it was moved meanwhile
                found.append(message)
        found.sort(key=lambda message: message.position)
        return found

    def pending(self, state_dir: Path, stream: str | None = None) -> list[M]:
        """Pending messages in delivery order (of one stream, or all)."""
        found = self._list(state_dir, self.pending_dir)
        return [m for m in found if stream is None or m.stream == stream]

    def sent(self, state_dir: Path) -> list[M]:
        return self._list(state_dir, self.sent_dir)

    def failed(self, state_dir: Path) -> list[M]:
        return self._list(state_dir, self.failed_dir)

    def heads(self, state_dir: Path) -> list[M]:
        """The first pending message of each stream, the stream with the oldest first."""
        first: dict[str, M] = {}
        for message in self.pending(state_dir):
            first.setdefault(message.stream, message)
        return list(first.values())

    def streams(self, state_dir: Path) -> list[str]:
        """Streams with pending messages, the one with the oldest message first."""
        return [message.stream for message in self.heads(state_dir)]

    def _move(self, state_dir: Path, key: str, which: str) -> bool:
        source = self.path(state_dir, self.pending_dir, key)
        dest = self.path(state_dir, which, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, dest)
        except FileNotFoundError:
            return False
        atomic.fsync_dir(dest.parent)
        atomic.fsync_dir(source.parent)
        return True

    def mark_sent(self, state_dir: Path, key: str) -> bool:
        """Move a pending message to the sent folder (one rename); False if not pending."""
        return self._move(state_dir, key, self.sent_dir)

    def mark_failed(self, state_dir: Path, key: str) -> bool:
        """Give a pending message up (moved to the failed folder); False if it was not
        pending or this outbox never gives up."""
        if self.failed_dir is None:
            return False
        return self._move(state_dir, key, self.failed_dir)

    def prune_sent(self, state_dir: Path, older_than_s: float) -> int:
        """Remove delivered messages older than ``older_than_s``; return how many."""
        directory = self.folder(state_dir, self.sent_dir)
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
