"""The soak's system and its faults: each one is done to the soak's own processes only.

``SoakSystem`` is the bench system (its own redis-server, state root, base domain) with the
worker roles the soak needs (runs, alerts with the janitor, beat) and ways to hurt them:

* ``sigkill`` - SIGKILL the runs worker's process group, start it again;
* ``sigstop`` - SIGSTOP it past the lease (TTL + three janitor rounds), then SIGCONT;
* ``failpoint`` - the runs worker restarted with ``CCCI_FAILPOINTS=<point>=pause``: the run
  stops itself there (the janitor must kill it); SIGCONT once the run has ended;
* ``flushall`` - FLUSHALL on the soak's redis-server;
* ``broker-restart`` - the soak's redis-server shut down (keeping its data, or not) and
  started again on the same port (never any other redis-server);
* ``dockerd-restart`` - the Docker engine restarted: the one engine of this machine, so it
  hurts every other user of it too; select it only where that is acceptable.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.system import REPO, BenchSystem

KINDS = ("sigkill", "sigstop", "failpoint", "flushall", "broker-restart", "dockerd-restart")
ROLES = ("runs", "alerts", "beat")
# The points each lane passes, as the soak arms them (the first hit in the run stops it).
POINTS = {
    "quick": ("before-engine-change", "before-engine-change@upgrade",
              "before-engine-change@restore", "mid-restore", "before-verdict"),
    "cold": ("before-engine-change@new_app", "before-engine-change@teardown",
             "before-engine-change@promote_undeploy", "before-snapshot-swap", "before-verdict"),
}


class SoakSystem(BenchSystem):
    """The bench system with the soak's worker roles and faults."""

    def __init__(self, ttl_s: int, janitor_s: int) -> None:
        super().__init__()
        self.env.update({"CCCI_LEASE_TTL_S": str(ttl_s), "CCCI_LEASE_START_GRACE_S": "60",
                         "CCCI_JANITOR_INTERVAL_S": str(janitor_s)})
        self.ttl_s, self.janitor_s = ttl_s, janitor_s

    def start(self, role: str, **extra: str) -> None:
        env = {**os.environ, **self.env, **extra, "PYTHONPATH": str(REPO)}
        if "CCCI_FAILPOINTS" not in extra:
            env.pop("CCCI_FAILPOINTS", None)
        if role == "beat":
            argv = [sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "beat",
                    "--loglevel=INFO", "-s", str(self.root / "beat-schedule")]
        else:
            argv = [sys.executable, "-m", f"workers.{role}",
                    f"--hostname={role}-soak{os.getpid()}@%h"]
        with open(self.root / "logs" / f"{role}.log", "ab") as log:
            self._workers[role] = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
        if role != "beat":
            self._wait_ready(f"{role}-soak{os.getpid()}@{socket.gethostname()}")

    def _wait_ready(self, hostname: str) -> None:
        """As the bench's, but a broker that was just restarted may drop the first pings."""
        from ccci_tasks.celery_app import app

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for role, proc in self._workers.items():
                if proc.poll() is not None:
                    raise SystemExit(f"soak: worker {role} exited {proc.returncode}; see "
                                     f"{self.root / 'logs'}")
            try:
                replies = app.control.ping(timeout=1.0) or []
            except Exception:  # a dead pooled connection: the next ping opens a new one
                time.sleep(0.5)
                continue
            if any(hostname in reply for reply in replies):
                return
        raise SystemExit(f"soak: worker {hostname} did not answer in 90 s")

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def kill(self, role: str) -> None:
        proc = self._workers[role]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def restart(self, role: str, **extra: str) -> None:
        self.kill(role)
        self.start(role, **extra)

    def signal_runs(self, sig: int) -> None:
        os.killpg(self._workers["runs"].pid, sig)

    def stop_workers(self) -> None:
        for proc in self._workers.values():  # a stopped worker ignores SIGTERM
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
        super().stop_workers()

    # --- the broker ---------------------------------------------------------------------

    def flushall(self) -> None:
        self._redis_cli("FLUSHALL")

    def restart_broker(self, keep_data: bool) -> float:
        """Shut the soak's redis-server down (SAVE or NOSAVE) and start it again on the same
        port; seconds it was away."""
        started = time.monotonic()
        dump = self.root / "dump.rdb"
        if not keep_data:
            dump.unlink(missing_ok=True)
        self._redis_cli("SHUTDOWN", "SAVE" if keep_data else "NOSAVE", check=False)
        assert self._redis is not None
        self._redis.wait(timeout=30)
        if not keep_data:
            dump.unlink(missing_ok=True)
        self._start_redis()
        return time.monotonic() - started

    def _redis_cli(self, *args: str, check: bool = True) -> None:
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), *args],
                       check=check, capture_output=True, timeout=30)


def restart_dockerd() -> float:
    """SIGTERM dockerd, wait until it is gone, start it again in a session of its own, wait
    for the swarm; seconds it was away. This is the machine's one engine."""
    import docker

    started = time.monotonic()
    pidfile = Path("/var/run/docker.pid")  # the engine behind the socket, never a rig node's
    pid = int(pidfile.read_text().strip()) if pidfile.exists() else int(subprocess.run(
        ["pidof", "-s", "dockerd"], capture_output=True, text=True, check=True).stdout.split()[0])
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: not Path(f"/proc/{pid}").exists(), 120, "dockerd to stop")
    with open(os.devnull, "wb") as null:
        subprocess.run(["setsid", "-f", shutil.which("dockerd") or "dockerd"], stdout=null,
                       stderr=null, check=True)

    def ready() -> bool:
        try:
            client = docker.from_env()
            try:
                return str(client.info()["Swarm"]["LocalNodeState"]) == "active"
            finally:
                client.close()
        except Exception:
            return False

    _wait(ready, 180, "dockerd to answer with the swarm active")
    return time.monotonic() - started


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)
