"""Incremental restores: after a restore only what changed since the last one is fixed, and
the volume still equals the snapshot exactly."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_warmsnap import DOMAIN, RECIPE, VERSION, make_volume, populate

from ccci_tasks import snapshots
from ccci_tasks.config import Settings
from ccci_tasks.naming import Recipe
from ccci_tasks.platform.base import VolumeInfo
from ccci_tasks.snapshots.incremental import plan_restore
from ccci_tasks.snapshots.voltar import Restored, restore_dirs, snapshot_dirs
from ccci_tasks.state import warmsnap
from ccci_tasks.state.volstamp import FileStat, Member
from ccci_tasks.state.warmsnap import STAMP_DIR

if TYPE_CHECKING:
    from docker import DockerClient

Row = tuple[str, str, int, int, int, int, int, str, tuple[tuple[str, bytes], ...]]


def full_listing(root: Path) -> list[Row]:
    """(path, type, size, mode, uid, gid, mtime_ns, sha256 or link target, xattrs) of all."""
    rows: list[Row] = []
    for folder, dirs, names in os.walk(root):
        for name in ["", *dirs, *names] if Path(folder) == root else [*dirs, *names]:
            path = Path(folder) / name if name else root
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                kind, content = "f", hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                kind, content = "l", os.readlink(path)
            else:
                kind, content = ("d" if stat.S_ISDIR(st.st_mode) else "p"), ""
            size = st.st_size if kind in "fl" else 0
            mtime = 0 if kind == "l" else st.st_mtime_ns  # tar keeps no symlink mtime
            xattrs = () if kind == "l" else tuple(sorted(
                (key, os.getxattr(path, key, follow_symlinks=False))
                for key in os.listxattr(path, follow_symlinks=False)))
            rel = str(path.relative_to(root)) if path != root else "."
            rows.append((rel, kind, size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         mtime, content, xattrs))
    return sorted(rows)


def fill(root: Path, files: int = 300) -> None:
    """The snapshot test data, a file that a same-size rewrite will target, a sparse file."""
    populate(root, files=files, big_mib=0)
    (root / "d01" / "s1" / "same.txt").write_bytes(b"A" * 64)
    with open(root / "sparse.img", "wb") as handle:
        handle.write(b"head" * 1024)
        handle.seek(64 << 20)
        handle.write(b"tail" * 1024)


class Volume:
    """A plain directory with the snapshot test data, its snapshot, and a stamp folder."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "vol"
        self.root.mkdir()
        fill(self.root)
        self.info = VolumeInfo("data", str(self.root))
        self.snap = tmp_path / "snap"
        self.snap.mkdir()
        self.entries = snapshot_dirs([self.info], self.snap)
        self.stamps = tmp_path / STAMP_DIR
        self.expected = full_listing(self.root)

    def restore(self, *, stamps: bool = True) -> Restored:
        [done] = restore_dirs([self.info], self.snap, self.entries,
                              stamp_dir=self.stamps if stamps else None)
        return done

    @property
    def stamp_file(self) -> Path:
        return self.stamps / "data.stamp.json"


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    """A populated directory (300 files, links, xattr, fifo) and its snapshot."""
    return Volume(tmp_path)


def _forge_same_size(root: Path) -> None:
    """Same size, other content, mtime and atime put back: only ctime tells."""
    path = root / "d01" / "s1" / "same.txt"
    before = path.stat()
    path.write_bytes(b"B" * 64)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == 64


def _mutate(root: Path) -> None:
    """What an upgraded app might do to its volume, and a few things it should not."""
    (root / "d00" / "s0" / "f3.txt").write_text("modified\n")  # modify
    (root / "d00" / "s0" / "new.txt").write_text("added\n")  # add a file
    (root / "d02" / "s9" / "extra").mkdir(parents=True)  # add a directory tree
    (root / "d02" / "s9" / "extra" / "x").write_text("x")
    (root / "d00" / "s1" / "f4.txt").unlink()  # delete
    os.chmod(root / "d00" / "s2" / "f5.txt", 0o644)  # chmod a file
    os.chmod(root / "d01" / "s0", 0o700)  # chmod a directory
    os.chown(root / "d00" / "s3" / "f6.txt", 1234, 1234)  # chown
    (root / "link").unlink()  # retarget a symlink
    (root / "link").symlink_to("d00/s0/f2.txt")
    (root / "d00" / "s4" / "f7.txt").unlink()  # a file replaced by a symlink
    (root / "d00" / "s4" / "f7.txt").symlink_to("/etc/passwd")
    hard = root / "hard"  # break the hard link: same content, its own inode
    data = hard.read_bytes()
    hard.unlink()
    hard.write_bytes(data)
    os.link(root / "d00" / "s5" / "f8.txt", root / "d00" / "s5" / "another-name")  # new link
    os.setxattr(root / "d00" / "s0" / "f2.txt", "user.ccci", b"changed")  # xattr
    _forge_same_size(root)
    with open(root / "sparse.img", "r+b") as handle:  # write into the hole of a sparse file
        handle.seek(32 << 20)
        handle.write(b"middle")
    (root / "d00" / "s6").rename(root / "moved")  # a directory moved away
    (root / "empty-dir").rmdir()
    (root / "empty-dir").write_text("now a file")  # a directory replaced by a file


