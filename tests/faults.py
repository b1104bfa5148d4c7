"""Helpers for the fault tests: a private system, watchers, fingerprints, volume vs snapshot.

``private_system`` pauses the session workers and starts a set of worker processes (and beat,
for the janitor) with their own settings (short leases, a fast janitor), on a clean Redis,
engine and state root; the test process's own settings follow the same overrides.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from conftest import (
    TEST_ENV,
    Workers,
    flush_redis,
    remove_ccci_objects,
    start_workers,
)
from conftest import ours as ours  # re-exported: the fault tests import it from here

if TYPE_CHECKING:
    from docker import DockerClient

T = TypeVar("T")
MIB = 1 << 20
Row = tuple[str, str, int, int, int, int, str]


def wipe(root: Path) -> None:
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def private_system(
    session_workers: Workers, swarm: DockerClient, redis_url: str, name: str,
    roles: tuple[str, ...] = ("runs", "infra", "alerts", "beat"), **env: str,
) -> Iterator[Workers]:
    """Worker processes of our own (see the module docstring); everything is put back after."""
    from ccci_tasks.config import get_settings

    session_workers.stop()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    flush_redis(redis_url)
    remove_ccci_objects(swarm)
    wipe(Path(TEST_ENV["CCCI_STATE_DIR"]))
    own = start_workers(name, roles, **env)
    try:
        yield own
    finally:
        own.stop()
        remove_ccci_objects(swarm)
        flush_redis(redis_url)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        session_workers.restart_all()


def wait_until(check: Callable[[], T | Literal[False] | None], timeout_s: float, what: str,
               poll_s: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming what and the last value."""
    deadline = time.monotonic() + timeout_s
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; "
                                 f"last seen: {last!r}")
        time.sleep(poll_s)
        last = check()
    return last


def labels(obj: Any) -> dict[str, str]:
    attrs = obj.attrs
    found: dict[str, str] = (attrs.get("Spec", {}).get("Labels") or attrs.get("Labels") or {})
    return found


def live_stacks(swarm: DockerClient) -> set[str]:
    """Stacks of this test system that take a run slot (cold apps and canonicals)."""
    return {labels(s).get("com.docker.stack.namespace", "?")
            for s in swarm.services.list(filters={"label": "ccci.kind"})
            if ours(s) and labels(s).get("ccci.kind") in ("cold", "warm")}


