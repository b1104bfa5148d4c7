"""Small process helpers of the rig: bounded waits, pid files, stopping a process we started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ccci_rig.errors import RigError, RigTimeout

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; RigTimeout naming what and the last."""
    deadline = time.monotonic() + timeout_s
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise RigTimeout(f"timed out after {timeout_s:g} s waiting for {what}; "
                             f"last seen: {last!r}")
        time.sleep(poll_s)
        last = check()
    return last


def run(argv: list[str], timeout_s: float, what: str,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an argument list with a timeout; a RigError naming ``what`` when it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise RigTimeout(f"{what}: `{' '.join(argv)}` did not end within {timeout_s:g} s") \
            from exc
    if check and proc.returncode != 0:
        raise RigError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}: "
                       f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` when that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def terminate(pid: int, grace_s: float) -> None:
    """SIGTERM ``pid``, SIGKILL it after ``grace_s``; returns once it is gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)
    raise RigTimeout(f"process {pid} ({' '.join(cmdline(pid))[:200]}) is still alive after "
                     "SIGKILL")
