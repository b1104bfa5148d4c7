"""Known-good snapshots (R5.3): exact round trips, atomic replacement, refusals, safety."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ccci_tasks import constants as c
from ccci_tasks import snapshots
from ccci_tasks.config import Settings
from ccci_tasks.errors import IntegrityError, SnapshotError, SnapshotRefused, UnsafeArchive
from ccci_tasks.naming import Domain, Recipe, stack_name, warm_domain
from ccci_tasks.platform.base import VolumeInfo
from ccci_tasks.platform.swarm import SwarmPlatform
from ccci_tasks.snapshots.tarcheck import check_members
from ccci_tasks.snapshots.voltar import restore_dirs, snapshot_dirs
from ccci_tasks.state import warmsnap

if TYPE_CHECKING:
    from docker import DockerClient

REPO = Path(__file__).resolve().parent.parent
RECIPE = Recipe("snaptest")
BASE = Domain(os.environ["CCCI_BASE_DOMAIN"])  # set by conftest: cleanup removes only its objects
DOMAIN = warm_domain(RECIPE, BASE)
VERSION = "1.0.0+1.0"
MIB = 1 << 20

# --------------------------------------------------------------------------- helpers


def populate(root: Path, *, files: int = 2000, big_mib: int = 100) -> None:
    """Nested dirs of small files owned by uid 999 mode 0600, links, a big and a sparse file."""
    per_dir = 10
    for n in range(files):
        folder = root / f"d{n // 100:02d}" / f"s{(n // per_dir) % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{n % per_dir}.txt"
        path.write_bytes(f"file {n}\n".encode() * (1 + n % 7))
        os.chown(path, 999, 999)
        os.chmod(path, 0o600)
    for folder in root.glob("d*/s*"):
        os.chown(folder, 999, 999)
        os.chmod(folder, 0o750)
    (root / "link").symlink_to("d00/s0/f0.txt")
    (root / "dangling").symlink_to("no/such/file")
    os.link(root / "d00/s0/f1.txt", root / "hard")
    os.setxattr(root / "d00/s0/f2.txt", "user.ccci", b"kept")
    (root / "empty-dir").mkdir()
    os.mkfifo(root / "fifo")
    if big_mib:
        with open(root / "big.bin", "wb") as handle:
            for _ in range(big_mib):
                handle.write(os.urandom(MIB))
        with open(root / "sparse.img", "wb") as handle:
            handle.write(b"head" * 1024)
            handle.seek(128 * MIB)
            handle.write(b"middle" * 1024)
            handle.truncate(256 * MIB)
    os.chown(root, 999, 999)
    os.chmod(root, 0o750)


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def listing(root: Path) -> list[tuple[str, str, int, int, int, int, str]]:
    """(path, type, size, mode, uid, gid, sha256 or link target) of everything under root."""
    rows = []
    for folder, dirs, names in os.walk(root):
        for name in [".", *dirs, *names] if Path(folder) == root else [*dirs, *names]:
            path = Path(folder) / name if name != "." else root
            st = path.lstat()
            rel = str(path.relative_to(root)) if path != root else "."
            if stat.S_ISREG(st.st_mode):
                kind, size, content = "f", st.st_size, _sha(path)
            elif stat.S_ISLNK(st.st_mode):
                kind, size, content = "l", 0, os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, size, content = "d", 0, ""
            elif stat.S_ISFIFO(st.st_mode):
                kind, size, content = "p", 0, ""
            else:
                kind, size, content = "?", 0, ""
            rows.append((rel, kind, size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content))
    return sorted(rows)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (symlinks by target), by relative path."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = _sha(path)
    return found


def make_volume(client: DockerClient, domain: Domain = DOMAIN, name: str = "data") -> Path:
    """A local Docker volume of ``domain``'s stack, labelled as the platform expects."""
    stack = stack_name(domain)
    volume = client.volumes.create(
        name=f"{stack}_{name}",
        driver="local",
        labels={c.STACK_NAMESPACE_LABEL: stack, c.LABEL_KIND: "warm",
                c.LABEL_RECIPE: RECIPE, c.LABEL_DOMAIN: domain},
    )
    return Path(volume.attrs["Mountpoint"])


def install_snapshot(root: Path, tars: dict[str, bytes], recipe: str = RECIPE) -> None:
    """Write a snapshot by hand (tars + a manifest that matches them) as the current one."""
    folder = root / "snapshot.manual"
    folder.mkdir(parents=True)
    volumes = []
    for name, data in tars.items():
        (folder / f"{name}.tar").write_bytes(data)
        volumes.append({"name": name, "file": f"{name}.tar", "size_bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps(
        {"recipe": recipe, "version": VERSION, "taken_at": "2026-01-01T00:00:00Z",
         "volumes": volumes}))
    (root / "snapshot").symlink_to(folder.name)


