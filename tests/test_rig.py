"""The several-hosts rig: a second swarm host on this machine, in a network namespace of its own.

One node for the module (``ccci_rig.running``), relaying the session Redis. The node must be a
swarm of its own, serve host-network services on its own 127.0.0.1, reach the shared Redis at
the host's address, and leave the host's engine and its ``docker0`` exactly as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import REDIS_PORT, REPO, SESSION_DIR, TEST_ENV, _free_port
from hosts import need_rig, node_name, reap_ended_sessions_nodes

from ccci_rig import Node, RigError, recipe_images, running
from ccci_rig import netns as nsmod

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker]

IMAGE = "ccci/custom-html:2.0"  # built by examples/make_recipes.py
PROBE = ("import sys, urllib.request\n"
         "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n")


def docker0() -> str:
    proc = subprocess.run(["ip", "-o", "link", "show", "docker0"], capture_output=True,
                          text=True, timeout=10, check=False)
    return proc.stdout.split(":")[1].strip() if proc.returncode == 0 else ""


def main_bridge_container_runs() -> str:
    """A container on the host engine's default bridge: its eth0 address."""
    proc = subprocess.run(["docker", "run", "--rm", "--network", "bridge", "--entrypoint",
                           "/bin/busybox", IMAGE, "ip", "-o", "-4", "addr", "show", "eth0"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"default-bridge container failed: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def capable(swarm: DockerClient, example_recipes: Path) -> None:
    """This machine can run a node (root, ip, nsenter, dockerd); else skip, or fail in CI.
    Nodes that ended test sessions left are stopped first."""
    need_rig()


@pytest.fixture(scope="module")
def node(capable: None, redis_server: str) -> Iterator[Node]:
    """One node of this session, relaying the session Redis, with the example image."""
    with running(node_name("b"), SESSION_DIR / "nodes" / "b", [REDIS_PORT]) as started:
        started.copy_images([IMAGE])
        yield started


def deploy(node: Node, stack: str, port: int) -> None:
    compose = SESSION_DIR / f"{stack}.yml"
    compose.write_text(json.dumps({
        "version": "3.8",
        "services": {"app": {"image": IMAGE, "networks": ["hostnet"],
                             "environment": [f"CCCI_HTTP_PORT={port}", "INIT_DELAY=0",
                                             "GREETING=served by the second host"]}},
        "networks": {"hostnet": {"external": True, "name": "host"}},
    }))
    node.docker("stack", "deploy", "--detach=true", "-c", str(compose), stack)


def get_inside(node: Node, url: str) -> str:
    return node.run([sys.executable, "-c", PROBE, url], timeout_s=30).stdout


def test_node_is_a_swarm_of_its_own(node: Node, swarm: DockerClient) -> None:
    """The node's engine is an active swarm manager with a node id of its own; a stack
    deployed there exists there and not on the host's engine."""
    mine = node.swarm()
    assert mine["LocalNodeState"] == "active" and mine["ControlAvailable"]
    assert mine["NodeID"] and mine["NodeID"] != swarm.info()["Swarm"]["NodeID"]
    stack = f"rigonly{os.urandom(3).hex()}"
    deploy(node, stack, _free_port())
    try:
        names = node.docker("service", "ls", "--format", "{{.Name}}").stdout.split()
        assert f"{stack}_app" in names
        assert not swarm.services.list(filters={"name": f"{stack}_app"})
    finally:
        node.docker("stack", "rm", stack)


def test_host_network_service_answers_only_inside_the_node(node: Node) -> None:
    """A host-network service of the node answers on 127.0.0.1:<port> inside the node's
    namespace, and nothing answers on the host's 127.0.0.1:<port>."""
    port = _free_port()
    stack = f"rigweb{os.urandom(3).hex()}"
    deploy(node, stack, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            got = node.run([sys.executable, "-c", PROBE, f"http://127.0.0.1:{port}/"],
                           timeout_s=30, check=False)
            if got.returncode == 0:
                break
            assert time.monotonic() < deadline, f"no answer inside the node: {got.stderr}"
            time.sleep(0.5)
        assert "served by the second host" in got.stdout
        import socket

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        node.docker("stack", "rm", stack)


def test_node_process_reaches_the_shared_redis(node: Node, redis_server: str) -> None:
    """A process in the node's namespace talks to the session Redis at the host's own
    127.0.0.1:<port>, through the relay, both ways and with a payload of 2 MiB."""
    import redis

    key = f"ccci:rig:{os.urandom(4).hex()}"
    script = ("import sys, redis\n"
              "r = redis.Redis.from_url(sys.argv[1])\n"
              "r.set(sys.argv[2] + ':in', b'x' * (2 << 20))\n"
              "print(len(r.get(sys.argv[2] + ':out')))\n")
    host = redis.Redis.from_url(redis_server)
    host.set(f"{key}:out", b"y" * (2 << 20))
    try:
        out = node.run([sys.executable, "-c", script, redis_server, key], timeout_s=60)
        assert out.stdout.strip() == str(2 << 20)
        assert host.strlen(f"{key}:in") == 2 << 20
    finally:
        host.delete(f"{key}:in", f"{key}:out")
        host.close()


def test_a_worker_in_the_node_answers_over_the_relayed_broker(node: Node) -> None:
    """A Celery worker started in the node's namespace (as the node's runs worker will be),
    configured with the host's broker URL, answers a ping from the host."""
    from ccci_tasks.celery_app import app

    hostname = f"rig-{os.urandom(3).hex()}@{node.name}"
    env = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO),
           "CCCI_DOCKER_HOST": node.docker_host}
    log = open(SESSION_DIR / f"{hostname}.log", "ab")  # noqa: SIM115
    worker = subprocess.Popen(
        node.argv([sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "worker",
                   "--pool=solo", "--queues=alerts", f"--hostname={hostname}"]),
        cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[hostname], timeout=1.0):
            assert worker.poll() is None, f"the node's worker exited {worker.returncode}"
            assert time.monotonic() < deadline, "the node's worker never answered a ping"
        assert worker.pid in nsmod.pids(node.netns)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()


def test_start_is_idempotent(node: Node) -> None:
    """Starting a running node again keeps its engine, swarm and relay."""
    before = node.status()
    node.start([REDIS_PORT])
    after = node.status()
    for key in ("dockerd_pid", "node_id", "relay_ports"):
        assert after[key] == before[key], key


def test_start_stop_leaves_the_host_engine_and_docker0_intact(node: Node) -> None:
    """Another node started and stopped: the host's docker0 is the same interface throughout,
    the host engine runs a default-bridge container while it runs and after; the stop leaves no
    namespace, process, mount or file of the node but its logs, and a second stop is a no-op."""
    bridge = docker0()
    assert bridge, "the host engine's docker0 is missing before the test"
    run_dir = SESSION_DIR / "nodes" / "c"
    began = time.monotonic()
    with running(node_name("c"), run_dir) as other:
        started_s = time.monotonic() - began
        assert other.swarm()["LocalNodeState"] == "active"
        assert docker0() == bridge
        assert "inet " in main_bridge_container_runs()
        inside = nsmod.pids(other.netns)
        assert inside
        began = time.monotonic()
    stopped_s = time.monotonic() - began
    print(f"second node: started in {started_s:.1f} s, stopped in {stopped_s:.1f} s")
    assert docker0() == bridge
    assert "inet " in main_bridge_container_runs()
    assert_gone(other, inside)
    other.stop()


def assert_gone(node: Node, inside: list[int]) -> None:
    """Nothing of ``node`` is left: namespace, processes, mounts, files but its logs."""
    assert node.netns not in nsmod.names()
    assert not [pid for pid in inside if Path(f"/proc/{pid}/status").exists()
                and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()]
    assert str(node.run_dir) + "/" not in Path("/proc/self/mountinfo").read_text()
    assert sorted(p.name for p in node.run_dir.iterdir()) == ["logs"]


def started_with_an_app(name: str, run_dir: Path) -> tuple[Node, list[int]]:
    """A node serving one host-network app; its processes."""
    node = Node(name, run_dir)
    try:
        node.start()
        node.copy_images([IMAGE])
        port = _free_port()
        deploy(node, "leftover", port)
        probe = [sys.executable, "-c", PROBE, f"http://127.0.0.1:{port}/"]
        deadline = time.monotonic() + 60
        while node.run(probe, timeout_s=30, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the node's app never answered"
            time.sleep(0.5)
    except BaseException:
        node.stop()
        raise
    return node, nsmod.pids(node.netns)


def test_stop_cleans_up_after_a_killed_engine(capable: None) -> None:
    """The node's dockerd SIGKILLed with an app running (its containerd, shim and app left
    behind): stop still ends them all and removes the mounts, the namespace and the files."""
    node, inside = started_with_an_app(node_name("k"), SESSION_DIR / "nodes" / "k")
    try:
        pid = node.dockerd_pid()
        assert pid is not None
        os.kill(pid, 9)
        node.stop()
        assert_gone(node, inside)
    finally:
        node.stop()


def test_a_node_left_by_an_ended_session_is_reaped(node: Node) -> None:
    """A node whose test session ended without stopping it (its engine and app still running)
    is found by its namespace's name and stopped whole by the next session."""
    from conftest import LIVE_DIR

    base = f"t{os.urandom(3).hex()}"
    (LIVE_DIR / f"{base}.localhost").touch()  # its session took the lock and is gone
    left, inside = started_with_an_app(f"{base}-x", SESSION_DIR / "nodes" / "x")
    try:
        assert left.netns in reap_ended_sessions_nodes()
        assert_gone(left, inside)
        assert node.netns in nsmod.names() and node.swarm()["LocalNodeState"] == "active"
    finally:
        left.stop()
        (LIVE_DIR / f"{base}.localhost").unlink(missing_ok=True)


def test_recipe_images_lists_every_tags_images(example_recipes: Path) -> None:
    """The images a recipe needs are those of its compose files at every tag and HEAD."""
    images = recipe_images(example_recipes / "custom-html")
    assert {"ccci/custom-html:1.0", "ccci/custom-html:2.0"} <= set(images)


@pytest.mark.parametrize(("name", "run_dir", "why"), [
    ("N2", "/tmp/x", "must be 1-24 of"),
    ("n2;rm", "/tmp/x", "must be 1-24 of"),
    ("n2", "relative/dir", "absolute path"),
    ("n2", "/tmp/" + "d" * 80, "at most 64"),
])
def test_bad_node_names_and_run_dirs_are_refused(name: str, run_dir: str, why: str) -> None:
    """A node name or run dir that could not work is refused before anything is made."""
    with pytest.raises(RigError, match=why):
        Node(name, Path(run_dir))
