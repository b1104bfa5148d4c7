"""Session-scoped real services for the test suite.

- one redis-server on a free loopback port, its ``ccci:``/celery keys flushed for each test;
- the Docker engine in swarm mode (started here when absent and we are root);
- the example recipe repositories and their busybox images (``examples/make_recipes.py``);
- real worker processes, one per queue, pointed at the test Redis and a temp state root.

A missing Docker or Redis skips the tests that need it, with the reason; under ``CI=true``
it fails them instead, so CI can never go green by skipping.

The ``CCCI_*`` environment is fixed when this module is imported (a free port, a temp
state root), before any test imports ``ccci_tasks.celery_app``, so the in-process Celery app
and the worker processes always talk to the same Redis.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported by the fixtures themselves, after the environment is set here
    from docker import DockerClient
    from fake_forge import FakeForge
    from push_receiver import PushReceiver

    from ccci_tasks.config import Settings
    from ccci_tasks.state.reports import Reports

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SESSION_DIR = Path(tempfile.mkdtemp(prefix="ccci-test-"))
# A base domain of its own per session: two test sessions (or a test session beside `make up`)
# can share one Docker engine, and neither reaps, counts or cleans up the other's apps.
TEST_BASE = os.environ.get("CCCI_TEST_BASE") or f"t{os.urandom(3).hex()}.localhost"
# Held for the whole session: a test base whose lock file nobody holds belongs to a session
# that ended (or was killed), and the next session removes what it left on the engine.
LIVE_DIR = Path(tempfile.gettempdir()) / "ccci-test-live"
LIVE_DIR.mkdir(exist_ok=True)
_LIVE_LOCK = open(LIVE_DIR / TEST_BASE, "a")  # noqa: SIM115 - held until the process ends
fcntl.flock(_LIVE_LOCK, fcntl.LOCK_EX)
REDIS_PORT = _free_port()
PUSH_PORT = _free_port()  # the local push target (tests/push_receiver.py) listens here
TEST_ENV: dict[str, str] = {
    "CCCI_BROKER_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
    "CCCI_STATE_DIR": str(SESSION_DIR / "state"),
    "CCCI_RECIPES_DIR": str(SESSION_DIR / "recipes"),
    "CCCI_TESTS_DIR": str(SESSION_DIR / "tests-recipes"),
    "CCCI_BASE_DOMAIN": TEST_BASE,  # not the default: `make up` may run beside us
    "CCCI_MAX_TESTS": "1",
    "CCCI_LEASE_TTL_S": "20",
    "CCCI_LEASE_START_GRACE_S": "60",
    "CCCI_JANITOR_INTERVAL_S": "5",
    "CCCI_ALERT_RETRY_MAX_S": "4",
    # A beat killed by a test hands its lock on within seconds, not a minute.
    "CCCI_BEAT_MAX_INTERVAL_S": "2",
    "CCCI_BEAT_LOCK_TIMEOUT_S": "6",
    "CCCI_ALERT_URLS": f"json://127.0.0.1:{PUSH_PORT}/alerts",
    "CCCI_INFRA_APPS": "",  # tests that reconcile live-warm apps set it themselves
}
os.environ.update(TEST_ENV)
for _key in ("CCCI_PLATFORM", "CCCI_KEYCLOAK_URL"):
    os.environ.pop(_key, None)
(SESSION_DIR / "state").mkdir()
shutil.copytree(REPO / "examples" / "tests-recipes", SESSION_DIR / "tests-recipes")


def need(reason: str) -> None:
    """Skip locally, fail under CI=true: a missing service must never turn CI green."""
    if IN_CI:
        pytest.fail(f"required service missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_unconfigure(config: pytest.Config) -> None:
    _LIVE_LOCK.close()  # the session is over: a later session may remove what it left


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != 0 or os.environ.get("CCCI_TEST_KEEP"):
        print(f"\nccci test logs and state kept in {SESSION_DIR}")
        return
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        need("redis-server is not installed (apt-get install redis-server)")
        raise AssertionError  # unreachable
    log = SESSION_DIR / "redis.log"
    proc = subprocess.Popen(
        [binary, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(SESSION_DIR), "--logfile", str(log)],
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        need(f"redis-server did not listen on 127.0.0.1:{REDIS_PORT} within 10 s; see {log}")
    yield TEST_ENV["CCCI_BROKER_URL"]
    proc.terminate()
    proc.wait(timeout=10)


def flush_redis(url: str) -> None:
    """Drop ccci keys, results and queued messages; keep kombu's queue bindings."""
    import redis

    client = redis.Redis.from_url(url)
    for pattern in ("ccci:*", "celery-task-meta-*", "runs", "runs.*", "infra", "alerts",
                    "unacked*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session Redis, flushed of ccci state for this test."""
    flush_redis(redis_server)
    return redis_server


def reports_at(state_dir: Path, node: str | None = None) -> Reports:
    """The run reports as a host of the test system sees them: the session Redis, this
    state root (its copies), and its node name (the test environment's when None)."""
    from ccci_tasks.config import Settings
    from ccci_tasks.state import reports

    settings = Settings()
    changes: dict[str, Any] = {"state_dir": state_dir}
    if node is not None:
        changes["node"] = node
    return reports.at(settings.model_copy(update=changes))


@pytest.fixture
def quiet_redis_url(redis_server: str) -> str:
    """A database of the session Redis that no worker uses, flushed: admission tested there
    is not joined by the session's runs workers, which beat into the broker's database as a
    node (and a node that does not beat while others do admits nothing)."""
    url = redis_server.rsplit("/", 1)[0] + "/1"
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


# --------------------------------------------------------------------------- Docker


def _docker_ready() -> bool:
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def _start_dockerd() -> None:
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        return
    with open(SESSION_DIR / "dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _docker_ready():
        time.sleep(0.5)


@pytest.fixture(scope="session")
def swarm() -> Iterator[DockerClient]:
    """A docker SDK client for an engine in swarm mode."""
    if shutil.which("docker") is None:
        need("the docker CLI is not installed (apt-get install docker.io)")
    if not _docker_ready():
        _start_dockerd()
    if not _docker_ready():
        need("no Docker engine answers on /var/run/docker.sock (start dockerd)")
    state = subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout.strip()
    if state != "active":
        subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
            capture_output=True, text=True, timeout=60, check=True,
        )
    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
    for line in remove_stale_sessions(client):
        print(f"removed what an ended test session left: {line}", file=sys.stderr)
    yield client
    client.close()


@pytest.fixture(scope="session")
def example_recipes(swarm: DockerClient) -> Path:
    """The example recipe repositories (git tags per version) and their images (the Debian
    image of the PostgreSQL recipes takes about a minute the first time on a host)."""
    dest = Path(TEST_ENV["CCCI_RECIPES_DIR"])
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_recipes.py"), "--recipes-dir", str(dest)],
        check=True, timeout=1200, cwd=REPO,
    )
    return dest


