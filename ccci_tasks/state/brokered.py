"""Records the broker holds, each host keeping a file copy of those it writes (run reports).

Several hosts share one Redis: a record written on one host is read on every other. A record
is JSON under ``<prefix><name>``, listed by a sorted set (``index``: name -> a score, e.g. a
start time), and those still open (a run in flight: ``Kind.open``) by a second one
(``open_index``), so that whoever looks for them alone reads no more. Every change is a
read-modify-write in a WATCH/MULTI transaction, tried again while another writer (any host,
any process) changed the key in between, up to ``turn_timeout_s``; the processes of one host
also take turns on a file lock, so they never race each other for a key. The writer then
keeps the same JSON in ``<directory>/<name>.json`` (an atomic rename; the copy is replaced
only by a newer version). A host that reads a newer version than its copy refreshes the
copy, so the copy of a run this host took and another host ended follows it to its end.

Which of two versions is newer is the record type's ``newness``. Reading takes the newer of
the broker's version and this host's copy: a record the broker lost (flushed, restarted
empty), or holds an older version of, is read from the copy and written back, unless the
broker should no longer hold it (``keep``: its retention). With the broker unreachable,
reads give this host's copies and say so (``broker_error``); writes raise ``BrokerError``.
A broker value that holds no valid record is named in a ``StateError`` when this host has no
copy to use instead, and noted (never raised) by a listing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import redis
from pydantic import BaseModel, ValidationError
from redis.exceptions import WatchError

import ccci_tasks.atomic as atomic
from ccci_tasks import broker
from ccci_tasks.errors import BrokerError, StateError, WaitTimeout
from ccci_tasks.state import records

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
CHUNK: Final = 500  # keys per MGET
LOCK_FILE: Final = ".lock"
RETRY_MAX_S: Final = 0.05  # the longest pause before another try of a transaction


@dataclass(frozen=True)
class Kind(Generic[M]):
    """What the store needs to know of a record type."""

    model: type[M]
    what: str  # "run report"
    name: Callable[[M], str]  # its key and file name
    score: Callable[[M], float]  # its place in the index
    newness: Callable[[M], tuple[Any, ...]]  # of two versions, the larger is the newer
    keep: Callable[[M], bool]  # whether the broker should hold it (retention)
    open: Callable[[M], bool]  # whether it is listed in the open index too


@dataclass(frozen=True)
class Found(Generic[M]):
    record: M | None
    broker_error: str | None = None  # set when the broker did not answer: this host's copy


@dataclass(frozen=True)
class Listing(Generic[M]):
    records: list[M]
    broker_error: str | None = None  # set when the broker did not answer: this host's copies
    problems: tuple[str, ...] = ()  # values and files left out, each named with why


@dataclass(frozen=True)
class Brokered(Generic[M]):
    """Records of one kind in the broker, with this host's copies; see the module docstring."""

    kind: Kind[M]
    client: redis.Redis = field(repr=False)
    prefix: str
    index: str
    open_index: str
    directory: Path
    turn_timeout_s: float = 60.0

    def key(self, name: str) -> str:
        return self.prefix + name

    def copy_path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    @contextmanager
    def _broker(self, what: str) -> Iterator[None]:
        with broker.failures(self.client, what):
            yield

    # --- values ---------------------------------------------------------------------------

    def _decode(self, name: str, raw: bytes | str | None) -> tuple[M | None, str | None]:
        """The record in a broker value (None when absent), or why it holds none."""
        if raw is None:
            return None, None
        try:
            record = self.kind.model.model_validate_json(raw)
        except ValidationError as exc:
            return None, (f"the broker's {self.kind.what} {name} (key {self.key(name)}) is "
                          f"invalid: {records.problems(exc)}")
        if (named := self.kind.name(record)) != name:
            return None, (f"the broker's {self.kind.what} under key {self.key(name)} names "
                          f"{named!r}")
        return record, None

    def _encode(self, record: M) -> str:
        return record.model_dump_json()

    def read_copy(self, name: str) -> M | None:
        """This host's copy of ``name``; ``StateError`` naming the file when it is unusable."""
        path = self.copy_path(name)
        record = records.read(path, self.kind.model, what=self.kind.what)
        if record is not None and (named := self.kind.name(record)) != name:
            raise StateError(f"{path}: the file names {named!r}, expected {name!r}")
        return record

    def _copy_or_none(self, name: str) -> M | None:
        try:
            return self.read_copy(name)
        except StateError as exc:
            log.warning("%s; using the broker's version", exc)
            return None

    def _newer(self, copy: M | None, held: M | None) -> bool:
        """Whether this host's ``copy`` is newer than what the broker ``held``."""
        return copy is not None and (held is None
                                     or self.kind.newness(copy) > self.kind.newness(held))

    def _refresh(self, record: M) -> None:
        """Bring this host's older copy up to the broker's version (so that a copy written
        early in a run, which another host then ended, does not stay behind)."""
        try:
            with atomic.file_lock(self.directory / LOCK_FILE):
                self._keep_copy(record)
        except OSError as exc:
            log.warning("the copy of %s %s is not refreshed: %s", self.kind.what,
                        self.kind.name(record), exc)

    def _keep_copy(self, record: M) -> None:
        """Write this host's copy, unless it holds a newer version already (the caller holds
        the file lock)."""
        name = self.kind.name(record)
        if self._newer(self._copy_or_none(name), record):
            return
        atomic.write_json(self.copy_path(name), record.model_dump(mode="json"))

    # --- reading --------------------------------------------------------------------------

    def get(self, name: str) -> Found[M]:
        """The newer of the broker's version and this host's copy (written back when it is
        the copy; see the module docstring)."""
        try:
            with self._broker(f"reading {self.kind.what} {name}"):
                raw = self.client.get(self.key(name))
        except BrokerError as exc:
            return Found(self.read_copy(name), str(exc))
        held, problem = self._decode(name, raw)
        copy = self.read_copy(name) if held is None else self._copy_or_none(name)
        if held is not None and copy is not None and self._newer(held, copy):
            self._refresh(held)
        if copy is not None and self._newer(copy, held):
            try:
                self._restore(copy)
            except (BrokerError, WaitTimeout) as exc:
                log.warning("%s %s is not written back to the broker: %s", self.kind.what,
                            name, exc)
            return Found(copy)
        if problem is not None:
            raise StateError(f"{problem}; this host has no copy of it under {self.directory} "
                             "(the hosts that wrote it keep one under their state root)")
        return Found(held)

    def listing(self, *, open_only: bool = False) -> Listing[M]:
        """Every record the broker lists (``open_only``: the open ones), with this host's
        copies (the newer of two versions of a name); copies the broker lacks are written
        back, older copies refreshed."""
        problems: list[str] = []
        copies = list(self._copies(problems))
        broker_error = None
        try:
            with self._broker(f"listing the {'open ' if open_only else ''}{self.kind.what}s"):
                index = self.open_index if open_only else self.index
                names = [n.decode() if isinstance(n, bytes) else str(n)
                         for n in self.client.zrange(index, 0, -1)]
                found = self._fetch(names, problems)
                if open_only:  # an open copy may be of a record the broker holds closed
                    found |= self._fetch([n for c in copies if self.kind.open(c)
                                          and (n := self.kind.name(c)) not in found], problems)
        except BrokerError as exc:
            broker_error, found = str(exc), {}
        for copy in copies:
            if open_only and not self.kind.open(copy):
                continue  # not asked for (a full listing writes it back if need be)
            name = self.kind.name(copy)
            held = found.get(name)
            if held is not None and self._newer(held, copy):
                self._refresh(held)
            if not self._newer(copy, held):
                continue
            found[name] = copy
            if broker_error is None:
                try:
                    self._restore(copy)
                except (BrokerError, WaitTimeout) as exc:
                    problems.append(f"{self.kind.what} {name} is not written back: {exc}")
        records = [r for r in found.values() if not open_only or self.kind.open(r)]
        return Listing(records, broker_error, tuple(problems))

    def _fetch(self, names: list[str], problems: list[str]) -> dict[str, M]:
        """The broker's records of ``names`` (those it holds); bad values go to
        ``problems``."""
        found: dict[str, M] = {}
        for start in range(0, len(names), CHUNK):
            chunk = names[start:start + CHUNK]
            for name, raw in zip(chunk, self.client.mget([self.key(n) for n in chunk]),
                                 strict=True):
                held, problem = self._decode(name, raw)
                if held is not None:
                    found[name] = held
                elif problem is not None:
                    problems.append(problem)
        return found

    def _copies(self, problems: list[str]) -> Iterator[M]:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                copy = self.read_copy(path.stem)
            except StateError as exc:
                problems.append(str(exc))
                continue
            if copy is not None:
                yield copy

    # --- writing --------------------------------------------------------------------------

    def change(self, name: str, edit: Callable[[M | None], M | None]) -> M | None:
        """Apply ``edit`` to the newest version of ``name`` (None when there is none) and
        write what it returns (it returns None to change nothing); return what was written.
        Atomic across hosts and processes; ``WaitTimeout`` when other writers kept changing
        the record for ``turn_timeout_s``; ``BrokerError`` when Redis fails."""
        with atomic.file_lock(self.directory / LOCK_FILE):
            written = self._transact(name, edit)
            if written is not None:
                self._keep_copy(written)
            return written

    def _restore(self, copy: M) -> None:
        """Write this host's newer copy back to the broker (unless it should not hold it)."""
        if self.kind.keep(copy):
            self._transact(self.kind.name(copy), lambda current: None)

    def _transact(self, name: str, edit: Callable[[M | None], M | None]) -> M | None:
        """One WATCH/MULTI read-modify-write, tried again until no other writer came in
        between. A newer copy of this host's is written back even when ``edit`` changes
        nothing. Returns what ``edit`` made (None when it made nothing)."""
        key, deadline, tries = self.key(name), time.monotonic() + self.turn_timeout_s, 0
        last = ""
        while True:
            tries += 1
            with self._broker(f"writing {self.kind.what} {name}"), \
                    self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    held, problem = self._decode(name, pipe.get(key))
                    copy = self._copy_or_none(name)
                    current = copy if self._newer(copy, held) else held
                    if current is None and problem is not None:
                        raise StateError(f"{problem}; this host has no copy of it: not "
                                         "changed")
                    made = edit(current)
                    if made is not None:
                        self._put(pipe, made)
                    elif current is not None and current is not held and self.kind.keep(current):
                        self._put(pipe, current)  # this host's newer copy, written back
                    else:
                        pipe.unwatch()
                    return made
                except WatchError as exc:  # redis-py says so too when the connection died
                    last = str(exc)
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"a turn to write {self.kind.what} {name} (key {key})", self.turn_timeout_s,
                    f"another writer changed it before each of {tries} tries ({last})")
            time.sleep(random.uniform(0, RETRY_MAX_S))  # noqa: S311 - jitter, not a secret

    def _put(self, pipe: Any, record: M) -> None:
        name = self.kind.name(record)
        pipe.multi()
        pipe.set(self.key(name), self._encode(record))
        pipe.zadd(self.index, {name: self.kind.score(record)})
        if self.kind.open(record):
            pipe.zadd(self.open_index, {name: self.kind.score(record)})
        else:
            pipe.zrem(self.open_index, name)
        pipe.execute()

    # --- retention ------------------------------------------------------------------------

    def drop_from_broker(self, before: float, limit: int = CHUNK) -> list[str]:
        """Remove from the broker (never from this host's copies) the records indexed before
        score ``before`` that it should no longer hold (``keep``), at most ``limit`` of
        them; a value that holds no record goes too. Return their names."""
        with self._broker(f"dropping old {self.kind.what}s"):
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in
                     self.client.zrangebyscore(self.index, "-inf", f"({before}", 0, limit)]
            if not names:
                return []
            gone = []
            for name, raw in zip(names, self.client.mget([self.key(n) for n in names]),
                                 strict=True):
                held, _ = self._decode(name, raw)
                if held is None or not self.kind.keep(held):
                    gone.append(name)
            if gone:
                self._forget(gone)
        return gone

    def _forget(self, names: Sequence[str]) -> None:
        pipe = self.client.pipeline()
        pipe.delete(*[self.key(n) for n in names])
        pipe.zrem(self.index, *names)
        pipe.zrem(self.open_index, *names)
        pipe.execute()