def tar_bytes(build: Callable[[tarfile.TarFile], object]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        build(archive)
    return buffer.getvalue()


def add_file(archive: tarfile.TarFile, name: str, data: bytes = b"x") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
    return info


def add_link(archive: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE
             ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    archive.addfile(info)
    return info


def snapshot_files(recipe_root: Path) -> dict[str, str]:
    """sha256 of every file of the current snapshot (tars and manifest)."""
    current = warmsnap.current_dir(recipe_root)
    assert current is not None
    return {p.name: _sha(p) for p in sorted(current.iterdir())}


@pytest.fixture
def platform(settings: Settings, clean_swarm: DockerClient) -> SwarmPlatform:
    from ccci_tasks.platform.swarm import SwarmPlatform

    return SwarmPlatform(settings)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip(reason="mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mount)],
                   check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


# --------------------------------------------------------------------------- core, no Docker


def _bad_tars() -> dict[str, bytes]:
    return {
        "dotdot": tar_bytes(lambda t: add_file(t, "../escape")),
        "absolute": tar_bytes(lambda t: add_file(t, "/abs-escape")),
        "symlink-absolute": tar_bytes(lambda t: add_link(t, "evil", "/etc")),
        "symlink-up": tar_bytes(lambda t: add_link(t, "a/evil", "../../outside")),
        "through-symlink": tar_bytes(lambda t: (add_link(t, "l", "d"), add_file(t, "l/x"))),
        "symlink-chain": tar_bytes(lambda t: (add_link(t, "a/b/q", "../.."),
                                              add_link(t, "a/b/p", "q/.."))),
        "hardlink-out": tar_bytes(lambda t: add_link(t, "h", "../x", tarfile.LNKTYPE)),
        "device": tar_bytes(lambda t: add_link(t, "dev", "", tarfile.CHRTYPE)),
    }


@pytest.mark.parametrize("case", sorted(_bad_tars()))
def test_check_members_refuses(case: str) -> None:
    """Escaping names, escaping links, members below a symlink and devices are refused."""
    with tarfile.open(fileobj=io.BytesIO(_bad_tars()[case])) as archive, pytest.raises(
        UnsafeArchive
    ):
        check_members(archive, "test")


def test_check_members_accepts_inner_links() -> None:
    """Relative links that stay inside the volume are fine."""
    data = tar_bytes(lambda t: (add_file(t, "./a/b/f"), add_link(t, "a/up", "../a/b/f"),
                                add_link(t, "a/b/h", "a/b/f", tarfile.LNKTYPE),
                                add_link(t, "loop1", "loop2"), add_link(t, "loop2", "loop1")))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert check_members(archive, "test") == 5


def test_dir_round_trip_without_docker(tmp_path: Path) -> None:
    """snapshot_dirs/restore_dirs restore a plain directory exactly (small data set)."""
    source = tmp_path / "vol"
    source.mkdir()
    populate(source, files=200, big_mib=0)
    before = listing(source)
    out = tmp_path / "snap"
    out.mkdir()
    entries = snapshot_dirs([VolumeInfo("vol", str(source))], out)
    assert [e.name for e in entries] == ["vol"] and entries[0].file == "vol.tar"
    (source / "d00" / "s0" / "f3.txt").unlink()
    (source / "new").write_text("junk")
    restore_dirs([VolumeInfo("vol", str(source))], out, entries)
    assert listing(source) == before


# --------------------------------------------------------------------------- real volumes


@pytest.mark.docker
@pytest.mark.slow
def test_round_trip_on_a_docker_volume(platform: SwarmPlatform, clean_swarm: DockerClient,
                                       state_dir: Path) -> None:
    """2,000 files, links, a 100 MiB and a sparse file, uid 999/0600: restored exactly."""
    mount = make_volume(clean_swarm)
    populate(mount)
    before = listing(mount)
    assert len([r for r in before if r[1] == "f"]) >= 2002
    assert [v.name for v in platform.volumes(DOMAIN)] == [f"{stack_name(DOMAIN)}_data"]

    started = time.monotonic()
    manifest = snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, VERSION)
    took_snapshot = time.monotonic() - started
    entry = manifest.volumes[0]
    assert (entry.name, entry.file) == ("data", "data.tar")
    tar_path = state_dir / RECIPE / "snapshot" / "data.tar"
    assert _sha(tar_path) == entry.sha256 and tar_path.stat().st_size == entry.size_bytes
    assert (state_dir / RECIPE / "snapshot").is_symlink()
    assert warmsnap.verify(state_dir, RECIPE) == manifest

    for path in list((mount / "d03").rglob("*.txt"))[:50]:
        path.unlink()
    (mount / "big.bin").write_bytes(b"overwritten")
    (mount / "intruder").write_text("not in the snapshot")
    os.chmod(mount / "d00/s0/f0.txt", 0o644)

    started = time.monotonic()
    snapshots.restore(platform, state_dir, RECIPE, DOMAIN)
    took_restore = time.monotonic() - started
    assert listing(mount) == before
    assert os.stat(mount / "hard").st_ino == os.stat(mount / "d00/s0/f1.txt").st_ino
    assert os.getxattr(mount / "d00/s0/f2.txt", "user.ccci") == b"kept"
    assert os.stat(mount / "sparse.img").st_blocks * 512 < 8 * MIB  # still sparse
    print(f"\n100 MiB volume: snapshot {took_snapshot:.2f} s ({entry.size_bytes / MIB:.0f} MiB "
          f"tar), restore {took_restore:.2f} s")


@pytest.mark.docker
@pytest.mark.slow
def test_new_snapshot_replaces_old_atomically(platform: SwarmPlatform, clean_swarm: DockerClient,
                                              state_dir: Path) -> None:
    """A second snapshot becomes current and the superseded folder is removed."""
    mount = make_volume(clean_swarm)
    populate(mount, files=50, big_mib=0)
    first = snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, VERSION)
    (mount / "more").write_text("second")
    second = snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, "1.1.0+1.1")
    assert second.volumes[0].sha256 != first.volumes[0].sha256
    root = state_dir / RECIPE
    assert warmsnap.read_current(state_dir, RECIPE) == second
    assert sorted(p.name for p in root.glob("snapshot.*")) == [
        os.readlink(root / "snapshot")]


