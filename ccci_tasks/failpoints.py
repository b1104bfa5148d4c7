"""Failpoints (R13.2): named places where a test makes a worker pause, die or dawdle.

``CCCI_FAILPOINTS="<point>[@<step>]=<action>[;...]"`` is read once, when a worker starts
(``load``): a malformed value refuses the start naming the bad part, and so does any value
under ``CCCI_ENV=production``. Points (``POINTS``):

* ``before-engine-change`` - in a step, after its last fence check, right before a change to
  the engine, a volume, a snapshot, a registry or an intent record (``Fence.check`` fires
  it once the check passed: every such change is preceded by one);
* ``mid-restore`` - a restore has written half of the files of a volume;
* ``before-snapshot-swap`` - a new snapshot is complete and verified, not yet current;
* ``before-verdict`` - a run's last step is about to write the verdict.

``@<step>`` limits a point to one step name. Actions: ``pause`` (SIGSTOP self), ``kill``
(SIGKILL self), ``sleep:<seconds>``. A point fires only inside a run's step (the runner
names it with ``in_step``), once per worker: the pool processes of one worker claim it with
an exclusive file, so the pool process that replaces a killed one does not fire it again.
Before acting it writes ``<state>/failpoints/<pid>.json`` = ``{point, step, run_id, pid,
at}`` atomically, so a test knows which process to wait for, continue or check.

Unset, ``fire`` is one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ccci_tasks.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR: Final = "CCCI_FAILPOINTS"
POINTS: Final = ("before-engine-change", "mid-restore", "before-snapshot-swap",
                 "before-verdict")
DIR: Final = "failpoints"
_STEP_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
_SLEEP_MAX_S: Final = 3600.0


@dataclass(frozen=True)
class Action:
    kind: str  # pause | kill | sleep
    sleep_s: float = 0.0


@dataclass(frozen=True)
class Armed:
    """The failpoints of this worker: (point, step or None) -> action."""

    points: Mapping[tuple[str, str | None], Action]
    owner: str  # the worker that claims each point once: "<pid>-<start time>"


_armed: Armed | None = None
_step: tuple[str, str] | None = None  # (run_id, step) while a step runs in this process


def parse(value: str) -> dict[tuple[str, str | None], Action]:
    """``<point>[@<step>]=<action>[;...]``; ``ConfigError`` names the bad part."""
    out: dict[tuple[str, str | None], Action] = {}
    for raw in value.split(";"):
        part = raw.strip()
        if not part:
            continue
        where, eq, what = part.partition("=")
        point, at, step = where.strip().partition("@")
        if not eq:
            raise ConfigError(f"{ENV_VAR}: {part!r} has no '=<action>'; expected "
                              "<point>[@<step>]=pause|kill|sleep:<seconds>")
        if point not in POINTS:
            raise ConfigError(f"{ENV_VAR}: unknown point {point!r} in {part!r}; expected one "
                              f"of {', '.join(POINTS)}")
        if at and not _STEP_RE.fullmatch(step):
            raise ConfigError(f"{ENV_VAR}: step {step!r} in {part!r} is not a step name")
        out[(point, step if at else None)] = _action(what.strip(), part)
    return out


def _action(what: str, part: str) -> Action:
    if what in ("pause", "kill"):
        return Action(what)
    kind, _, seconds = what.partition(":")
    if kind == "sleep":
        try:
            sleep_s = float(seconds)
        except ValueError:
            sleep_s = -1.0
        if 0 <= sleep_s <= _SLEEP_MAX_S:
            return Action("sleep", sleep_s)
    raise ConfigError(f"{ENV_VAR}: action {what!r} in {part!r} is invalid; expected pause, "
                      f"kill or sleep:<seconds> (0-{_SLEEP_MAX_S:g})")


def load(environ: Mapping[str, str] | None = None) -> Armed | None:
    """Read ``CCCI_FAILPOINTS`` at a worker's start and arm this process (and the pool
    processes it forks). ``ConfigError`` on a bad value or in production."""
    global _armed
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "")
    if not value.strip():
        _armed = None
        return None
    if env.get("CCCI_ENV", "").strip().lower() == "production":
        raise ConfigError(f"{ENV_VAR} is set while CCCI_ENV=production: failpoints pause and "
                          "kill workers on purpose and are for tests only; unset "
                          f"{ENV_VAR}")
    from ccci_tasks.stonith import proc_start

    pid = os.getpid()
    _armed = Armed(parse(value), f"{pid}-{proc_start(pid)}")
    log.warning("failpoints armed (tests only): %s", value)
    return _armed


def refuse_or_load() -> None:
    """At a worker's start: arm the failpoints, or exit 2 naming the problem."""
    try:
        load()
    except ConfigError as exc:
        import sys

        print(f"refusing to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextmanager
def in_step(run_id: str, step: str) -> Iterator[None]:
    """Name the step this process runs (the points fire only inside one)."""
    global _step
    before, _step = _step, (run_id, step)
    try:
        yield
    finally:
        _step = before


def _armed_for(point: str) -> tuple[Armed, tuple[str, str | None], Action, str, str] | None:
    armed, current = _armed, _step
    if armed is None or current is None:
        return None
    run_id, step = current
    key = (point, step) if (point, step) in armed.points else (point, None)
    action = armed.points.get(key)
    if action is None or _claim_path(armed, key).exists():
        return None
    return armed, key, action, run_id, step


def armed(point: str) -> bool:
    """True when ``point`` would fire here now (for code that must shape its work so the
    point lands where it says, e.g. a restore split in halves)."""
    return _armed_for(point) is not None


def fire(point: str) -> None:
    """Act on ``point`` if it is armed for the current step and not yet claimed."""
    found = _armed_for(point)
    if found is None:
        return
    armed_, key, action, run_id, step = found
    if not _claim(armed_, key):
        return
    _record(point, step, run_id)
    log.warning("failpoint %s in step %s of run %s: %s", point, step, run_id, action.kind)
    if action.kind == "pause":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        time.sleep(action.sleep_s)


def _state_dir() -> Path:
    from ccci_tasks.config import get_settings

    return get_settings().state_dir / DIR


def _claim_path(armed: Armed, key: tuple[str, str | None]) -> Path:
    name = f"{armed.owner}.{key[0]}" + (f"@{key[1]}" if key[1] else "")
    return _state_dir() / ".claimed" / name


def _claim(armed: Armed, key: tuple[str, str | None]) -> bool:
    path = _claim_path(armed, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _record(point: str, step: str, run_id: str) -> None:
    from ccci_tasks import atomic
    from ccci_tasks.state.clock import iso, utc_now

    pid = os.getpid()
    atomic.write_json(_state_dir() / f"{pid}.json", {
        "point": point, "step": step, "run_id": run_id, "pid": pid, "at": iso(utc_now())})
