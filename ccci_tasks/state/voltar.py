"""Volume directories <-> tar files: the platform-free core of snapshots (R5.3).

``snapshot_dirs`` streams each volume's mountpoint through GNU tar into ``<name>.tar``,
hashing while writing. ``restore_dirs`` checks every sha256 and every member of every tar
before it touches any volume, then clears each volume and untars into it.

Why GNU tar (argument lists, never a shell) and not ``tarfile`` for the data: tar keeps
numeric ownership, modes, symlinks, hard links, sparse files (``--sparse``), xattrs and POSIX
ACLs in the POSIX (pax) format; ``tarfile`` writes sparse files dense, loses xattrs and ACLs
and is slower on large volumes. ``tarfile`` (which reads GNU sparse and pax headers) is used
to *check* members before extraction: absolute names, ``..``, members below a symlink, links
that escape the volume (symlinks are resolved through the archive's own symlinks) and device
files are refused. GNU tar's own guards (refusing ``..``, delaying symlinks) are a second line.

Incremental restore (``restore_dirs(..., stamp_dir=...)``): after each restore a stamp of the
volume (``volstamp``) is written beside the snapshot; at the next restore of the same tar into
the same volume, only what changed since is fixed: entries whose ``lstat`` (inode, ctime, size,
mode, owner, ...) still equals the stamp are kept, changed and new entries are removed, and only
the members needed are extracted (GNU tar, by name, ``--no-recursion``). Every sha256 and every
member is still checked first (or, for a tar whose sha256 matched, the list of its members
checked on an earlier restore is read back: ``tarmembers``). A missing, unreadable or foreign
stamp means a full restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

from ccci_tasks import failpoints, stonith
from ccci_tasks.errors import IntegrityError, SnapshotError, UnsafeArchive
from ccci_tasks.platform.base import VolumeInfo
from ccci_tasks.state import tarmembers, volstamp
from ccci_tasks.state.volstamp import Member

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1 << 20
FLUSH_EVERY_BYTES: Final = 32 << 20
MAX_SYMLINK_HOPS: Final = 40  # Linux MAXSYMLINKS: a deeper chain fails with ELOOP

TAR: Final = "tar"
TAR_CREATE: Final = (
    "--create", "--file=-", "--format=posix", "--sparse", "--xattrs", "--acls",
    "--numeric-owner", "--one-file-system", "--sort=name", ".",
)
TAR_EXTRACT: Final = (
    "--extract", "--file=-", "--preserve-permissions", "--same-owner", "--numeric-owner",
    "--xattrs", "--xattrs-include=*", "--acls",
)
# Extract exactly the members named in a NUL-separated list (never what lies below them).
TAR_BY_NAME: Final = (
    "--no-recursion", "--no-wildcards", "--anchored", "--null", "--verbatim-files-from",
)
STAMP_DIR: Final = "restore-stamps"  # beside the snapshot folders (see warmsnap)

_VOLUME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


@dataclass(frozen=True)
class VolumeEntry:
    """One volume's tar in a snapshot."""

    name: str
    file: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Restored:
    """How one volume was restored."""

    name: str
    mode: Literal["full", "incremental"]
    why_full: str | None  # why the stamp could not be used (None: incremental, or no stamps)
    extracted: int  # members extracted
    removed: int  # entries removed first (full: everything)
    kept: int  # entries left as they were


def _tail(stderr: IO[bytes]) -> str:
    stderr.seek(0)
    lines = stderr.read().decode("utf-8", "replace").strip().splitlines()
    return " | ".join(lines[-5:])


def _mountpoint(volume: VolumeInfo) -> Path:
    path = Path(volume.mountpoint)
    if not path.is_dir():
        raise SnapshotError(
            f"volume {volume.name}: mountpoint {path} is not a directory on this host; "
            "snapshots need the Docker engine's volumes on the local file system"
        )
    return path


def tar_file_name(name: str) -> str:
    if not _VOLUME_RE.fullmatch(name) or name in (".", ".."):
        raise SnapshotError(f"volume name {name!r} cannot name a snapshot file")
    return f"{name}.tar"


