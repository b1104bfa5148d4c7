"""The one edge to external commands (docker, git, abra, tar, the overlay tests).

Argument lists only, never a shell; every command has a timeout; its failures become ours:
a non-zero exit is ``CommandFailed`` (argv and stderr, never the environment), a command that
runs out of time is ``WaitTimeout`` (what it waited for, the last lines it wrote), a command
that cannot start is ``PlatformError`` with what to do.

``detached=True`` starts the command in a session of its own: stopping or killing the worker's
process group (SIGSTOP, SIGKILL) then neither freezes nor cuts it off halfway. That is right
for short engine calls (``docker stack deploy`` either happens or not; the janitor deals with
the result), and wrong for work whose half-done state matters and that must die with its
worker (a tar extracting into a volume: its intent record gets it redone).

Inside a step every command carries the run's tag and is recorded while it runs
(``stonith``), so the janitor can kill it with the step's process once the run's lease is
gone: detached means it survives its worker, not the fence.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from ccci_tasks import stonith
from ccci_tasks.errors import CommandFailed, PlatformError, WaitTimeout

log = logging.getLogger(__name__)


def _tail(data: str | bytes | None, lines: int = 3) -> str:
    if data is None:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return " | ".join(text.strip().splitlines()[-lines:])


@overload
def run(argv: Sequence[str], *, timeout_s: float, text: Literal[True], hint: str = ...,
        env: Mapping[str, str] | None = ..., cwd: Path | None = ..., check: bool = ...,
        detached: bool = ...) -> subprocess.CompletedProcess[str]: ...


@overload
def run(argv: Sequence[str], *, timeout_s: float, text: Literal[False] = ..., hint: str = ...,
        env: Mapping[str, str] | None = ..., cwd: Path | None = ..., check: bool = ...,
        detached: bool = ...) -> subprocess.CompletedProcess[bytes]: ...


def run(
    argv: Sequence[str],
    *,
    timeout_s: float,
    text: bool = False,
    hint: str = "",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    detached: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` with stdin closed and its output captured; see the module docstring.

    ``check=False`` returns a failed process instead of raising (the caller reads its exit).
    """
    args = [str(a) for a in argv]
    log.debug("running %s", shlex.join(args))
    try:
        proc = subprocess.Popen(
            args, env=stonith.tagged_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
            errors="replace" if text else None, start_new_session=detached,
        )
    except OSError as exc:
        raise PlatformError(f"cannot run {args[0]} ({exc})" + (f"; {hint}" if hint else "")
                            ) from exc
    record = stonith.command_started(proc.pid, " ".join(args[:3]))
    try:
        with proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
                raise WaitTimeout(f"`{shlex.join(args)}` to finish", timeout_s,
                                  _tail(stderr) or "no output on stderr") from None
    finally:
        stonith.command_ended(record)
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise CommandFailed(args, done.returncode, _tail(done.stderr, 5))
    return done
