"""One node of the rig: a Docker engine in swarm mode in a network namespace of its own.

A node is what a second Co-op Cloud server is to ccci-tasks: its own engine (socket, data
root, exec root, pid file, containerd), its own single-node swarm, its own ``127.0.0.1``. Its
host-network services bind ``127.0.0.1`` inside its namespace, so the host and the node may
both serve the same port. Its processes run in the namespace (``Node.argv``) and reach the
shared services through the relay (``ccci_rig.relay``) at the host's ``127.0.0.1:<port>``.

Why a namespace, and never a second engine beside the first: a second dockerd in the host's
namespace shares the swarm gossip port 7946 and interface names such as ``docker_gwbridge``,
and a dockerd started with ``--bridge=none`` deletes the host's ``docker0``. The node's engine
runs with ``--bridge=none`` only inside its namespace (``nsenter --net``; ``ip netns exec``
would remount ``/sys`` and hide the cgroup mounts dockerd needs), and its networks take
addresses of the benchmarking range 198.18.0.0/15, never a private range.

Everything lives under ``run_dir`` (marked with ``.ccci-node``); ``stop`` removes the stacks,
leaves the node's swarm, stops its engine, ends whatever is left in its namespace, unmounts
and deletes what it made (the logs stay). Start and stop are idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccci_rig import netns
from ccci_rig.errors import RigError, RigUnavailable
from ccci_rig.proc import cmdline, read_pid, run, terminate, wait_for

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
LOCAL_POOL = "198.18.0.0/16"  # the engine's local networks (docker_gwbridge)
SWARM_POOL = "198.19.0.0/16"  # the swarm's overlay networks (ingress)
MARKER = ".ccci-node"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
# A unix socket path holds 107 bytes; the deepest one dockerd makes is under
# <exec root>/containerd/ and its shims' under /run/containerd/s/.
RUN_DIR_MAX = 64


def check_capabilities() -> None:
    """RigUnavailable naming what this machine lacks to run a node."""
    if os.geteuid() != 0:
        raise RigUnavailable("a node needs root (a network namespace and a second dockerd); "
                             "run as root")
    missing = [b for b in ("ip", "nsenter", "setsid", "dockerd", "docker", "umount")
               if shutil.which(b) is None]
    if missing:
        raise RigUnavailable(f"a node needs {', '.join(missing)} on PATH: install iproute2, "
                             "util-linux, mount and docker.io (scripts/bootstrap.sh does)")


@dataclass(frozen=True)
class Node:
    """A node named ``name`` (``[a-z0-9-]``, up to 24) with its files under ``run_dir``."""

    name: str
    run_dir: Path

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise RigError(f"node name {self.name!r} must be 1-24 of [a-z0-9-], starting "
                           "with a letter or digit, e.g. n2")
        if not self.run_dir.is_absolute() or len(str(self.run_dir)) > RUN_DIR_MAX:
            raise RigError(f"node run dir {str(self.run_dir)!r} must be an absolute path of at "
                           f"most {RUN_DIR_MAX} characters (the engine's unix sockets live "
                           "under it); choose a shorter one")

    # ------------------------------------------------------------------ paths and names
    @property
    def netns(self) -> str:
        return f"ccci-{self.name}"

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def docker_host(self) -> str:
        """``DOCKER_HOST`` / ``CCCI_DOCKER_HOST`` of the node's engine."""
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def _made(self) -> list[Path]:
        """What start makes under run_dir and stop removes (not the logs)."""
        names = ("data", "exec", "docker.sock", "dockerd.pid", "daemon.json", "relay.pid",
                 "relay.ready", "relay.tmp")
        return [self.run_dir / n for n in names]

    # ------------------------------------------------------------------ using the node
    def docker_argv(self, *args: str) -> list[str]:
        return ["docker", "-H", self.docker_host, *args]

    def docker(self, *args: str, timeout_s: float = 60,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against the node's engine."""
        return run(self.docker_argv(*args), timeout_s, f"docker on node {self.name}", check)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the node's namespace (as its processes run)."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def run(self, cmd: Sequence[str], timeout_s: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.argv(cmd), timeout_s, f"a command in node {self.name}", check)

    # ------------------------------------------------------------------ observing
    def dockerd_pid(self) -> int | None:
        """The node's dockerd when it runs, in the node's namespace and nowhere else."""
        pid = read_pid(self.pidfile)
        if pid is None or not netns.exists(self.netns):
            return None
        if netns.of_pid(pid) != netns.identity(self.netns):
            return None  # a recycled pid, or not ours: never touched
        return pid

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        proc = self.docker("version", "--format", "{{.Server.Version}}", timeout_s=20,
                           check=False)
        return proc.returncode == 0

    def swarm(self) -> dict[str, Any]:
        """The engine's ``.Swarm`` (LocalNodeState, NodeID, ...)."""
        out = self.docker("info", "--format", "{{json .Swarm}}").stdout
        info: dict[str, Any] = json.loads(out)
        return info

    def relay_pid(self) -> int | None:
        pid = read_pid(self.run_dir / "relay.pid")
        if pid is None or "ccci_rig.relay" not in cmdline(pid):
            return None
        return pid

    def relay_ports(self) -> list[int]:
        ready = self.run_dir / "relay.ready"
        if self.relay_pid() is None or not ready.exists():
            return []
        return [int(line) for line in ready.read_text().split()]

    def status(self) -> dict[str, Any]:
        pid = self.dockerd_pid()
        swarm = self.swarm() if pid and self.answers() else {}
        return {
            "name": self.name, "netns": self.netns, "run_dir": str(self.run_dir),
            "docker_host": self.docker_host, "dockerd_pid": pid,
            "swarm": swarm.get("LocalNodeState", "down"), "node_id": swarm.get("NodeID", ""),
            "relay_ports": self.relay_ports(), "in_netns": netns.pids(self.netns),
        }

    # ------------------------------------------------------------------ start
    def start(self, relay_ports: Iterable[int] = ()) -> None:
        """Namespace, engine, swarm and relay, each only when it is not there already."""
        check_capabilities()
        self._claim()
        netns.ensure(self.netns)
        if self.dockerd_pid() is None:
            self._start_dockerd()
        wait_for(self.answers, START_TIMEOUT_S,
                 f"node {self.name}'s dockerd to answer on {self.socket} "
                 f"(log: {self.logs / 'dockerd.log'})", poll_s=0.1)
        if self.swarm().get("LocalNodeState") != "active":
            self.docker("swarm", "init", "--advertise-addr", "127.0.0.1",
                        "--default-addr-pool", SWARM_POOL,
                        "--default-addr-pool-mask-length", "24")
        ports = sorted(set(relay_ports))
        if self.relay_ports() != ports:
            self._stop_relay()
            if ports:
                self._start_relay(ports)

    def _claim(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        marker = self.run_dir / MARKER
        if marker.exists() and marker.read_text().strip() != self.name:
            raise RigError(f"{self.run_dir} belongs to node {marker.read_text().strip()!r}, "
                           f"not {self.name!r}; give each node a run dir of its own")
        marker.write_text(self.name + "\n")

    def _start_dockerd(self) -> None:
        (self.run_dir / "daemon.json").write_text("{}\n")  # not the host's /etc/docker one
        argv = [
            "setsid", "-f", "nsenter", f"--net={netns.path(self.netns)}", "--",
            "dockerd", "--data-root", str(self.run_dir / "data"),
            "--exec-root", str(self.run_dir / "exec"), "-H", self.docker_host,
            "--pidfile", str(self.pidfile), "--config-file", str(self.run_dir / "daemon.json"),
            "--containerd-namespace", f"ccci-{self.name}",
            "--containerd-plugins-namespace", f"ccci-{self.name}-plugins",
            "--bridge=none", "--default-address-pool", f"base={LOCAL_POOL},size=24",
        ]
        with open(self.logs / "dockerd.log", "ab") as log:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=20,
                           check=True)
        pid = wait_for(self.dockerd_pid, START_TIMEOUT_S,
                       f"node {self.name}'s dockerd to write {self.pidfile} "
                       f"(log: {self.logs / 'dockerd.log'})", poll_s=0.1)
        assert pid is not None
        if netns.of_pid(pid) == netns.host_identity():  # never: nsenter fails before exec
            terminate(pid, 5)
            raise RigError(f"node {self.name}'s dockerd ran in the host's namespace; stopped")

    def _start_relay(self, ports: list[int]) -> None:
        ready = self.run_dir / "relay.ready"
        ready.unlink(missing_ok=True)
        argv = ["setsid", "-f", sys.executable, "-m", "ccci_rig.relay", "--netns", self.netns,
                "--ready", str(ready), "--pidfile", str(self.run_dir / "relay.pid")]
        for port in ports:
            argv += ["--port", str(port)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        with open(self.logs / "relay.log", "ab") as log:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                           timeout=20, check=True)
        wait_for(lambda: self.relay_ports() == ports, 20,
                 f"node {self.name}'s relay to listen on {ports} "
                 f"(log: {self.logs / 'relay.log'})", poll_s=0.05)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stacks, swarm, engine, leftovers, mounts, namespace, files: all gone (logs kept)."""
        marker = self.run_dir / MARKER
        if marker.exists() and marker.read_text().strip() != self.name:
            raise RigError(f"{self.run_dir} belongs to node {marker.read_text().strip()!r}; "
                           f"not stopping it as {self.name!r}")
        self._stop_relay()
        pid = self.dockerd_pid()
        if pid is not None:
            if self.answers():
                self._remove_stacks()
            terminate(pid, STOP_GRACE_S)
        for left in netns.pids(self.netns):  # containerd, shims, the node's own processes
            if netns.of_pid(left) == netns.identity(self.netns):
                terminate(left, 10)
        self._unmount()
        netns.delete(self.netns)
        if marker.exists():
            for path in self._made():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            marker.unlink()

    def _remove_stacks(self) -> None:
        stacks = self.docker("stack", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for stack in stacks:
            self.docker("stack", "rm", stack, check=False)
        if self.swarm().get("LocalNodeState") == "active":
            self.docker("swarm", "leave", "--force")

    def _stop_relay(self) -> None:
        pid = self.relay_pid()
        if pid is not None:
            terminate(pid, 10)
        (self.run_dir / "relay.ready").unlink(missing_ok=True)

    def _unmount(self) -> None:
        inside = str(self.run_dir) + "/"
        for point in sorted(_mount_points(), key=len, reverse=True):
            if point.startswith(inside):
                run(["umount", "-l", point], 30, f"unmounting node {self.name}'s {point}")

    # ------------------------------------------------------------------ images
    def copy_images(self, images: Iterable[str], source_host: str | None = None) -> list[str]:
        """Copy ``images`` from the host's engine (``docker save | load``); those already
        there with the same id are skipped. Returns the ones copied."""
        source = ["docker"] if source_host is None else ["docker", "-H", source_host]
        wanted = sorted(set(images))
        missing = []
        for image in wanted:
            have = run([*source, "image", "inspect", "--format", "{{.Id}}", image], 30,
                       "inspecting an image", check=False)
            if have.returncode != 0:
                raise RigError(f"image {image!r} is not on the host's engine; build or pull "
                               "it there first (examples/make_recipes.py builds the examples)")
            there = self.docker("image", "inspect", "--format", "{{.Id}}", image, check=False)
            if there.stdout.strip() != have.stdout.strip():
                missing.append(image)
        if missing:
            _pipe([*source, "save", *missing], self.docker_argv("load", "-q"), 600,
                  f"copying {missing} to node {self.name}")
        return missing


def reap(netns_name: str) -> None:
    """Stop a node known only by its namespace (one whose starter is gone): its run dir is
    read from its dockerd's or containerd's command line; with neither left, what is left in
    the namespace is ended and the namespace deleted."""
    name = netns_name.removeprefix("ccci-")
    for pid in netns.pids(netns_name):
        run_dir = _run_dir_of(cmdline(pid))
        if run_dir is not None:
            Node(name, run_dir).stop()
            return
    ident = netns.identity(netns_name) if netns.exists(netns_name) else None
    for pid in netns.pids(netns_name):
        if netns.of_pid(pid) == ident:
            terminate(pid, 10)
    netns.delete(netns_name)


def _run_dir_of(argv: list[str]) -> Path | None:
    """The run dir named by a node's dockerd (its pid file) or containerd (its config)."""
    for flag, up in (("--pidfile", 1), ("--config", 3)):  # <run>/exec/containerd/x.toml
        if argv and argv[0].endswith(("dockerd", "containerd")) and flag in argv[:-1]:
            path = Path(argv[argv.index(flag) + 1])
            return path.parents[up - 1]
    return None


def _pipe(first: list[str], second: list[str], timeout_s: float, what: str) -> None:
    """``first | second`` without a shell, both bounded by ``timeout_s``."""
    with subprocess.Popen(first, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as left:
        assert left.stdout is not None
        try:
            right = subprocess.run(second, stdin=left.stdout, capture_output=True, text=True,
                                   timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            left.kill()
            raise RigError(f"{what}: not done within {timeout_s:g} s") from exc
        finally:
            left.stdout.close()
        try:
            _, err = left.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            left.kill()
            raise RigError(f"{what}: `{' '.join(first)}` did not end") from exc
    if left.returncode != 0 or right.returncode != 0:
        raise RigError(f"{what} failed: {err.decode(errors='replace').strip()} "
                       f"{right.stderr.strip()}")


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field))
    return points


@contextlib.contextmanager
def running(name: str, run_dir: Path, relay_ports: Iterable[int] = ()) -> Iterator[Node]:
    """A started node for the body; stopped after it, whatever happens."""
    node = Node(name, run_dir)
    try:
        node.start(relay_ports)
        yield node
    finally:
        node.stop()
