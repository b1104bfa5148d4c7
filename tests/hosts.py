"""Several hosts on one machine for a test module: this machine's engine as one node and a
rig node (``ccci_rig``: a second swarm in a network namespace of its own) as another, each
with its own ``CCCI_NODE``, state root and workers (started as ``conftest.start_workers``
starts the session's), one Redis (the session's, relayed into the rig node).

    @pytest.fixture(scope="module")
    def hosts(redis_server: str) -> Iterator[Hosts]:
        need_rig()
        with two_hosts("nb", CCCI_LEASE_TTL_S="6") as started:
            yield started

After the block nothing of it runs: the workers are stopped, the rig node is stopped whole
(``ccci_rig.running``) and the two nodes are dropped from the node registry.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import (
    REDIS_PORT,
    REPO,
    SESSION_DIR,
    TEST_BASE,
    TEST_ENV,
    Workers,
    _session_live,
    need,
    worker_env,
)

from ccci_rig import Node, RigUnavailable, check_capabilities, running
from ccci_rig import netns as nsmod
from ccci_rig.node import reap

SESSION_NODE = re.compile(r"^ccci-(t[0-9a-f]{6})-[a-z0-9-]+$")


def node_name(suffix: str) -> str:
    """A rig node name of this test session (its namespace tells which session made it)."""
    return f"{TEST_BASE.split('.')[0]}-{suffix}"


def reap_ended_sessions_nodes() -> list[str]:
    """Stop the rig nodes that ended (killed) test sessions left running."""
    reaped = []
    for name in nsmod.names():
        match = SESSION_NODE.match(name)
        if match and not _session_live(f"{match.group(1)}.localhost"):
            reap(name)
            reaped.append(name)
    return reaped


def need_rig() -> None:
    """This machine can run a rig node (root, ip, nsenter, dockerd); else skip, or fail in CI."""
    try:
        check_capabilities()
    except RigUnavailable as exc:
        need(str(exc))
    for name in reap_ended_sessions_nodes():
        print(f"stopped the node an ended test session left: {name}", file=sys.stderr)


@dataclass
class Host:
    """One node of the system: its name (``CCCI_NODE``), settings and workers; ``rig`` is
    its rig node, None for this machine's own engine."""

    node: str
    env: dict[str, str]  # its CCCI_* settings, over TEST_ENV
    rig: Node | None = None
    workers: Workers | None = field(default=None, repr=False)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["CCCI_STATE_DIR"])

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as this node's processes run it (inside the rig node's namespace)."""
        return self.rig.argv(cmd) if self.rig is not None else list(cmd)

    def ccci(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """The ``ccci`` command run on this node, with its settings."""
        return subprocess.run(
            self.argv([sys.executable, "-m", "ccci_tasks.cli", *args]), cwd=REPO,
            env={**os.environ, **TEST_ENV, **self.env}, capture_output=True, text=True,
            timeout=timeout_s, check=False)

    def start(self, name: str, roles: tuple[str, ...]) -> Workers:
        inside = self.rig.argv if self.rig is not None else None
        self.workers = Workers(name, worker_env(**self.env), inside).start_roles(roles)
        return self.workers

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()


@dataclass
class Hosts:
    """This machine's node (``host``) and the rig node (``far``), on the session Redis."""

    host: Host
    far: Host

    def __iter__(self) -> Iterator[Host]:
        return iter((self.host, self.far))


def forget_nodes(names: Sequence[str]) -> None:
    """Drop ``names`` from the node registry of the session Redis."""
    import redis

    from ccci_tasks import constants as c

    client = redis.Redis.from_url(TEST_ENV["CCCI_BROKER_URL"])
    try:
        client.zrem(c.KEY_NODES, *names)
        client.delete(*(c.KEY_NODE + name for name in names))
    finally:
        client.close()


@contextmanager
def two_hosts(name: str, roles: tuple[str, ...] = ("runs",), *, nodes: tuple[str, str] = (
        "n1", "n2"), relay: Sequence[int] = (), images: Sequence[str] = (),
        far_env: dict[str, str] | None = None, **env: str) -> Iterator[Hosts]:
    """Start the two nodes, each with ``roles`` workers (``env`` for both, ``far_env`` for
    the rig node's only); the rig node relays the session Redis and the ``relay`` ports and
    gets ``images`` from this machine's engine. ``name`` (up to 16 of [a-z0-9-]) names the
    rig node, the workers and the state roots."""
    root = SESSION_DIR / f"hosts-{name}"
    hosts = []
    for node in nodes:
        state = root / node / "state"
        state.mkdir(parents=True, exist_ok=True)
        hosts.append(Host(node, {**env, "CCCI_NODE": node, "CCCI_STATE_DIR": str(state)}))
    host, far = hosts
    with ExitStack() as stack:
        stack.callback(forget_nodes, nodes)
        rig = stack.enter_context(running(node_name(name), SESSION_DIR / "nodes" / name,
                                          [REDIS_PORT, *relay]))
        if images:
            rig.copy_images(images)
        far.rig = rig
        far.env.update({"CCCI_DOCKER_HOST": rig.docker_host, **(far_env or {})})
        for one in (host, far):
            stack.callback(one.stop)
            one.start(f"{name}-{one.node}", roles)
        yield Hosts(host, far)