class Watcher:
    """Samples the live stacks every 100 ms in a thread; ``most`` is the peak seen."""

    def __init__(self, swarm: DockerClient) -> None:
        self.swarm = swarm
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a restarting engine: sample again
                self.most = max(self.most, len(live_stacks(self.swarm)))
                self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def fingerprint(state: Path, recipe: str) -> dict[str, str]:
    """sha256 of the registry and of every file of the current snapshot."""
    files = [state / recipe / "canonical.json"]
    snap = (state / recipe / "snapshot").resolve()
    files += sorted(p for p in snap.rglob("*") if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def dir_listing(root: Path) -> list[Row]:
    """(path, type, size, mode, uid, gid, sha256 or link target) of everything below root."""
    rows = []
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = Path(folder) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                kind, size, content = "f", st.st_size, _sha(path)
            elif stat.S_ISLNK(st.st_mode):
                kind, size, content = "l", 0, os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                kind, size, content = "d", 0, ""
            else:
                kind, size, content = "?", 0, ""
            rows.append((rel, kind, size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         content))
    return sorted(rows)


def tar_listing(path: Path) -> list[Row]:
    """The same rows for the members of a snapshot tar (without its root entry)."""
    rows = []
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            rel = member.name.removeprefix("./").rstrip("/")
            if rel in ("", "."):
                continue
            if member.isfile():
                handle = archive.extractfile(member)
                assert handle is not None
                kind, size, content = "f", member.size, hashlib.sha256(handle.read()).hexdigest()
            elif member.issym():
                kind, size, content = "l", 0, member.linkname
            elif member.isdir():
                kind, size, content = "d", 0, ""
            elif member.islnk():  # a hard link: same content as its target
                handle = archive.extractfile(member)
                assert handle is not None
                kind, size, content = "f", member.size, hashlib.sha256(handle.read()).hexdigest()
            else:
                kind, size, content = "?", 0, ""
            rows.append((rel, kind, size, member.mode & 0o7777, member.uid, member.gid,
                         content))
    return sorted(rows)


def warm_volumes(swarm: DockerClient, recipe: str) -> dict[str, Path]:
    """The canonical's volumes by their name relative to the stack, with mountpoints."""
    found = {}
    for volume in swarm.volumes.list(filters={"label": ["ccci.kind=warm",
                                                         f"ccci.recipe={recipe}"]}):
        if ours(volume):
            stack = volume.attrs["Labels"].get("com.docker.stack.namespace", "")
            found[volume.name.removeprefix(stack + "_")] = Path(volume.attrs["Mountpoint"])
    return found


def volumes_match_snapshot(swarm: DockerClient, state: Path, recipe: str) -> list[str]:
    """Differences between the canonical's volumes and its current snapshot (none: [])."""
    import json

    snap = (state / recipe / "snapshot").resolve()
    manifest = json.loads((snap / "manifest.json").read_text())
    volumes = warm_volumes(swarm, recipe)
    problems = []
    for entry in manifest["volumes"]:
        mount = volumes.get(entry["name"])
        if mount is None:
            problems.append(f"volume {entry['name']} is missing")
            continue
        want, have = tar_listing(snap / entry["file"]), dir_listing(mount)
        if want != have:
            extra = sorted(set(have) - set(want))[:5]
            missing = sorted(set(want) - set(have))[:5]
            problems.append(f"volume {entry['name']}: extra {extra}, missing {missing}")
    return problems


def quiet(swarm: DockerClient, state: Path) -> str:
    """'' when nothing of the system is live, nothing occupies a slot and no intent is
    pending; else what is still there."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.config import get_settings

    left = []
    stacks = live_stacks(swarm)
    if stacks:
        left.append(f"live {sorted(stacks)}")
    occupying = Slots.from_settings(get_settings()).occupying()
    if occupying:
        left.append(f"occupying {[(o.run_id[:8], o.state) for o in occupying]}")
    intents = sorted(p.name for p in (state / "intents").glob("*.json")) \
        if (state / "intents").is_dir() else []
    if intents:
        left.append(f"intents {intents}")
    return "; ".join(left)


def wait_quiet(swarm: DockerClient, state: Path, timeout_s: float) -> float:
    """Wait until ``quiet``; returns the seconds it took, fails naming what was left."""
    started = time.monotonic()
    left = quiet(swarm, state)
    while left:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"after {timeout_s:g} s still not quiet: {left}")
        time.sleep(0.3)
        left = quiet(swarm, state)
    return time.monotonic() - started


class PidWatch:
    """Notes when a process vanished (or became a zombie), polling every 20 ms."""

    def __init__(self, pid: int) -> None:
        from ccci_tasks import stonith

        self.pid, self.start = pid, stonith.proc_start(pid)
        self.gone_at: datetime | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from ccci_tasks import stonith
        from ccci_tasks.state.clock import utc_now

        while self.gone_at is None:
            try:
                raw = Path(f"/proc/{self.pid}/stat").read_bytes()
                state = raw[raw.rfind(b")") + 2:].split()[0]
                alive = state not in (b"Z", b"X") and stonith.proc_start(self.pid) == self.start
            except OSError:
                alive = False
            if not alive:
                self.gone_at = utc_now()
            time.sleep(0.02)


class EngineEvents:
    """Docker engine events that name a stack, seen in a thread (a running container's
    health probes are no change and are left out)."""

    def __init__(self, swarm: DockerClient, stack: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._stream = swarm.events(decode=True)
        self._stack = stack
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with contextlib.suppress(Exception):  # the stream closes at the end
            for event in self._stream:
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                action = str(event.get("Action") or event.get("status") or "")
                if action.startswith(("exec_", "health_status")):
                    continue
                if any(self._stack in str(v) for v in attrs.values()):
                    self.seen.append(event)

    def close(self) -> None:
        self._stream.close()
