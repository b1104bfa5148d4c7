"""The checked members of a snapshot tar, remembered beside its restore stamps.

Checking every member of a tar (``snapshots.tarcheck``: Python's ``tarfile`` parses each pax
header) costs a quarter of a second for a PostgreSQL cluster's 1,300 files and more for
larger volumes, on every restore, and a quick run ends with one. The member list depends only
on the tar's bytes, so it is kept, after the check passed and the tar's sha256 matched its
manifest, in ``<stamp dir>/<volume>.members.json`` bound to that sha256; a restore of the same
tar (the sha256 is verified again on every restore before anything is touched) reads it
instead of parsing the tar. A cache that is missing, unreadable, for another sha256 or holding
a path that is absolute or has ``..`` is ignored: the tar is checked again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from ccci_tasks.atomic import write_text
from ccci_tasks.state.volstamp import Member

__all__ = ["cache_path", "read", "write"]

VERSION: Final = 1
SUFFIX: Final = ".members.json"
KINDS: Final = frozenset("dflhp")


def cache_path(stamp_dir: Path, tar_file: str) -> Path:
    return stamp_dir / (tar_file.removesuffix(".tar") + SUFFIX)


def _safe(path: str | None) -> bool:
    return path is None or (not path.startswith("/") and ".." not in path.split("/"))


def read(path: Path, sha256: str) -> list[Member] | None:
    """The members remembered for the tar of ``sha256``; None when there are none."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw["version"] != VERSION or raw["sha256"] != sha256:
            return None
        members = [Member(str(p), str(n), str(k), None if link is None else str(link))
                   for p, n, k, link in raw["members"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not members or not all(m.kind in KINDS and _safe(m.path) and _safe(m.name)
                              and _safe(m.link) for m in members):
        return None
    return members


def write(path: Path, sha256: str, members: list[Member]) -> None:
    """Remember the checked ``members`` of the tar of ``sha256`` (atomically, 0600)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    rows = [[m.path, m.name, m.kind, m.link] for m in members]
    write_text(path, json.dumps({"version": VERSION, "sha256": sha256, "members": rows},
                                separators=(",", ":")), mode=0o600)