# --------------------------------------------------------------------------- end to end


def test_incremental_restore_equals_the_snapshot(volume: Volume) -> None:
    """Restore, mutate (modify, add, delete, chmod, chown, symlinks, hard links, xattr, a
    same-size change with a forged mtime, moved and replaced directories), restore again:
    the second restore is incremental and the full listing with sha256 equals the snapshot."""
    first = volume.restore()
    assert first.mode == "full" and first.why_full == "no restore stamp yet"
    assert full_listing(volume.root) == volume.expected
    assert volume.stamp_file.is_file()

    _mutate(volume.root)
    assert full_listing(volume.root) != volume.expected
    second = volume.restore()
    assert second.mode == "incremental", second
    assert full_listing(volume.root) == volume.expected
    assert os.stat(volume.root / "hard").st_ino == os.stat(
        volume.root / "d00" / "s0" / "f1.txt").st_ino
    assert second.kept > 250 and second.extracted < 40, second
    assert os.stat(volume.root / "sparse.img").st_blocks * 512 < 8 << 20  # still sparse

    third = volume.restore()  # nothing changed since: nothing to do
    assert (third.mode, third.extracted, third.removed) == ("incremental", 0, 0)
    assert full_listing(volume.root) == volume.expected


def test_only_the_forged_file_changed_is_still_caught(volume: Volume) -> None:
    """A same-size rewrite with its mtime put back is found by its ctime and restored."""
    volume.restore()
    _forge_same_size(volume.root)
    done = volume.restore()
    assert done.mode == "incremental" and done.extracted >= 1
    assert (volume.root / "d01" / "s1" / "same.txt").read_bytes() == b"A" * 64
    assert full_listing(volume.root) == volume.expected


BREAK_STAMP: dict[str, Callable[[Path], object]] = {
    "missing": lambda p: p.unlink(),
    "not json": lambda p: p.write_text("{not json"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "wrong version": lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "version": 99})),
    "bad entry": lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "entries": {".": ["d", "x"]}})),
    "other snapshot": lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "sha256": "0" * 64})),
    "other volume": lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "root_ino": 1})),
}


@pytest.mark.parametrize("case", sorted(BREAK_STAMP))
def test_a_broken_or_missing_stamp_means_a_full_restore(volume: Volume, case: str) -> None:
    """A missing, corrupt or foreign stamp is never trusted: the restore is a full one, and
    the volume equals the snapshot."""
    volume.restore()
    _mutate(volume.root)
    BREAK_STAMP[case](volume.stamp_file)
    done = volume.restore()
    assert done.mode == "full", done
    assert done.why_full
    assert full_listing(volume.root) == volume.expected
    assert volume.restore().mode == "incremental"  # a fresh stamp was written


def test_without_a_stamp_dir_every_restore_is_full(volume: Volume) -> None:
    """restore_dirs without stamp_dir keeps the old behaviour: clear and untar, no stamp."""
    volume.restore(stamps=False)
    _mutate(volume.root)
    done = volume.restore(stamps=False)
    assert done.mode == "full" and done.why_full is None
    assert full_listing(volume.root) == volume.expected
    assert not volume.stamps.exists()


# --------------------------------------------------------------------------- the plan (pure)

M = [Member(".", "./", "d"), Member("a", "./a", "d"), Member("a/f", "./a/f", "f"),
     Member("a/h", "./a/h", "h", "a/f"), Member("g", "./g", "f"), Member("l", "./l", "l")]


def _st(kind: str, ino: int, ctime: int = 1, mode: int = 0o644) -> FileStat:
    return FileStat(kind, ino, ctime, ctime, 0, mode, 0, 0, 1)


STAMP = {".": _st("d", 1), "a": _st("d", 2), "a/f": _st("f", 3), "a/h": _st("f", 3),
         "g": _st("f", 4), "l": _st("l", 5)}


@pytest.mark.parametrize(
    ("change", "gone", "remove", "extract"),
    [
        ({}, [], [], []),
        ({"g": _st("f", 4, ctime=2)}, [], ["g"], ["./", "./g"]),  # modified
        ({"new": _st("f", 9)}, [], ["new"], ["./"]),  # added
        ({}, ["g"], [], ["./", "./g"]),  # deleted
        ({"a": _st("d", 2, ctime=2, mode=0o700)}, [], [], ["./a"]),  # dir chmod: in place
        ({"a": _st("f", 7)}, ["a/f", "a/h"], ["a"],
         ["./", "./a", "./a/f", "./a/h"]),  # a directory replaced by a file
        ({"a/h": _st("f", 8)}, [], ["a/h", "a/f"],
         ["./a", "./a/f", "./a/h"]),  # a hard link broken: the whole group again
        ({"l": _st("l", 5, ctime=3)}, [], ["l"], ["./", "./l"]),  # symlink retargeted
        ({"a/x": _st("d", 10), "a/x/y": _st("f", 11)}, [], ["a/x"], ["./a"]),  # new tree
        ({"a": _st("l", 12)}, ["a/f", "a/h"], ["a"],
         ["./", "./a", "./a/f", "./a/h"]),  # a directory replaced by a symlink
    ],
)
def test_plan_restore(change: dict[str, FileStat], gone: list[str], remove: list[str],
                      extract: list[str]) -> None:
    """Only changed entries are removed and only the members they need are extracted (with
    their directory, and a hard link with its whole group)."""
    current = {**STAMP, **change}
    for path in gone:
        current.pop(path)
    plan = plan_restore(M, STAMP, current)
    assert list(plan.remove) == remove
    assert list(plan.extract) == extract