def wait_serving(platform: SwarmPlatform, domain: Domain, timeout_s: float = 120) -> None:
    """Wait until the app answers /version.txt (its boot has written to the volume)."""
    import httpx

    url = platform.base_url(domain) + "/version.txt"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers={"Host": domain}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{domain} did not serve {url} within {timeout_s} s")


@pytest.mark.docker
@pytest.mark.slow
def test_refused_while_deployed(platform: SwarmPlatform, settings: Settings,
                                state_dir: Path) -> None:
    """With the example recipe deployed, snapshot and restore refuse and change nothing."""
    recipe, version = Recipe("custom-html"), "1.0.0+1.0"
    domain = warm_domain(recipe, settings.base_domain)
    platform.new_app(recipe, domain, version, kind="warm", run=None)
    try:
        platform.deploy(domain, version)
        platform.wait_converged(domain, 120)
        wait_serving(platform, domain)
        platform.undeploy(domain)
        manifest = snapshots.snapshot(platform, state_dir, recipe, domain, version)
        assert [v.name for v in manifest.volumes] == ["data"]
        mount = Path(platform.volumes(domain)[0].mountpoint)
        at_snapshot = listing(mount)
        root = state_dir / recipe
        before = tree_hashes(root)

        platform.deploy(domain, version)
        platform.wait_converged(domain, 120)
        wait_serving(platform, domain)
        with pytest.raises(SnapshotRefused, match="deployed"):
            snapshots.snapshot(platform, state_dir, recipe, domain, version)
        with pytest.raises(SnapshotRefused, match="deployed"):
            snapshots.restore(platform, state_dir, recipe, domain)
        assert tree_hashes(root) == before

        platform.undeploy(domain)
        assert listing(mount) != at_snapshot  # the second boot wrote to the volume
        snapshots.restore(platform, state_dir, recipe, domain)
        assert listing(mount) == at_snapshot
    finally:
        platform.remove(domain)


_SNAPSHOT_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ccci_tasks.config import get_settings
    from ccci_tasks.platform.swarm import SwarmPlatform
    from ccci_tasks import snapshots
    state, recipe, domain, version = sys.argv[1:]
    snapshots.snapshot(SwarmPlatform(get_settings()), Path(state), recipe, domain, version)
