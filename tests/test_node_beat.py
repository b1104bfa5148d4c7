"""The node beat and `ccci status` per node, on two hosts: this machine's engine (node n1)
and a rig node (n2, its own engine and namespace), each with its runs worker and state root,
one Redis (``tests/hosts.py``). A node's runs worker beats every CCCI_NODE_BEAT_S; a node
with no beat for CCCI_LEASE_TTL_S is lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from conftest import REDIS_PORT, REPO, TEST_BASE, worker_env
from hosts import Host, Hosts, need_rig, two_hosts

from ccci_rig import netns as nsmod
from ccci_tasks import nodes
from ccci_tasks.admission import Resource, RunSpec, Slots
from ccci_tasks.config import Settings
from ccci_tasks.errors import PlatformError
from ccci_tasks.naming import Domain, Recipe, RunHex, RunId, cold_domain, warm_domain
from ccci_tasks.nodebeat import NodeBeat
from ccci_tasks.state import canonical, warmsnap

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker]

TTL_S, BEAT_S = 6, 1  # a node is lost 6 s after its last beat; beats every second
RECIPE = Recipe("custom-html")
WAIT_S = 90  # for a worker to start and beat, under load


@pytest.fixture(scope="module")
def hosts(swarm: DockerClient, redis_server: str) -> Iterator[Hosts]:
    """n1 (MAX_TESTS 1) on this machine's engine, n2 (MAX_TESTS 2) on a rig node."""
    need_rig()
    with two_hosts("nb", CCCI_LEASE_TTL_S=str(TTL_S), CCCI_NODE_BEAT_S=str(BEAT_S),
                   CCCI_MAX_TESTS="1", far_env={"CCCI_MAX_TESTS": "2"}) as started:
        yield started


