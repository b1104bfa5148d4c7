"""Network namespaces: create, enter, list what runs in one, delete.

A node of the rig lives in a network namespace of its own (``ip netns add``), so its engine's
swarm ports, its interfaces and its services on ``127.0.0.1`` are its own, as on a real second
server. The namespace is known by the inode of ``/run/netns/<name>``; a process belongs to it
when ``/proc/<pid>/ns/net`` is that inode. Nothing here ever acts on the host's namespace:
``identity`` refuses a namespace that is the host's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ccci_rig.errors import RigError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IP_TIMEOUT_S = 20


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                          check=False)
    if proc.returncode != 0:
        raise RigError(f"`ip {' '.join(args)}` failed ({proc.returncode}): "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")


def ensure(name: str) -> None:
    """The namespace ``name`` with its loopback up (created when missing)."""
    if not exists(name):
        _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    identity(name)


def names() -> list[str]:
    """The named namespaces (``ip netns list``)."""
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def delete(name: str) -> None:
    if exists(name):
        _ip("netns", "delete", name)


def _own() -> tuple[int, int]:
    st = os.stat("/proc/self/ns/net")
    return st.st_dev, st.st_ino


_HOST = _own()  # the namespace this process started in: the host's


def host_identity() -> tuple[int, int]:
    return _HOST


def identity(name: str) -> tuple[int, int]:
    """(device, inode) of the namespace; a RigError if it is the host's own."""
    st = os.stat(path(name))
    ident = (st.st_dev, st.st_ino)
    if ident == host_identity():
        raise RigError(f"network namespace {name} is the host's own namespace; refusing to "
                       f"use it (remove {path(name)} by hand if it was bound by mistake)")
    return ident


def of_pid(pid: int) -> tuple[int, int] | None:
    """The namespace identity of a process (None when it is gone)."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids(name: str) -> list[int]:
    """Every process in the namespace (like ``ip netns pids``)."""
    if not exists(name):
        return []
    ident = identity(name)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and of_pid(int(entry.name)) == ident:
            found.append(int(entry.name))
    return sorted(found)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns(CLONE_NEWNET) failed: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with this thread in the namespace ``name``, then back where it was.

    Sockets created inside stay in the namespace for good (a listener bound here listens
    there); sockets created after the block are the caller's namespace's again.
    """
    identity(name)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(path(name), os.O_RDONLY)
    try:
        _setns(there)
        try:
            yield
        finally:
            _setns(here)
    finally:
        os.close(there)
        os.close(here)
