"""Atomic file writes: a temp file in the same directory, fsync, rename, fsync the directory.

Below both ``state/`` and ``platform/``: it imports nothing of ccci_tasks.

A reader sees the old content or the new, never a partial file; a crash at any point
leaves at most a stray ``.<name>.tmp-*`` file, which ``sweep_temp`` removes.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    """Write ``value`` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n", mode)


def sweep_temp(directory: Path) -> list[Path]:
    """Remove temp files left by interrupted writes in ``directory``; return them."""
    removed = []
    if directory.is_dir():
        for stray in directory.glob(".*.tmp-*"):
            if stray.is_file():
                stray.unlink(missing_ok=True)
                removed.append(stray)
    return removed


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