def status(host: Host) -> dict[str, Any]:
    done = host.ccci("status", "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def by_node(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in data["nodes"]}


def wait_status(host: Host, what: str, ok: Callable[[dict[str, Any]], bool],
                timeout_s: float = WAIT_S) -> dict[str, Any]:
    """`ccci status --json` on ``host`` until ``ok``; the timeout names what it last saw."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = status(host)
        if ok(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"on {host.node}: {what} not seen within {timeout_s} s; last "
                                 f"nodes: {data['nodes']}")
        time.sleep(0.5)


def states(data: dict[str, Any]) -> dict[str, str]:
    return {name: n["state"] for name, n in by_node(data).items()}


def both_up(data: dict[str, Any]) -> bool:
    seen = states(data)
    return seen.get("n1") == "up" and seen.get("n2") == "up"


def test_both_nodes_beat_and_show_up_on_either_host(hosts: Hosts) -> None:
    """Each node's runs worker beats; `ccci status` run on this machine and inside the rig
    node's namespace lists both nodes up with their MAX_TESTS and runs worker, the run's
    own node first in the text."""
    far_runs = hosts.far.workers.procs["runs"] if hosts.far.workers else None
    assert far_runs is not None and hosts.far.rig is not None
    assert far_runs.pid in nsmod.pids(hosts.far.rig.netns), "n2's worker runs outside n2"
    for host in hosts:
        data = wait_status(host, "n1 and n2 up", both_up)
        seen = by_node(data)
        for one, max_tests in ((hosts.host, 1), (hosts.far, 2)):
            assert one.workers is not None
            assert seen[one.node] == {"node": one.node, "state": "up", "slots_in_use": 0,
                                      "max_tests": max_tests,
                                      "workers": [one.workers.hostname("runs")]}
        assert data["node"] == host.node
        assert data["max_tests"] == (1 if host is hosts.host else 2)
        done = host.ccci("status")
        assert done.returncode == 0, done.stderr
        assert "node n1: up, slots 0/1, workers runs-nb-n1@" in done.stdout
        assert "node n2: up, slots 0/2, workers runs-nb-n2@" in done.stdout


def test_each_node_publishes_its_own_engine_and_canonicals(hosts: Hosts,
                                                           redis_server: str) -> None:
    """n2 publishes what is live on its own engine (a cold app there takes one of its
    slots, none of n1's) and the canonical usable in its own state root, which makes n2 the
    node of that recipe's quick runs; quarantined, the canonical leaves n2's next beat."""
    far = hosts.far
    assert far.rig is not None
    run_hex = os.urandom(3).hex()
    domain = cold_domain(RECIPE, RunHex(run_hex), Domain(TEST_BASE))
    far.rig.docker("service", "create", "--detach", "--no-resolve-image", "--replicas", "0",
                   "--name", f"nb-{run_hex}", "--label", "ccci.kind=cold",
                   "--label", f"ccci.domain={domain}", "--label", f"ccci.run={run_hex}",
                   "--label", f"ccci.recipe={RECIPE}", "ccci/custom-html:2.0")
    seed_canonical(far.state_dir, Domain(TEST_BASE))
    client = redis.Redis.from_url(redis_server)
    try:
        def registry() -> dict[str, nodes.NodeState]:
            return {n.node: n for n in nodes.read_nodes(client, TTL_S)}

        deadline = time.monotonic() + WAIT_S
        while not (f"cold:{run_hex}" in registry()["n2"].live
                   and RECIPE in registry()["n2"].canonicals):
            assert time.monotonic() < deadline, f"n2 never published them: {registry()['n2']}"
            time.sleep(0.5)
        seen = registry()
        assert seen["n2"].slots_in_use == 1 and seen["n1"].slots_in_use == 0
        assert f"cold:{run_hex}" not in seen["n1"].live and not seen["n1"].canonicals
        assert nodes.canonical_node(list(seen.values()), RECIPE) == "n2"
        canonical.quarantine(far.state_dir, RECIPE, "a test quarantined it")
        while RECIPE in registry()["n2"].canonicals:
            assert time.monotonic() < deadline, "the quarantined canonical is still published"
            time.sleep(0.5)
        assert nodes.canonical_node(nodes.read_nodes(client, TTL_S), RECIPE) is None
    finally:
        far.rig.docker("service", "rm", f"nb-{run_hex}", check=False)
        client.close()


def test_slots_per_node_with_runs_held_by_hand(hosts: Hosts, redis_server: str) -> None:
    """A run held on n1 and one on n2 (admitted by each node's Slots): each node shows its
    own slots in use against its own MAX_TESTS, on either host; each run shows its node, and
    a host's own slots count only the runs of its node."""
    client = redis.Redis.from_url(redis_server)
    held = []
    try:
        for node, max_tests in (("n1", 1), ("n2", 2)):
            slots = Slots(client, max_tests, TTL_S, start_grace_s=300, node=node)
            spec = slots.enqueue(RunSpec(RunId(str(uuid.uuid4())), "cold", RECIPE,
                                         resources=(Resource.slot(),), pin=node))
            (admitted,) = slots.admit([])
            assert admitted.run_id == spec.run_id and admitted.node == node
            held.append((slots, admitted))
        for host in hosts:
            data = wait_status(host, "n1 1/1 and n2 1/2", lambda d: {
                k: (v["state"], v["slots_in_use"], v["max_tests"])
                for k, v in by_node(d).items() if k in ("n1", "n2")
            } == {"n1": ("up", 1, 1), "n2": ("up", 1, 2)})
            assert {r["run_id"]: r["node"] for r in data["in_flight"]} == {
                spec.run_id: spec.node for _, spec in held}
            assert data["slots_in_use"] == 1  # its own node's run only
            text = host.ccci("status").stdout
            assert f"{held[1][1].run_id} cold custom-html on n2" in text
            assert "node n1: up, slots 1/1" in text and "node n2: up, slots 1/2" in text
    finally:
        for slots, spec in held:
            slots.end(spec.run_id, spec.token)
        client.close()


def test_a_killed_runs_worker_turns_its_node_lost_then_up_again(hosts: Hosts) -> None:
    """n2's runs worker SIGKILLed: n2 shows lost within the lease TTL and a beat (with how
    long it has not beaten), n1 stays up; restarted, n2 is up again."""
    far, workers = hosts.far, hosts.far.workers
    assert workers is not None
    wait_status(hosts.host, "n1 and n2 up", both_up)
    workers.kill("runs")
    killed = time.monotonic()
    data = wait_status(hosts.host, "n2 lost", lambda d: states(d).get("n2") == "lost",
                       timeout_s=10 * (TTL_S + BEAT_S))
    lost_after = time.monotonic() - killed
    print(f"n2 lost {lost_after:.1f} s after its runs worker was killed (TTL {TTL_S} s)")
    assert states(data)["n1"] == "up"
    text = far.ccci("status").stdout  # the CLI of a lost node still reads the registry
    assert "node n2: lost (no beat for " in text and "node n1: up" in text
    workers.start("runs")
    workers.wait_ready(("runs",))
    wait_status(hosts.host, "n2 up again", both_up)


def test_a_node_cut_from_the_broker_turns_lost_and_comes_back(hosts: Hosts) -> None:
    """n2 cut from Redis (its relay stopped): its beats fail, are logged, and n2 turns lost;
    reconnected, the same worker beats again (its beat thread survived) and n2 is up."""
    rig, workers = hosts.far.rig, hosts.far.workers
    assert rig is not None and workers is not None
    wait_status(hosts.host, "n1 and n2 up", both_up)
    pid = workers.procs["runs"].pid
    log = workers.logdir / "runs.log"
    rig._stop_relay()
    try:
        wait_status(hosts.host, "n2 lost", lambda d: states(d).get("n2") == "lost",
                    timeout_s=10 * (TTL_S + BEAT_S))
    finally:
        rig.start([REDIS_PORT])
    wait_status(hosts.host, "n2 up again", both_up)
    assert workers.procs["runs"].pid == pid and workers.procs["runs"].poll() is None
    text = log.read_text(errors="replace")
    assert "node beat: beating into the broker failed" in text
    assert "node beat: beating into the broker works again" in text


@pytest.mark.parametrize(("value", "needle"), [
    ("0", "CCCI_NODE_BEAT_S '0' is invalid"),
    ("soon", "CCCI_NODE_BEAT_S 'soon' is invalid"),
    ("nan", "CCCI_NODE_BEAT_S 'nan' is invalid"),
    ("4", r"CCCI_NODE_BEAT_S \(4\) must be at most half of CCCI_LEASE_TTL_S \(6\)"),
])
def test_a_bad_beat_interval_refuses_the_worker(hosts: Hosts, value: str, needle: str) -> None:
    """A runs worker (and the CLI) given a bad CCCI_NODE_BEAT_S exits 2 naming it and what
    to give; the node's registry entry is untouched by it."""
    before = by_node(status(hosts.host))["n1"]["workers"]
    env = worker_env(**{**hosts.host.env, "CCCI_NODE_BEAT_S": value, "CCCI_NODE": "nbad"})
    done = subprocess.run([sys.executable, "-m", "workers.runs"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(needle, done.stderr), done.stderr
    cli = subprocess.run([sys.executable, "-m", "ccci_tasks.cli", "status"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 2 and re.search(needle, cli.stderr), cli.stderr
    after = by_node(status(hosts.host))
    assert "nbad" not in after and after["n1"]["workers"] == before


# --------------------------------------------------------------------------- in one process


def test_a_beat_keeps_the_last_known_apps_when_the_engine_cannot_be_read(
        redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An engine that cannot be read: the beat still reaches the broker, with the live apps
    it last knew, and says so in the log; the thread keeps beating through any error."""
    client = redis.Redis.from_url(redis_url)
    engine: list[list[str] | Exception] = [["cold:abc123"], PlatformError("engine gone"),
                                           RuntimeError("a bug")]

    def live(_: Settings) -> list[str]:
        now = engine.pop(0) if len(engine) > 1 else engine[0]
        if isinstance(now, Exception):
            raise now
        return now

    settings = Settings(node="nx", state_dir=tmp_path, node_beat_s=0.1)
    beat = NodeBeat(settings, "runs.nx@here", client=client, live=live)
    try:
        with caplog.at_level(logging.WARNING, logger="ccci_tasks.nodebeat"):
            assert beat.beat_once() is not None
            assert beat.beat_once() is not None
            (nx,) = [n for n in nodes.read_nodes(client, 6) if n.node == "nx"]
            assert (nx.node, nx.state, nx.live, nx.workers) == (
                "nx", "up", ("cold:abc123",), ("runs.nx@here",))
            assert "engine gone; beating with the last known live apps" in caplog.text
            beat.start()
            deadline = time.monotonic() + 30
            while beat.beats < 6:
                assert time.monotonic() < deadline, f"{beat.beats} beats in 30 s"
                time.sleep(0.05)
            assert beat.alive
    finally:
        beat.stop()
        client.close()
    assert not beat.alive


def seed_canonical(state_dir: Path, base: Domain) -> None:
    """A known-good canonical of RECIPE with an (empty) snapshot, as a green run leaves it."""
    from ccci_tasks.state.clock import utc_now

    canonical.write_registry(state_dir, canonical.Canonical(
        recipe=RECIPE, domain=warm_domain(RECIPE, base), version="2.0.0+2.0", commit=None))
    root = warmsnap.snapshot_root(state_dir, RECIPE)
    root.mkdir(parents=True, exist_ok=True)
    work, final = warmsnap.new_dirs(root, utc_now())
    work.mkdir()
    warmsnap.write_manifest(work, warmsnap.Manifest(
        recipe=RECIPE, version="2.0.0+2.0", taken_at=utc_now().isoformat(), volumes=()), "a test")
    warmsnap.make_current(root, work, final)