class _Writeback:
    """Starts writing a file back to disk while it is still being written (``fdatasync`` in a
    thread every ``FLUSH_EVERY_BYTES``), so the final ``fsync`` waits only for the tail.

    Linux reports a write-back error once per open file: an error seen by the thread is kept
    and raised by ``close``, never lost.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._kick = threading.Event()
        self._closing = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._kick.wait()
            self._kick.clear()
            if self._closing:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._error = exc
                return

    def kick(self) -> None:
        self._kick.set()

    def close(self) -> None:
        self._closing = True
        self._kick.set()
        self._thread.join()
        if self._error is not None:
            raise self._error


def snapshot_dir(volume: VolumeInfo, dest_dir: Path) -> VolumeEntry:
    """Stream ``volume``'s mountpoint into ``dest_dir/<name>.tar``, hashing while writing."""
    source = _mountpoint(volume)
    file_name = tar_file_name(volume.name)
    dest = Path(dest_dir) / file_name
    digest = hashlib.sha256()
    size = flushed = 0
    with tempfile.TemporaryFile() as stderr:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out, subprocess.Popen(
            [TAR, "-C", str(source), *TAR_CREATE], stdout=subprocess.PIPE, stderr=stderr,
            env=stonith.tagged_env(None),
        ) as proc:
            assert proc.stdout is not None
            writeback = _Writeback(out.fileno())
            try:
                while chunk := proc.stdout.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if size - flushed >= FLUSH_EVERY_BYTES:
                        out.flush()
                        writeback.kick()
                        flushed = size
                out.flush()
                writeback.close()
                os.fsync(out.fileno())
            except BaseException:
                proc.kill()
                with contextlib.suppress(OSError):
                    writeback.close()
                raise
            returncode = proc.wait()
        if returncode != 0:
            raise SnapshotError(
                f"volume {volume.name}: tar of {source} exited {returncode}: {_tail(stderr)}"
            )
    return VolumeEntry(volume.name, file_name, size, digest.hexdigest())


def snapshot_dirs(volumes: Sequence[VolumeInfo], dest_dir: Path) -> list[VolumeEntry]:
    """One tar per volume in ``dest_dir``; entries are named by ``VolumeInfo.name``."""
    names = [v.name for v in volumes]
    if len(set(names)) != len(names):
        raise SnapshotError(f"duplicate volume names {names}: each needs its own tar")
    return [snapshot_dir(volume, dest_dir) for volume in volumes]


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_entries(src_dir: Path, entries: Iterable[VolumeEntry], what: str) -> None:
    """Re-hash every tar; a mismatch names the volume and both hashes."""
    for entry in entries:
        path = Path(src_dir) / entry.file
        try:
            actual, size = hash_file(path)
        except FileNotFoundError as exc:
            raise IntegrityError(
                f"{what}: volume {entry.name}: {path} is missing (manifest sha256 "
                f"{entry.sha256})"
            ) from exc
        if actual != entry.sha256:
            raise IntegrityError(
                f"{what}: volume {entry.name}: {path} has sha256 {actual} "
                f"({size} bytes) but the manifest says sha256 {entry.sha256} "
                f"({entry.size_bytes} bytes); the snapshot is corrupt, nothing was restored"
            )


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
    return [volstamp.member_of(info) for info in infos]