def ccci_domain(obj: Any) -> str:
    """The ``ccci.domain`` label of a service, container or volume ("" when unlabelled)."""
    attrs = obj.attrs
    labels = (attrs.get("Spec", {}).get("Labels") or attrs.get("Labels")
              or attrs.get("Config", {}).get("Labels") or {})
    return str(labels.get("ccci.domain", ""))


def ours(obj: Any) -> bool:
    """Objects of the test system: labelled by ccci with a domain under the test base."""
    domain = ccci_domain(obj)
    return domain == TEST_BASE or domain.endswith("." + TEST_BASE)


def _containers(client: DockerClient) -> list[Any]:
    """Every ccci-labelled container, from one listing (sparse: not inspected one by one)."""
    return list(client.containers.list(all=True, sparse=True, filters={"label": "ccci.kind"}))


def remove_ccci_objects(client: DockerClient) -> None:
    """Remove the test system's ccci-labelled services and volumes (test isolation).

    Objects of another ccci system on the same engine (e.g. `make up`) are left alone.
    """
    import docker

    def gone(remove: Any) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            remove()

    for service in client.services.list(filters={"label": "ccci.kind"}):
        if ours(service):
            gone(service.remove)
    # Stop the stacks' containers ourselves instead of waiting for swarm to do it.
    # sparse: no inspection per container, which fails when another session's container
    # goes between the listing and its inspection
    for container in _containers(client):
        if ours(container):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not [c for c in _containers(client) if ours(c)]:
            break
        time.sleep(0.3)
    for volume in client.volumes.list(filters={"label": "ccci.kind"}):
        if ours(volume):
            gone(lambda v=volume: v.remove(force=True))
    for listing in (client.secrets.list, client.configs.list):
        for obj in listing(filters={"label": "ccci.kind"}):
            if ours(obj):
                with contextlib.suppress(docker.errors.APIError):
                    obj.remove()


_SESSION_BASE = re.compile(r"(?:^|\.)(t[0-9a-f]{6}\.localhost)$")
# A session whose lock file is not on this machine (another /tmp) is taken as ended only once
# its objects are older than any test session runs.
_FOREIGN_AFTER_S = 2 * 3600


