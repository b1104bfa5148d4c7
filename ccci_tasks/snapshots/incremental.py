"""Incremental restore: what each file of a volume looked like right after its last restore.

After a restore, every entry of the volume is, by construction, exactly the snapshot's member
of the same path. The stamp (``state.volstamp``) records each entry's ``lstat`` (type, inode,
ctime, mtime, size, mode, uid, gid, link count) beside the snapshot. At the next restore of the
same snapshot into the same volume, an entry whose ``lstat`` still equals its stamp is known to
be unchanged, and only the rest is fixed from the tar: changed and new entries are removed,
changed and missing members are extracted (``plan_restore``, pure).

Why that is safe: ctime (``st_ctime_ns``) is set by the kernel to the current time on every
change of a file's content or metadata (write, truncate, chmod, chown, link, unlink, rename,
xattrs); no system call sets it to a chosen value (``utimensat`` sets mtime and atime, and
bumps ctime). A file whose inode number, ctime and every other recorded field are unchanged on
the same file system therefore has the content it had when the stamp was taken. Two guards
close the gaps:

* racy timestamps: the kernel's file clock is coarse (a tick, or whole seconds on some file
  systems). ``settle`` waits until the clock is past the newest recorded ctime by a margin, so
  any later change gets a strictly later ctime than the one recorded;
* binding: a stamp names the tar's sha256, the volume's mountpoint and its device and root
  inode; any mismatch, a missing or unreadable stamp, means a full restore.

What it trusts: the kernel's ctime. A process able to set the system clock back
(CAP_SYS_TIME) or to write the file system's block device could forge one; the app under test
has neither in a default container.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ccci_tasks.state.volstamp import ROOT, FileStat, Member, Stamp, load_stamp, save_stamp

__all__ = ["RestorePlan", "plan_restore", "read_stamp", "scan", "settle", "take", "write_stamp"]

# How far past the newest recorded ctime the clock must be before a stamp is trusted.
FINE_MARGIN_NS: Final = 20_000_000  # > one kernel tick (4 ms at HZ=250, 10 ms at HZ=100)
COARSE_MARGIN_NS: Final = 1_000_000_000  # file systems with whole-second timestamps
# On-disk type of each member type: a hard link is a regular file sharing its target's inode.
DISK_KIND: Final = {"d": "d", "f": "f", "h": "f", "l": "l", "p": "p"}


def scan(root: Path) -> dict[str, FileStat]:
    """``lstat`` of the root and everything below it, by normalised path.

    Never follows symlinks and, like ``tar --one-file-system``, does not descend into another
    file system mounted inside the volume.
    """
    top = os.lstat(root)
    found = {ROOT: FileStat.of(top)}
    todo = [(str(root), "")]
    while todo:
        folder, prefix = todo.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                rel = prefix + entry.name
                found[rel] = FileStat.of(st)
                if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                    todo.append((entry.path, rel + "/"))
    return found


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RestorePlan:
    """What an incremental restore does: remove these paths, then extract these members."""

    remove: tuple[str, ...]  # top-down; a directory goes with everything below it
    extract: tuple[str, ...]  # archive names, in archive order
    kept: int  # entries left as they are


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ROOT


def _below(path: str, folders: set[str]) -> bool:
    while path != ROOT:
        path = _parent(path)
        if path in folders:
            return True
    return False


def plan_restore(
    members: Sequence[Member], stamp: Mapping[str, FileStat], current: Mapping[str, FileStat]
) -> RestorePlan:
    """Which entries to remove and which members to extract so that the volume equals the
    snapshot again, given its state now and the stamp taken after the last restore.

    An entry is kept only when its ``lstat`` equals the stamp's and it has the member's type.
    A directory that changed (entries added or removed, chmod, ...) but is still a directory is
    kept in place and its member extracted again (tar re-applies its mode, owner and times).
    Whenever a member is extracted or an entry removed, its parent directory's member is
    extracted too (its mtime changed), and a hard link is extracted with its whole group.
    """
    snapshot = {m.path: m for m in members}
    remove: list[str] = []
    removed_dirs: set[str] = set()
    extract: set[str] = set()
    in_place: set[str] = set()  # directories that stay and get their metadata again
    for path in sorted(current, key=lambda p: (p.count("/"), p)):
        st = current[path]
        member = snapshot.get(path)
        if path != ROOT and _below(path, removed_dirs):
            if member is not None:
                extract.add(path)  # it went with its removed parent
            continue
        if member is not None and stamp.get(path) == st and DISK_KIND[member.kind] == st.kind:
            continue  # unchanged since the last restore
        if path == ROOT or (member is not None and member.kind == "d" and st.kind == "d"):
            extract.add(path)  # the root is never removed; a directory is fixed in place
            in_place.add(path)
            continue
        remove.append(path)
        if st.kind == "d":
            removed_dirs.add(path)
        if member is not None:
            extract.add(path)
    extract.update(path for path in snapshot if path not in current)
    # A hard link is extracted with its whole group (target and every link to it).
    groups: dict[str, set[str]] = {}
    for member in members:
        if member.kind == "h" and member.link is not None:
            groups.setdefault(member.link, {member.link}).add(member.path)
    for group in groups.values():
        if group & extract:
            for path in sorted(group - extract):
                extract.add(path)
                if path in current:
                    remove.append(path)
    # Creating or removing an entry changes its directory's mtime: extract that again too.
    for path in [*remove, *(p for p in extract if p not in in_place)]:
        parent = _parent(path)
        if path != ROOT and parent in snapshot:
            extract.add(parent)
    names = tuple(m.name for m in members if m.path in extract)
    kept = sum(1 for p in current if p in snapshot and p not in extract
               and not _below(p, removed_dirs))
    return RestorePlan(tuple(remove), names, kept)


# --------------------------------------------------------------------------- stamps


def take(sha256: str, mountpoint: Path) -> Stamp:
    """The stamp of ``mountpoint`` as it is now (call right after a restore)."""
    entries = scan(mountpoint)
    root = entries[ROOT]
    return Stamp(sha256, str(mountpoint), os.lstat(mountpoint).st_dev, root.ino, entries)


def settle(entries: Iterable[FileStat]) -> float:
    """Sleep until the clock is past the newest ctime by a margin; return the seconds slept.

    Afterwards any change to any of these files gets a ctime later than the recorded one,
    even on a file system whose timestamps are coarse.
    """
    ctimes = [st.ctime_ns for st in entries]
    if not ctimes:
        return 0.0
    coarse = all(c % 1_000_000_000 == 0 for c in ctimes)
    until = max(ctimes) + (COARSE_MARGIN_NS if coarse else FINE_MARGIN_NS)
    wait_s = max(0.0, (until - time.time_ns()) / 1e9)
    if wait_s:
        time.sleep(wait_s)
    return wait_s


def write_stamp(path: Path, stamp: Stamp) -> None:
    """Write ``stamp`` once the clock has passed its newest ctime (``settle``)."""
    settle(stamp.entries.values())
    save_stamp(path, stamp)


def read_stamp(path: Path, *, sha256: str, mountpoint: Path) -> tuple[Stamp | None, str]:
    """The stamp at ``path`` if it is intact and was taken for this tar in this volume.

    Returns ``(None, why)`` otherwise: the caller restores in full.
    """
    stamp, why = load_stamp(path, sha256=sha256)
    if stamp is None:
        return None, why
    try:
        root = os.lstat(mountpoint)
    except OSError as exc:
        return None, f"cannot stat {mountpoint}: {exc}"
    if (stamp.mountpoint, stamp.dev, stamp.root_ino) != (str(mountpoint), root.st_dev,
                                                          root.st_ino):
        return None, "the restore stamp is for another volume"
    if ROOT not in stamp.entries:
        return None, "the restore stamp has no entry for the volume root"
    return stamp, ""