def clear_dir(path: Path) -> None:
    """Remove everything inside ``path`` (never following symlinks), keep ``path``."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _extract(volume: VolumeInfo, tar_path: Path, names: Sequence[str] | None = None) -> None:
    """Untar ``tar_path`` into the volume: every member, or only ``names`` (archive names).

    By name, tar reads the archive as a file (it skips the other members' data) and the
    names as a NUL-separated list on stdin.
    """
    target = _mountpoint(volume)
    with tempfile.TemporaryFile() as stderr, tempfile.TemporaryFile() as feed:
        if names is None:
            argv = [TAR, "-C", str(target), *TAR_EXTRACT]
            with open(tar_path, "rb") as source:
                result = subprocess.run(argv, stdin=source, stderr=stderr, check=False,
                                        env=stonith.tagged_env(None))
        else:
            feed.write(b"".join(os.fsencode(n) + b"\0" for n in names))
            feed.seek(0)
            argv = [TAR, "-C", str(target), *(a for a in TAR_EXTRACT if a != "--file=-"),
                    f"--file={tar_path}", *TAR_BY_NAME, "--files-from=-"]
            result = subprocess.run(argv, stdin=feed, stderr=stderr, check=False,
                                    env=stonith.tagged_env(None))
        if result.returncode != 0:
            raise SnapshotError(
                f"volume {volume.name}: untar into {target} exited {result.returncode}: "
                f"{_tail(stderr)}; the volume is partly restored"
            )


def _extract_halves(volume: VolumeInfo, tar_path: Path, names: Sequence[str],
                    members: Sequence[Member]) -> None:
    """Extract ``names`` in two calls with the ``mid-restore`` failpoint between them (only
    while it is armed). The second call takes the first half's directories again, so their
    modes and times end as the tar has them."""
    half = len(names) // 2
    first, second = list(names[:half]), list(names[half:])
    if first:
        _extract(volume, tar_path, first)
    failpoints.fire("mid-restore")
    dirs = {m.name for m in members if m.kind == "d"}
    again = [n for n in first if n in dirs] + second
    if again:
        _extract(volume, tar_path, again)


def _remove(root: Path, paths: Sequence[str]) -> None:
    """Delete each path under ``root`` (a directory with everything below it), no symlinks
    followed. ``paths`` come from a scan of ``root``, top-down."""
    for rel in paths:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _stamp_path(stamp_dir: Path, name: str) -> Path:
    return stamp_dir / (tar_file_name(name)[: -len(".tar")] + ".stamp.json")


def _restore_volume(
    volume: VolumeInfo, tar_path: Path, entry: VolumeEntry, members: list[Member],
    stamp_dir: Path | None, what: str,
) -> Restored:
    root = _mountpoint(volume)
    stamp, why = None, None
    if stamp_dir is not None:
        stamp_path = _stamp_path(stamp_dir, entry.name)
        stamp, why = volstamp.read_stamp(stamp_path, sha256=entry.sha256, mountpoint=root)
        stamp_path.unlink(missing_ok=True)  # gone while the volume changes; rewritten after
    try:
        if stamp is not None:
            current = volstamp.scan(root)
            plan = volstamp.plan_restore(members, stamp.entries, current)
            _remove(root, plan.remove)
            if failpoints.armed("mid-restore"):
                _extract_halves(volume, tar_path, plan.extract, members)
            elif plan.extract:
                _extract(volume, tar_path, plan.extract)
            result = Restored(entry.name, "incremental", None, len(plan.extract),
                              len(plan.remove), plan.kept)
        else:
            removed = sum(1 for _ in root.iterdir())
            clear_dir(root)
            if failpoints.armed("mid-restore"):
                _extract_halves(volume, tar_path, [m.name for m in members], members)
            else:
                _extract(volume, tar_path)
            result = Restored(entry.name, "full", why, len(members), removed, 0)
    except OSError as exc:
        raise SnapshotError(
            f"{what}: volume {entry.name}: restoring {volume.mountpoint} failed: {exc}; "
            "the volume is partly restored"
        ) from exc
    if stamp_dir is not None:
        stamp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        volstamp.write_stamp(_stamp_path(stamp_dir, entry.name),
                             volstamp.take(entry.sha256, root))
    log.info("%s: volume %s restored (%s%s): %d extracted, %d removed, %d kept", what,
             entry.name, result.mode, f", {why}" if result.mode == "full" and why else "",
             result.extracted, result.removed, result.kept)
    return result


def restore_dirs(
    volumes: Sequence[VolumeInfo], src_dir: Path, entries: Sequence[VolumeEntry],
    what: str = "snapshot", *, stamp_dir: Path | None = None,
) -> list[Restored]:
    """Restore each entry's tar into the volume of the same name.

    Everything is checked before anything is touched: every sha256, every volume's
    presence, every member of every tar. Then each volume is restored: in full (cleared and
    untarred), or, with ``stamp_dir`` and a valid stamp from the last restore of the same tar
    into the same volume, incrementally (only what changed since is fixed; see
    ``volstamp``). Afterwards the volume's content equals the tar's exactly, and a new stamp
    is written to ``stamp_dir``.
    """
    by_name = {v.name: v for v in volumes}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        hashing = pool.submit(verify_entries, src_dir, entries, what)  # alongside the checks
        members: dict[str, list[Member]] = {}
        checked: list[VolumeEntry] = []  # members read from the tar, not remembered
        problem: SnapshotError | None = None
        try:
            missing = [e.name for e in entries if e.name not in by_name]
            if missing:
                raise SnapshotError(
                    f"{what}: volume(s) {', '.join(missing)} do not exist on the platform "
                    f"(it has {', '.join(sorted(by_name)) or 'none'}); nothing was restored"
                )
            for entry in entries:
                _mountpoint(by_name[entry.name])
                known = (None if stamp_dir is None else
                         tarmembers.read(tarmembers.cache_path(stamp_dir, entry.file),
                                         entry.sha256))
                if known is None:
                    known = archive_members(Path(src_dir) / entry.file,
                                            f"{what}: volume {entry.name}")
                    checked.append(entry)
                members[entry.name] = known
        except SnapshotError as exc:
            problem = exc
        hashing.result()  # a corrupt tar is named as such, before any other problem
    if problem is not None:
        raise problem
    if stamp_dir is not None:
        for entry in checked:  # the tars matched their sha256: remember what was checked
            tarmembers.write(tarmembers.cache_path(stamp_dir, entry.file), entry.sha256,
                             members[entry.name])
    return [
        _restore_volume(by_name[e.name], Path(src_dir) / e.file, e, members[e.name],
                        stamp_dir, what)
        for e in entries
    ]