def _session_live(base: str) -> bool:
    """Whether the test session of ``base`` still runs on this machine."""
    path = LIVE_DIR / base
    if not path.exists():
        return False
    with open(path, "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
    return False


def remove_stale_sessions(client: DockerClient) -> list[str]:
    """Remove the ccci services, containers and volumes that ended test sessions left behind
    (a killed session never cleans up; its crash-looping app would confuse later sessions).
    Only test bases (``t<6hex>.localhost``) of sessions not running now; never `make up`'s."""
    import docker

    from ccci_tasks.platform.engine import parse_timestamp

    def stale(obj: Any) -> str | None:
        domain = ccci_domain(obj)
        match = _SESSION_BASE.search(domain)
        if match is None or match.group(1) == TEST_BASE or _session_live(match.group(1)):
            return None
        if not (LIVE_DIR / match.group(1)).exists():  # not a session of this machine
            created = obj.attrs.get("CreatedAt") or obj.attrs.get("Created") or ""
            # a sparse container listing gives epoch seconds, inspections an RFC 3339 string
            ns = (int(created) * 10**9 if isinstance(created, int)
                  else parse_timestamp(str(created)))
            if not ns or time.time() - ns / 1e9 < _FOREIGN_AFTER_S:
                return None
        return domain

    removed = []
    listings = (
        ("service", lambda: client.services.list(filters={"label": "ccci.kind"})),
        ("container", lambda: _containers(client)),
        ("volume", lambda: client.volumes.list(filters={"label": "ccci.kind"})),
        ("secret", lambda: client.secrets.list(filters={"label": "ccci.kind"})),
        ("config", lambda: client.configs.list(filters={"label": "ccci.kind"})),
    )
    for kind, listing in listings:
        # a removed service's container lets go of its volume (and of its secrets and
        # configs) a moment later
        deadline = time.monotonic() + (0 if kind in ("service", "container") else 30)
        pending = [(obj, domain) for obj in listing() if (domain := stale(obj)) is not None]
        while pending:
            left = []
            for obj, domain in pending:
                try:
                    if kind in ("service", "secret", "config"):
                        obj.remove()
                    else:
                        obj.remove(force=True)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError:
                    left.append((obj, domain))
                    continue
                removed.append(f"{kind} {obj.name} ({domain})")
            if not left or time.monotonic() > deadline:
                break
            pending = left
            time.sleep(0.5)
    return removed


@pytest.fixture
def clean_swarm(swarm: DockerClient, example_recipes: Path) -> Iterator[DockerClient]:
    """The swarm with no ccci services or volumes before and after the test."""
    remove_ccci_objects(swarm)
    yield swarm
    remove_ccci_objects(swarm)


# --------------------------------------------------------------------------- state root


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """The session state root, emptied for this test."""
    root = Path(TEST_ENV["CCCI_STATE_DIR"])
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    yield root


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    """Fresh ``Settings`` from the test environment."""
    from ccci_tasks.config import get_settings

    get_settings.cache_clear()
    return get_settings()


# --------------------------------------------------------------------------- workers


class Workers:
    """Real worker processes, one per queue, started with ``python -m workers.<role>``;
    ``inside`` wraps each command (``ccci_rig.Node.argv``: the workers of a rig node)."""

    def __init__(self, name: str, env: dict[str, str],
                 inside: Callable[[list[str]], list[str]] | None = None) -> None:
        self.name = name
        self.env = env
        self.inside = inside
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logdir = SESSION_DIR / f"workers-{name}"
        self.logdir.mkdir(exist_ok=True)

    def start(self, role: str) -> None:
        """Start ``role``; a second worker of a role is named with a digit (``runs2``)."""
        if role == "beat":
            argv = [sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "beat",
                    "--loglevel=INFO"]
        else:
            argv = [sys.executable, "-m", f"workers.{role.rstrip('0123456789')}",
                    f"--hostname={role}-{self.name}@%h"]
        if self.inside is not None:
            argv = self.inside(argv)
        with open(self.logdir / f"{role}.log", "ab") as log:
            self.procs[role] = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=log, stderr=log, start_new_session=True,
            )

    def restart(self, role: str, **env: str) -> None:
        """Kill ``role`` and start it again with ``env`` added (for this start only)."""
        self.kill(role)
        saved = dict(self.env)
        self.env.update(env)
        try:
            self.start(role)
        finally:
            self.env.clear()
            self.env.update(saved)
        if role != "beat":
            self.wait_ready((role,))

    def hostname(self, role: str) -> str:
        return f"{role}-{self.name}@{socket.gethostname()}"

    def wait_ready(self, roles: tuple[str, ...], timeout_s: float = 60) -> None:
        from ccci_tasks.celery_app import app

        wanted = {self.hostname(role) for role in roles if role != "beat"}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.logdir / f"{role}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"worker {role} exited {proc.returncode}:\n{log}")
            replies = app.control.ping(timeout=1.0) or []
            seen = {name for reply in replies for name in reply}
            if wanted <= seen:
                return
        raise AssertionError(f"workers {sorted(wanted - seen)} not ready after {timeout_s} s")

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[role]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


    def start_roles(self, roles: tuple[str, ...]) -> Workers:
        """Start ``roles`` and wait until they answer (all stopped if one does not)."""
        for role in roles:
            self.start(role)
        try:
            self.wait_ready(roles)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_all(self) -> None:
        """Start every role again (after ``stop``) and wait until they answer."""
        roles = tuple(self.procs)
        for role in roles:
            self.start(role)
        self.wait_ready(roles)


