"""STONITH (R13.1, DESIGN §7): a run whose lease is gone has no process left acting for it.

The engine takes no fencing token, and a step can stop between its last fence check and its
call for any length of time. So before the resources of a dead run change hands, every
process that acted for it on this host is killed, and found gone:

* the step's own process (a Celery pool process): while a step runs it is recorded in
  ``<state>/holders/<run_id>/<pid>-<start>.json`` = ``{run_id, token, node, pid, start,
  kind, what, at}`` (``start``: field 22 of ``/proc/<pid>/stat``, so a recycled pid is never
  taken for it), written *before* the step's first lease check, so a janitor that sees the
  lease gone also sees the record; the lease in the broker names the holder too (node, pid,
  start), for the other hosts;
* the commands it started (docker, git, abra, tar, overlay tests): each is recorded the same
  way while it runs, and carries ``CCCI_FENCED_RUN=<system>:<run_id>:<token>`` in its
  environment (``<system>``: a digest of the state root, so two systems on one host never
  take each other's commands for their own), so even one started a moment before its parent
  died (or whose record was never written) is found by a scan of ``/proc``. Docker calls run
  in a session of their own (``proc``), so killing the step's process alone would leave them
  running.

``kill_stale`` (the janitor, every round, before it reaps or repairs anything) SIGKILLs every
such process of a run that no longer holds a live lease with that token (SIGKILL ends a
stopped process too), waits until each is gone (or a zombie) and only then lets the caller
free the run's resources; a process that does not die within ``KILL_WAIT_S`` keeps the run's
resources held and is named. The records live in the host's own state root and name their
node: a host only ever kills its own processes; another host's dead run waits for that
host's janitor (see ``janitor``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import ccci_tasks.atomic as atomic
from ccci_tasks.state.clock import iso, utc_now

log = logging.getLogger(__name__)

ENV_TAG: Final = "CCCI_FENCED_RUN"
HOLDERS_DIR: Final = "holders"
KILLED_DIR: Final = ".killed"
KILL_WAIT_S: Final = 30.0
KILLED_KEEP_S: Final = 24 * 3600


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of ``pid``, or None when there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2:].split()  # the command name may hold spaces and ')'
    try:
        return rest[0].decode(), int(rest[19])  # fields 3 and 22
    except (IndexError, ValueError):
        return None


def proc_start(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started (clock ticks since boot)."""
    found = _stat(pid)
    return found[1] if found else None


def _alive(pid: int, start: int) -> bool:
    """True while ``pid`` is the process that started at ``start`` and is not a zombie."""
    found = _stat(pid)
    return found is not None and found[1] == start and found[0] not in ("Z", "X")


# --------------------------------------------------------------------------- the holder side


@dataclass(frozen=True)
class Holder:
    run_id: str
    token: int
    node: str
    pid: int
    start: int
    kind: str  # step | cmd
    what: str  # the step name, or the command
    at: str = field(default_factory=lambda: iso(utc_now()))


@dataclass(frozen=True)
class _Current:
    root: Path
    run_id: str
    token: int
    node: str

    @property
    def tag(self) -> str:
        return f"{system_id(self.root.parent)}:{self.run_id}:{self.token}"


def system_id(state_dir: Path) -> str:
    """Which system a tagged command belongs to: a digest of its state root."""
    import hashlib

    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]


_current: _Current | None = None


def holders_root(state_dir: Path) -> Path:
    return Path(state_dir) / HOLDERS_DIR


def _record_path(root: Path, run_id: str, pid: int, start: int) -> Path:
    return root / run_id / f"{pid}-{start}.json"


def _write(root: Path, holder: Holder) -> Path:
    path = _record_path(root, holder.run_id, holder.pid, holder.start)
    atomic.write_json(path, asdict(holder), mode=0o600)
    return path


def _drop(path: Path) -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the run's folder, once empty


@contextlib.contextmanager
def holding(state_dir: Path, node: str, run_id: str, token: int, step: str) -> Iterator[str]:
    """This process acts for the run while the block runs: recorded before (the caller checks
    the lease after entering), dropped after. Yields the holder's name ``node pid start``."""
    global _current
    pid = os.getpid()
    start = proc_start(pid) or 0
    root = holders_root(state_dir)
    path = _write(root, Holder(run_id, token, node, pid, start, "step", step))
    before, _current = _current, _Current(root, run_id, token, node)
    try:
        yield f"{node} {pid} {start}"
    finally:
        _current = before
        _drop(path)  # gone already after ``release``


def release(run_id: str) -> None:
    """This process stops acting for ``run_id`` (its step is ending the run or parking it):
    its record goes now, before the lease does, so the janitor never kills a process that
    is only telling the hooks or admitting the next runs."""
    global _current
    current = _current
    if current is None or current.run_id != run_id:
        return
    _current = None
    for path in (current.root / run_id).glob(f"{os.getpid()}-*.json"):
        _drop(path)


def tagged_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """The environment for a command started now: inside a step, tagged with the run."""
    current = _current
    if current is None:
        return dict(env) if env is not None else None
    out = dict(os.environ if env is None else env)
    out[ENV_TAG] = current.tag
    return out


def command_started(pid: int, what: str) -> Path | None:
    """Record a command a step started (None outside a step); ``command_ended`` drops it."""
    current = _current
    if current is None:
        return None
    start = proc_start(pid)
    if start is None:  # already gone
        return None
    try:
        return _write(current.root, Holder(current.run_id, current.token, current.node, pid,
                                           start, "cmd", what[:200]))
    except OSError as exc:  # the tag still finds it
        log.warning("cannot record command %s (pid %d): %s", what, pid, exc)
        return None


