"""Restore stamps and tar members: the records an incremental restore keeps beside a snapshot.

A stamp (``<snapshot root>/restore-stamps/<volume>.stamp.json``) records, right after a
restore, each entry of the volume with its ``lstat`` fields (``FileStat``), bound to the tar's
sha256, the volume's mountpoint and its device and root inode. What the stamp is for, why it is
safe and how it is taken and used is ``ccci_tasks.snapshots.incremental``'s; this module only
reads and writes the file (a missing, unreadable, malformed or foreign one reads as ``None``
with the reason, and the restore is then in full).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ccci_tasks.atomic import write_text

__all__ = [
    "ROOT",
    "STAMP_VERSION",
    "FileStat",
    "Member",
    "Stamp",
    "load_stamp",
    "save_stamp",
]

STAMP_VERSION: Final = 1
ROOT: Final = "."  # the volume root's path in a stamp and a member list


@dataclass(frozen=True)
class FileStat:
    """The ``lstat`` fields that change whenever a file's content or metadata change."""

    kind: str  # d, f, l, p, or o (other)
    ino: int
    ctime_ns: int
    mtime_ns: int
    size: int
    mode: int
    uid: int
    gid: int
    nlink: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        mode = st.st_mode
        kind = ("d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode)
                else "l" if stat.S_ISLNK(mode) else "p" if stat.S_ISFIFO(mode) else "o")
        return cls(kind, st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size, mode,
                   st.st_uid, st.st_gid, st.st_nlink)

    def row(self) -> list[Any]:
        return [self.kind, self.ino, self.ctime_ns, self.mtime_ns, self.size, self.mode,
                self.uid, self.gid, self.nlink]


@dataclass(frozen=True)
class Member:
    """One tar member: its path relative to the volume, its name in the archive, its type."""

    path: str  # normalised: no leading "./", "." for the volume root
    name: str  # as stored (what GNU tar matches when extracting by name)
    kind: str  # d, f, l (symlink), h (hard link), p (fifo)
    link: str | None = None  # normalised target of a hard link


@dataclass(frozen=True)
class Stamp:
    """The state of one volume right after a restore of one snapshot tar."""

    sha256: str
    mountpoint: str
    dev: int
    root_ino: int
    entries: dict[str, FileStat]

    def to_json(self) -> dict[str, Any]:
        return {"version": STAMP_VERSION, "sha256": self.sha256, "mountpoint": self.mountpoint,
                "dev": self.dev, "root_ino": self.root_ino,
                "entries": {path: st.row() for path, st in self.entries.items()}}


def save_stamp(path: Path, stamp: Stamp) -> None:
    """Write ``stamp`` atomically (0600)."""
    write_text(path, json.dumps(stamp.to_json(), separators=(",", ":")), mode=0o600)


def load_stamp(path: Path, *, sha256: str) -> tuple[Stamp | None, str]:
    """The stamp at ``path`` if it is intact and was taken for the tar of ``sha256``;
    ``(None, why)`` otherwise."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no restore stamp yet"
    except (OSError, ValueError) as exc:
        return None, f"the restore stamp {path} is unreadable ({exc})"
    try:
        if raw["version"] != STAMP_VERSION:
            return None, f"the restore stamp has version {raw['version']!r}"
        entries = {str(p): FileStat(str(row[0]), *(int(v) for v in row[1:]))
                   for p, row in raw["entries"].items()}
        stamp = Stamp(str(raw["sha256"]), str(raw["mountpoint"]), int(raw["dev"]),
                      int(raw["root_ino"]), entries)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, f"the restore stamp {path} is malformed ({exc!r})"
    if stamp.sha256 != sha256:
        return None, "the restore stamp is for another snapshot"
    return stamp, ""