def worker_env(**overrides: str) -> dict[str, str]:
    """The environment of a worker process: ``TEST_ENV`` plus ``overrides``."""
    return {**os.environ, **TEST_ENV, **overrides, "PYTHONPATH": str(REPO)}


def start_workers(name: str, roles: tuple[str, ...] = ("runs", "infra", "alerts"),
                  **overrides: str) -> Workers:
    """Start worker processes with ``TEST_ENV`` plus ``overrides`` (e.g. CCCI_MAX_TESTS)."""
    return Workers(name, worker_env(**overrides)).start_roles(roles)


@pytest.fixture(scope="session")
def workers(redis_server: str) -> Iterator[Workers]:
    """The three session workers (runs with MAX_TESTS=1, infra, alerts)."""
    started = start_workers("s")
    yield started
    started.stop()


@pytest.fixture
def celery_app(redis_url: str) -> Any:
    """The Celery app as the Drone bridge would import it, pointed at the test Redis."""
    from ccci_tasks.celery_app import app

    return app


# ---- push receiver
# The local push target for the alerts relay (tests/push_receiver.py), listening on PUSH_PORT,
# which the workers' CCCI_ALERT_URLS points at. Tests may stop() and start() it.


@pytest.fixture(scope="session")
def push_receiver() -> Iterator[PushReceiver]:
    """One HTTP push receiver on 127.0.0.1:PUSH_PORT for the whole session."""
    from push_receiver import PushReceiver  # tests/ is on sys.path (pytest rootdir import)

    receiver = PushReceiver(PUSH_PORT)
    receiver.start()
    yield receiver
    receiver.stop()
# ---- end push receiver


# ---- forge
# The Gitea/Forgejo stand-in (tests/fake_forge.py) on FORGE_PORT, and the forge settings of
# every process of the session: CCCI_FORGE_* point at the stand-in, CCCI_NOTIFY_URLS at the
# push receiver (path /notify), CCCI_BRIDGE_LISTEN at BRIDGE_PORT. They are fixed here, at
# import, so the session workers (started later) see them too.
FORGE_PORT = _free_port()
BRIDGE_PORT = _free_port()
FORGE_OWNER = "recipes"
FORGE_BOT = "ccci-bot"
FORGE_ENV: dict[str, str] = {
    "CCCI_FORGE_URL": f"http://127.0.0.1:{FORGE_PORT}",
    "CCCI_FORGE_TOKEN": "bot-" + os.urandom(8).hex(),
    "CCCI_FORGE_OWNER": FORGE_OWNER,
    "CCCI_WEBHOOK_SECRET": os.urandom(16).hex(),
    "CCCI_BRIDGE_LISTEN": f"127.0.0.1:{BRIDGE_PORT}",
    "CCCI_NOTIFY_URLS": f"json://127.0.0.1:{PUSH_PORT}/notify",
}
TEST_ENV.update(FORGE_ENV)
os.environ.update(FORGE_ENV)


@pytest.fixture(scope="session")
def fake_forge() -> Iterator[FakeForge]:
    """The forge stand-in for the whole session, its bot token admin of every repository."""
    from fake_forge import FakeForge  # tests/ is on sys.path (pytest rootdir import)

    forge = FakeForge(FORGE_PORT, tokens={FORGE_ENV["CCCI_FORGE_TOKEN"]: FORGE_BOT},
                      git_root=SESSION_DIR / "forge-git", site_admins=(FORGE_BOT,),
                      hook_url=f"http://127.0.0.1:{BRIDGE_PORT}/hooks/forge",
                      hook_secret=FORGE_ENV["CCCI_WEBHOOK_SECRET"])
    forge.start()
    yield forge
    forge.stop()
# ---- end forge