def command_ended(record: Path | None) -> None:
    if record is not None:
        record.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the janitor side


@dataclass(frozen=True)
class Victim:
    run_id: str
    token: int
    pid: int
    start: int
    what: str
    records: tuple[Path, ...] = ()


@dataclass
class Killed:
    """What ``kill_stale`` did: the processes killed and found gone, the runs whose
    processes are not gone yet (their resources must stay held), the problems."""

    killed: list[dict[str, object]] = field(default_factory=list)
    stuck_runs: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _records(root: Path, node: str) -> Iterator[tuple[Path, Holder]]:
    if not root.is_dir():
        return
    for path in root.glob("*/*.json"):
        if path.parent.name.startswith("."):
            continue
        try:
            holder = Holder(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable holder record %s dropped: %s", path, exc)
            path.unlink(missing_ok=True)
            continue
        if holder.node != node:
            log.warning("holder record %s names node %s, not this node %s: left alone", path,
                        holder.node, node)
            continue
        yield path, holder


def _tagged(state_dir: Path) -> Iterator[tuple[int, str, int]]:
    """(pid, run_id, token) of every process on this host that carries this system's tag."""
    needle = f"{ENV_TAG}={system_id(state_dir)}:".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if needle not in environ:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                run_id, _, token = var[len(needle):].decode(errors="replace").rpartition(":")
                if token.isdigit():
                    yield int(entry.name), run_id, int(token)


def stale_processes(state_dir: Path, node: str, live: Callable[[], Set[tuple[str, int]]]
                    ) -> list[Victim]:
    """Every process of this node acting for a run that holds no live lease with its token.

    The processes are found first, the live leases read after (``live``): a record or a tag
    exists only once its run was admitted with that token, and a lost lease never comes
    back, so a process seen before the read whose lease is not live then is stale; one that
    started acting for a run admitted meanwhile is never taken for stale. Records of
    processes already gone are dropped."""
    root = holders_root(state_dir)
    found: dict[tuple[int, int], Victim] = {}
    for path, holder in _records(root, node):
        if not _alive(holder.pid, holder.start):
            _drop(path)
            continue
        key = (holder.pid, holder.start)
        records = (found[key].records if key in found else ()) + (path,)
        found[key] = Victim(holder.run_id, holder.token, holder.pid, holder.start,
                            f"{holder.kind} {holder.what}", records)
    for pid, run_id, token in _tagged(state_dir):
        start = proc_start(pid)
        if pid == os.getpid() or start is None or (pid, start) in found:
            continue
        found[(pid, start)] = Victim(run_id, token, pid, start, "command (tagged)")
    if not found:
        return []
    owners = live()
    return [v for v in found.values() if (v.run_id, v.token) not in owners]


def kill_stale(
    state_dir: Path, node: str, live: Callable[[], Set[tuple[str, int]]],
    timeout_s: float = KILL_WAIT_S,
) -> Killed:
    """SIGKILL every stale process (``stale_processes``) and wait until each is gone; see
    the module docstring."""
    out = Killed()
    victims = stale_processes(state_dir, node, live)
    if not victims:
        return out
    killed_at = {}
    for victim in victims:
        if _alive(victim.pid, victim.start):  # checked again right before the signal
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGKILL)
        killed_at[victim.pid] = iso(utc_now())
        log.warning("run %s: SIGKILLed pid %d (%s) acting without a lease", victim.run_id,
                    victim.pid, victim.what)
    deadline = time.monotonic() + timeout_s
    waiting = list(victims)
    while waiting:
        for victim in [v for v in waiting if not _alive(v.pid, v.start)]:
            waiting.remove(victim)
            entry: dict[str, object] = {
                "run_id": victim.run_id, "token": victim.token, "pid": victim.pid,
                "start": victim.start, "what": victim.what,
                "killed_at": killed_at[victim.pid], "gone_at": iso(utc_now())}
            out.killed.append(entry)
            _note_killed(state_dir, entry)
            for path in victim.records:
                _drop(path)
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for victim in waiting:
        state = (_stat(victim.pid) or ("gone", 0))[0]
        out.stuck_runs.add(victim.run_id)
        out.problems.append(
            f"pid {victim.pid} ({victim.what} of run {victim.run_id}) is not gone "
            f"{timeout_s:g} s after SIGKILL (last state {state}: D means stuck in the "
            "kernel, e.g. on a hung disk); the run's resources stay held, next round")
    return out


def _note_killed(state_dir: Path, entry: Mapping[str, object]) -> None:
    """``<state>/holders/.killed/<pid>-<start>.json``: when a stale process was killed and
    found gone (operators and tests read it); older notes are pruned."""
    folder = holders_root(state_dir) / KILLED_DIR
    try:
        atomic.write_json(folder / f"{entry['pid']}-{entry['start']}.json", dict(entry))
        horizon = time.time() - KILLED_KEEP_S
        for old in folder.glob("*.json"):
            if old.stat().st_mtime < horizon:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot note a killed process: %s", exc)


def killed_notes(state_dir: Path) -> list[dict[str, object]]:
    """The kill notes, oldest first."""
    folder = holders_root(state_dir) / KILLED_DIR
    notes = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            notes.append(json.loads(path.read_text(encoding="utf-8")))
    return sorted(notes, key=lambda n: str(n.get("gone_at")))