# --------------------------------------------------------------------------- through warmsnap


@pytest.mark.docker
def test_warmsnap_restores_incrementally_beside_the_snapshot(
    clean_swarm: DockerClient, settings: Settings, state_dir: Path
) -> None:
    """warmsnap.restore keeps its stamp beside the snapshot (never inside it): the second
    restore is incremental, the volume equals the snapshot, the snapshot is byte-identical."""
    from ccci_tasks.platform.swarm import SwarmPlatform

    platform = SwarmPlatform(settings)
    recipe = Recipe(RECIPE)
    mount = make_volume(clean_swarm)
    fill(mount, files=200)
    snapshots.snapshot(platform, state_dir, recipe, DOMAIN, VERSION)
    expected = full_listing(mount)
    current = warmsnap.current_dir(state_dir / RECIPE)
    assert current is not None
    files = {p.name: p.read_bytes() for p in current.iterdir()}
    snapshots.restore(platform, state_dir, recipe, DOMAIN)
    stamp = state_dir / RECIPE / STAMP_DIR / "data.stamp.json"
    assert stamp.is_file() and stat.S_IMODE(stamp.stat().st_mode) == 0o600
    _mutate(mount)
    before = stamp.stat().st_mtime_ns
    snapshots.restore(platform, state_dir, recipe, DOMAIN)
    assert full_listing(mount) == expected
    assert stamp.stat().st_mtime_ns != before
    assert {p.name: p.read_bytes() for p in current.iterdir()} == files
    assert warmsnap.verify(state_dir, recipe).version == VERSION


# --------------------------------------------------------------------------- members cache


def test_checked_members_are_remembered_and_used(volume: Volume,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The first restore checks the tar's members and remembers them (bound to its sha256);
    the next restore of the same tar reads them back instead of parsing the tar, and the
    volume still equals the snapshot."""
    from ccci_tasks.snapshots import tarcheck, voltar
    from ccci_tasks.state import tarmembers

    volume.restore()
    cache = tarmembers.cache_path(volume.stamps, volume.entries[0].file)
    remembered = tarmembers.read(cache, volume.entries[0].sha256)
    assert remembered == tarcheck.archive_members(volume.snap / volume.entries[0].file, "x")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600

    def parse(*args: Any) -> Any:
        raise AssertionError("the tar was parsed again")

    monkeypatch.setattr(voltar, "archive_members", parse)
    _mutate(volume.root)
    assert volume.restore().mode == "incremental"
    assert full_listing(volume.root) == volume.expected


@pytest.mark.parametrize(
    "spoil",
    [
        lambda raw: {**raw, "sha256": "0" * 64},  # another tar's
        lambda raw: {**raw, "version": 99},
        lambda raw: {**raw, "members": [["../x", "../x", "f", None]]},  # an unsafe path
        lambda raw: {**raw, "members": [["/etc/x", "/etc/x", "f", None]]},
        lambda raw: {**raw, "members": [["a", "a", "c", None]]},  # a device
        lambda raw: {**raw, "members": "nope"},
    ],
)
def test_a_spoiled_members_cache_is_ignored(volume: Volume, spoil: Callable[[Any], Any]) -> None:
    """A members cache for another sha256, of another format or holding an unsafe member
    is not used: the tar is checked again (and the cache rewritten)."""
    from ccci_tasks.state import tarmembers

    volume.restore()
    cache = tarmembers.cache_path(volume.stamps, volume.entries[0].file)
    cache.write_text(json.dumps(spoil(json.loads(cache.read_text()))))
    assert tarmembers.read(cache, volume.entries[0].sha256) is None
    volume.restore()
    assert tarmembers.read(cache, volume.entries[0].sha256) is not None
    assert full_listing(volume.root) == volume.expected


def test_members_are_not_remembered_for_a_corrupt_tar(volume: Volume) -> None:
    """A tar whose sha256 does not match its manifest is refused and nothing is remembered."""
    from ccci_tasks.errors import IntegrityError
    from ccci_tasks.state import tarmembers

    tar = volume.snap / volume.entries[0].file
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        volume.restore()
    assert not tarmembers.cache_path(volume.stamps, volume.entries[0].file).exists()
