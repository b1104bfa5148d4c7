"""Volume directories <-> tar files: the data of snapshots (R5.3).

``snapshot_dirs`` streams each volume's mountpoint through GNU tar into ``<name>.tar``,
hashing while writing. ``restore_dirs`` checks every sha256 and every member of every tar
before it touches any volume, then clears each volume and untars into it.

Why GNU tar (argument lists, never a shell) and not ``tarfile`` for the data: tar keeps
numeric ownership, modes, symlinks, hard links, sparse files (``--sparse``), xattrs and POSIX
ACLs in the POSIX (pax) format; ``tarfile`` writes sparse files dense, loses xattrs and ACLs
and is slower on large volumes. ``tarfile`` is used to *check* members before extraction
(``snapshots.tarcheck``).

Incremental restore (``restore_dirs(..., stamp_dir=...)``): after each restore a stamp of the
volume (``snapshots.incremental``) is written beside the snapshot; at the next restore of the
same tar into the same volume, only what changed since is fixed: entries whose ``lstat``
(inode, ctime, size, mode, owner, ...) still equals the stamp are kept, changed and new entries
are removed, and only the members needed are extracted (GNU tar, by name, ``--no-recursion``).
Every sha256 and every member is still checked first (or, for a tar whose sha256 matched, the
list of its members checked on an earlier restore is read back: ``state.tarmembers``). A
missing, unreadable or foreign stamp means a full restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

from ccci_tasks import failpoints, stonith
from ccci_tasks.errors import SnapshotError
from ccci_tasks.platform.base import VolumeInfo
from ccci_tasks.snapshots.incremental import plan_restore, read_stamp, scan, take, write_stamp
from ccci_tasks.snapshots.tarcheck import archive_members
from ccci_tasks.state import tarmembers
from ccci_tasks.state.volstamp import Member
from ccci_tasks.state.warmsnap import VolumeEntry, tar_file_name, verify_entries

__all__ = ["Restored", "clear_dir", "restore_dirs", "snapshot_dirs"]

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1 << 20
FLUSH_EVERY_BYTES: Final = 32 << 20

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
    return VolumeEntry(name=volume.name, file=file_name, size_bytes=size,
                       sha256=digest.hexdigest())


def snapshot_dirs(volumes: Sequence[VolumeInfo], dest_dir: Path) -> list[VolumeEntry]:
    """One tar per volume in ``dest_dir``; entries are named by ``VolumeInfo.name``."""
    names = [v.name for v in volumes]
    if len(set(names)) != len(names):
        raise SnapshotError(f"duplicate volume names {names}: each needs its own tar")
    return [snapshot_dir(volume, dest_dir) for volume in volumes]


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
        stamp, why = read_stamp(stamp_path, sha256=entry.sha256, mountpoint=root)
        stamp_path.unlink(missing_ok=True)  # gone while the volume changes; rewritten after
    try:
        if stamp is not None:
            current = scan(root)
            plan = plan_restore(members, stamp.entries, current)
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
        write_stamp(_stamp_path(stamp_dir, entry.name), take(entry.sha256, root))
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
    ``snapshots.incremental``). Afterwards the volume's content equals the tar's exactly, and a
    new stamp is written to ``stamp_dir``.
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
