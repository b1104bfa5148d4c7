"""Safe tar extraction: every member of a snapshot tar is checked before any is extracted.

Python's ``tarfile`` (which reads GNU sparse and pax headers) reads the member list; refused
are absolute names, ``..``, members below a symlink, links that escape the volume (symlinks are
resolved through the archive's own symlinks) and device files. GNU tar's own guards (refusing
``..``, delaying symlinks) are a second line.
"""

from __future__ import annotations

import tarfile
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from ccci_tasks.errors import UnsafeArchive
from ccci_tasks.state.volstamp import ROOT, Member

__all__ = ["archive_members", "check_archive", "check_members", "member_of"]

MAX_SYMLINK_HOPS: Final = 40  # Linux MAXSYMLINKS: a deeper chain fails with ELOOP


def _parts(name: str, what: str) -> tuple[str, ...]:
    """The components of a member or hard-link path; refuse absolute paths and ``..``."""
    if name.startswith("/"):
        raise UnsafeArchive(f"{what}: absolute path {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"{what}: path {name!r} contains '..'")
    return parts


def _escapes(parts: Sequence[str], links: dict[str, str]) -> bool:
    """Whether ``parts`` resolves outside the root, following the archive's symlinks."""
    resolved: list[str] = []
    todo = deque(parts)
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get("/".join(resolved))
        if target is None:
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return False  # the kernel stops with ELOOP here: nothing is reached
        if target.startswith("/"):
            return True
        resolved.pop()
        todo.extendleft(reversed(target.split("/")))
    return False


def check_members(members: Iterable[tarfile.TarInfo], what: str) -> int:
    """Refuse a member list that could write outside its volume; return the member count."""
    links: dict[str, str] = {}
    count = 0
    for member in members:
        count += 1
        label = f"{what}: member {member.name!r}"
        parts = _parts(member.name, label)
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in links:
                raise UnsafeArchive(f"{label} lies below the symlink {'/'.join(parts[:depth])!r}")
        if member.ischr() or member.isblk():
            raise UnsafeArchive(f"{label} is a device file")
        if member.issym():
            if not parts:
                raise UnsafeArchive(f"{label}: the volume root cannot be a symlink")
            if member.linkname.startswith("/"):
                raise UnsafeArchive(
                    f"{label} is a symlink to the absolute path {member.linkname!r}"
                )
            links["/".join(parts)] = member.linkname
        elif member.islnk():
            linked = _parts(member.linkname, f"{label} (hard link target)")
            if not linked or _escapes(linked, links):
                raise UnsafeArchive(f"{label} hard-links outside the volume: {member.linkname!r}")
        elif not (member.isreg() or member.isdir() or member.isfifo()):
            raise UnsafeArchive(f"{label} has unsupported type {member.type!r}")
    for name, target in links.items():
        parent = name.split("/")[:-1]
        if _escapes([*parent, *target.split("/")], links):
            raise UnsafeArchive(f"{what}: member {name!r} is a symlink escaping the volume: "
                                f"{target!r}")
    return count


def _normalise(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts) or ROOT


def member_of(info: tarfile.TarInfo) -> Member:
    """A checked ``TarInfo`` as a ``Member`` (``check_members`` refused other types)."""
    kind = ("d" if info.isdir() else "l" if info.issym() else "h" if info.islnk()
            else "p" if info.isfifo() else "f")
    link = _normalise(info.linkname) if kind == "h" else None
    return Member(_normalise(info.name), info.name, kind, link)


def check_archive(path: Path, what: str) -> int:
    """Check every member of the tar at ``path`` (see ``check_members``)."""
    return len(archive_members(path, what))


def archive_members(path: Path, what: str) -> list[Member]:
    """Every member of the tar at ``path``, checked (see ``check_members``), in order."""
    try:
        with tarfile.open(path, "r:") as archive:
            infos = archive.getmembers()
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"{what}: {path} is not a readable tar: {exc}") from exc
    check_members(infos, what)
    return [member_of(info) for info in infos]