""")


@pytest.mark.docker
@pytest.mark.slow
def test_killed_snapshot_leaves_previous_intact(platform: SwarmPlatform, clean_swarm: DockerClient,
                                                state_dir: Path) -> None:
    """SIGKILL midway through a snapshot: the previous one is byte-identical; leftovers go."""
    mount = make_volume(clean_swarm)
    populate(mount, files=100, big_mib=0)
    snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, VERSION)
    root = state_dir / RECIPE
    before = snapshot_files(root)
    with open(mount / "big.bin", "wb") as handle:
        for _ in range(300):
            handle.write(os.urandom(MIB))

    proc = subprocess.Popen(
        [sys.executable, "-c", _SNAPSHOT_SCRIPT, str(state_dir), RECIPE, DOMAIN, "1.1.0+1.1"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in root.glob("snapshot.*.partial/data.tar")
                       if p.stat().st_size > 16 * MIB]
            if partial:
                break
            time.sleep(0.005)
        assert partial, f"the snapshot never got midway (exit {proc.poll()})"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot_files(root) == before
    assert warmsnap.verify(state_dir, RECIPE).version == VERSION
    assert list(root.glob("snapshot.*.partial"))  # the leftover is there ...

    snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, "1.1.0+1.1")
    assert not list(root.glob("snapshot.*.partial"))  # ... until the next snapshot
    assert len(list(root.glob("snapshot.*"))) == 1


@pytest.mark.docker
@pytest.mark.slow
def test_out_of_space_leaves_previous_intact(platform: SwarmPlatform, clean_swarm: DockerClient,
                                             tmpfs: Path) -> None:
    """A snapshot that fills the disk fails cleanly; the previous one is byte-identical."""
    mount = make_volume(clean_swarm)
    populate(mount, files=100, big_mib=0)
    snapshots.snapshot(platform, tmpfs, RECIPE, DOMAIN, VERSION)
    root = tmpfs / RECIPE
    before = snapshot_files(root)
    with open(mount / "big.bin", "wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(MIB))
    with pytest.raises(SnapshotError, match="No space left on device") as info:
        snapshots.snapshot(platform, tmpfs, RECIPE, DOMAIN, "1.1.0+1.1")
    assert "previous snapshot is unchanged" in str(info.value)
    assert snapshot_files(root) == before
    assert not list(root.glob("snapshot.*.partial"))
    assert warmsnap.verify(tmpfs, RECIPE).version == VERSION


@pytest.mark.docker
@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-absolute", "symlink-up",
                                  "symlink-chain"])
def test_restore_refuses_unsafe_tar(platform: SwarmPlatform, clean_swarm: DockerClient,
                                    state_dir: Path, case: str) -> None:
    """A tar with an escaping member is refused by restore; the volume is untouched."""
    mount = make_volume(clean_swarm)
    populate(mount, files=20, big_mib=0)
    before = listing(mount)
    outside = sorted(p.name for p in mount.parent.iterdir())
    install_snapshot(state_dir / RECIPE, {"data": _bad_tars()[case]})
    with pytest.raises(UnsafeArchive, match="volume data"):
        snapshots.restore(platform, state_dir, RECIPE, DOMAIN)
    assert listing(mount) == before
    assert sorted(p.name for p in mount.parent.iterdir()) == outside


@pytest.mark.docker
def test_flipped_byte_fails_verify_and_restore(platform: SwarmPlatform, clean_swarm: DockerClient,
                                               state_dir: Path) -> None:
    """One flipped byte: verify and restore name the volume and both hashes; no change."""
    mount = make_volume(clean_swarm)
    populate(mount, files=100, big_mib=0)
    manifest = snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, VERSION)
    (mount / "after-snapshot.txt").write_text("must survive a refused restore")
    before = listing(mount)
    tar_path = state_dir / RECIPE / "snapshot" / "data.tar"
    data = bytearray(tar_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tar_path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    expected = manifest.volumes[0].sha256
    calls: tuple[Callable[[], object], ...] = (
        lambda: warmsnap.verify(state_dir, RECIPE),
        lambda: snapshots.restore(platform, state_dir, RECIPE, DOMAIN),
    )
    for call in calls:
        with pytest.raises(IntegrityError) as info:
            call()
        message = str(info.value)
        assert "volume data" in message and actual in message and expected in message
    assert listing(mount) == before


@pytest.mark.docker
def test_snapshot_of_app_without_volumes_refused(platform: SwarmPlatform, state_dir: Path) -> None:
    """An app with no volumes never replaces a snapshot with an empty one."""
    with pytest.raises(SnapshotError, match="no volumes"):
        snapshots.snapshot(platform, state_dir, RECIPE, DOMAIN, VERSION)
    assert warmsnap.read_current(state_dir, RECIPE) is None
