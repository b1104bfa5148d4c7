"""A private ccci system for one bench run, like the test suite's (tests/conftest.py).

Its own redis-server on a free loopback port, a temp state root, the example recipes built
into a temp folder, its own base domain (so it never touches another system's apps on the
shared engine), and real worker processes. Everything it created is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout_s: float) -> bool:
    """True once 127.0.0.1:port accepts a connection (polled every 10 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.01)
    return False


def make_recipes(recipes_dir: Path, *names: str) -> None:
    """``examples/make_recipes.py``: the example recipes ``names`` (default: all) built into
    ``recipes_dir``, their images imported into the host's engine."""
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_recipes.py"),
         "--recipes-dir", str(recipes_dir), *(a for n in names for a in ("--recipe", n))],
        check=True, timeout=600, cwd=REPO, stdout=subprocess.DEVNULL,
    )


class BenchSystem:
    """``with BenchSystem() as system:`` sets ``CCCI_*`` in this process and starts the rest."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ccci-bench-"))
        self.base = f"b{os.urandom(3).hex()}.localhost"
        self.redis_port = free_port()
        self.env = {
            "CCCI_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CCCI_STATE_DIR": str(self.root / "state"),
            "CCCI_RECIPES_DIR": str(self.root / "recipes"),
            "CCCI_TESTS_DIR": str(self.root / "tests-recipes"),
            "CCCI_BASE_DOMAIN": self.base,
            "CCCI_MAX_TESTS": "1",
            "CCCI_INFRA_APPS": "",
        }
        self._redis: subprocess.Popen[bytes] | None = None
        self._workers: dict[str, subprocess.Popen[bytes]] = {}

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Self:
        os.environ.update(self.env)
        for key in ("CCCI_PLATFORM", "CCCI_KEYCLOAK_URL", "CCCI_ALERT_URLS", "CCCI_NOTIFY_URLS"):
            os.environ.pop(key, None)
        (self.root / "state").mkdir()
        (self.root / "logs").mkdir()
        self.build_catalogue()
        self._start_redis()
        from ccci_tasks.config import get_settings

        get_settings.cache_clear()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_workers()
        self.remove_docker_objects()
        if self._redis is not None:
            self._redis.terminate()
            self._redis.wait(timeout=10)
        if exc_type is None:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            print(f"bench: logs and state kept in {self.root}", file=sys.stderr)

    def build_catalogue(self) -> None:
        """The example recipes (git repositories and images) and their tests catalogue."""
        shutil.copytree(REPO / "examples" / "tests-recipes", self.root / "tests-recipes")
        make_recipes(self.root / "recipes")

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")
        self._redis = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root),
             "--logfile", str(self.root / "logs" / "redis.log")],
        )
        if not wait_port(self.redis_port, 10):
            raise SystemExit(f"bench: redis-server did not listen on {self.redis_port}")

    # --- workers ----------------------------------------------------------------------

    def start_workers(self, roles: tuple[str, ...] = ("runs", "alerts"), **extra: str) -> None:
        """Worker roles (default: the runs worker and the side-queue worker, which takes the
        submissions), with ``extra`` env."""
        self.stop_workers()
        env = {**os.environ, **self.env, **extra, "PYTHONPATH": str(REPO)}
        for role in roles:
            name = f"{role}-bench{os.getpid()}"
            argv = [sys.executable, "-m", f"workers.{role}", f"--hostname={name}@%h"]
            with open(self.root / "logs" / f"{role}.log", "ab") as log:
                self._workers[role] = subprocess.Popen(
                    argv, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
        for role in roles:
            self._wait_ready(f"{role}-bench{os.getpid()}@{socket.gethostname()}")

    def _wait_ready(self, hostname: str) -> None:
        from ccci_tasks.celery_app import app

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self._workers.values():
                if proc.poll() is not None:
                    raise SystemExit(f"bench: worker exited {proc.returncode}; see "
                                     f"{self.root / 'logs'}")
            replies = app.control.ping(timeout=1.0) or []
            if any(hostname in reply for reply in replies):
                return
        raise SystemExit(f"bench: worker {hostname} did not answer in {READY_TIMEOUT_S} s")

    def stop_workers(self) -> None:
        for proc in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # a warm shutdown: running steps finish
        for proc in self._workers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._workers.clear()

    # --- docker -----------------------------------------------------------------------

    def ours(self, labels: dict[str, Any]) -> bool:
        domain = str(labels.get("ccci.domain", ""))
        return domain == self.base or domain.endswith("." + self.base)

    def remove_docker_objects(self) -> None:
        """Remove every service, container, volume, secret and config this bench created (by
        base domain)."""
        import docker

        client = docker.from_env()
        try:
            for service in client.services.list(filters={"label": "ccci.kind"}):
                if self.ours(service.attrs["Spec"].get("Labels") or {}):
                    with contextlib.suppress(docker.errors.NotFound):
                        service.remove()
            for container in client.containers.list(all=True, filters={"label": "ccci.kind"}):
                if self.ours(container.attrs["Config"].get("Labels") or {}):
                    with contextlib.suppress(docker.errors.APIError):
                        container.remove(force=True)
            for volume in client.volumes.list(filters={"label": "ccci.kind"}):
                if self.ours(volume.attrs.get("Labels") or {}):
                    with contextlib.suppress(docker.errors.APIError):
                        volume.remove(force=True)
            for listing in (client.secrets.list, client.configs.list):
                for obj in listing(filters={"label": "ccci.kind"}):
                    if self.ours(obj.attrs["Spec"].get("Labels") or {}):
                        with contextlib.suppress(docker.errors.APIError):
                            obj.remove()
        finally:
            client.close()
