"""Runs on two hosts (R15): this machine's engine (node n1) and a rig node (n2: an engine and a
network namespace of its own), one Redis, each with its runs worker and state root; n1 also
runs the side-queue worker (entry tasks, the janitor) and beat. MAX_TESTS 1 on each.

Placement (a quick run goes to the node of its canonical and waits for it while the other
node is free; a green run elsewhere leaves the canonical where it lives), MAX_TESTS per
node under a 100 ms watcher on each engine while cold runs spread over both, every run
visible from either host, and a node whose runs worker is SIGKILLed mid-run: lost, its run
ended ``error`` within the lease TTL and a janitor round, and the next quick run of its
recipe a cold run on the other node.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from conftest import TEST_ENV, Workers, flush_redis, remove_ccci_objects, worker_env
from faults import Watcher, wait_until
from hosts import Host, Hosts, need_rig, two_hosts
from test_pr_commit import pr_commit

from ccci_rig import recipe_images
from ccci_tasks import nodes
from ccci_tasks.admission import Resource, RunSpec, Slots, keep_alive
from ccci_tasks.naming import Recipe, RunId
from ccci_tasks.state import canonical
from ccci_tasks.state.reports import RunReport

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker]

RECIPE = Recipe("custom-html")
TTL_S, JANITOR_S = 10, 2
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def hosts(swarm: DockerClient, example_recipes: Path, workers: Workers, redis_server: str
          ) -> Iterator[Hosts]:
    """Two nodes of MAX_TESTS 1; the session's own workers are stopped meanwhile (they would
    take entry tasks and beat as a third node)."""
    need_rig()
    workers.stop()
    flush_redis(redis_server)
    remove_ccci_objects(swarm)
    try:
        with two_hosts("hs", ("runs",), images=recipe_images(example_recipes / RECIPE),
                       CCCI_LEASE_TTL_S=str(TTL_S), CCCI_NODE_BEAT_S="1",
                       CCCI_JANITOR_INTERVAL_S=str(JANITOR_S),
                       CCCI_LEASE_START_GRACE_S="30") as started:
            side = Workers("hs-side", worker_env(**started.host.env))
            side.start_roles(("alerts", "beat"))
            try:
                yield started
            finally:
                side.stop()
                remove_ccci_objects(swarm)
    finally:
        flush_redis(redis_server)
        workers.restart_all()


def client() -> redis.Redis:
    return redis.Redis.from_url(TEST_ENV["CCCI_BROKER_URL"])


def report(run_id: str) -> RunReport | None:
    from ccci_tasks.config import get_settings
    from ccci_tasks.state import reports

    return reports.at(get_settings()).load(RunId(run_id))


def finished(run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> RunReport:
    return wait_until(lambda: (r := report(run_id)) is not None and r.finished and r,
                      timeout_s, f"run {run_id} to end")


@contextmanager
def occupied(node: str) -> Iterator[RunId]:
    """``node``'s one slot taken by a run that holds it (its lease kept alive) and does nothing,
    so placement must choose the other node or wait."""
    slots = Slots(client(), 1, TTL_S, node=node)
    run_id = RunId(str(uuid.uuid4()))
    slots.enqueue(RunSpec(run_id, "cold", Recipe("occupier"), resources=(Resource.slot(),),
                          pin=node))
    admitted = wait_until(lambda: [s for s in slots.admit() if s.run_id == run_id], 30,
                          f"the occupier of {node} to be admitted")
    token = admitted[0].token
    assert slots.renew(run_id, token)
    with keep_alive(slots, run_id, token, interval_s=1.0):
        yield run_id
    slots.end(run_id, token)
    slots.forget(run_id)


@pytest.fixture(scope="module")
def engines(hosts: Hosts, swarm: DockerClient) -> Iterator[dict[str, DockerClient]]:
    import docker

    assert hosts.far.rig is not None
    far = docker.DockerClient(base_url=hosts.far.rig.docker_host, timeout=30)
    yield {"n1": swarm, "n2": far}
    far.close()


def cold(ref: str | None = None) -> str:
    from ccci_tasks.tasks import cold_run

    return str((cold_run.delay(RECIPE, ref) if ref else cold_run.delay(RECIPE)).id)


def quick(sha: str) -> str:
    from ccci_tasks.tasks import quick_run

    return str(quick_run.delay(RECIPE, sha).id)


def test_a_quick_run_goes_to_the_node_of_its_canonical(
    hosts: Hosts, example_recipes: Path, engines: dict[str, DockerClient]
) -> None:
    """The canonical is seeded on n2 (n1 was full); a quick run then waits for n2 while n1 is
    free, and runs on n2 once n2 has a slot: its report names n2, its canonical and snapshot
    stay in n2's state root, n1's holds none."""
    with occupied("n1"):
        seed = finished(cold())
    assert (seed.verdict, seed.node) == ("pass", "n2"), seed.reason
    assert canonical.read_registry(hosts.far.state_dir, RECIPE) is not None
    assert canonical.read_registry(hosts.host.state_dir, RECIPE) is None
    wait_until(lambda: nodes.canonical_node(nodes.read_nodes(client(), TTL_S), RECIPE) == "n2",
               5, "n2 to publish its canonical")
    sha = pr_commit(example_recipes / RECIPE)
    with occupied("n2"):
        run_id = quick(sha)
        queued = wait_until(lambda: (r := report(run_id)) is not None and r, 30,
                            "the quick run's report")
        time.sleep(3 * JANITOR_S)  # n1 is free all along
        waiting = report(run_id)
        assert waiting is not None and waiting.lane == "quick", waiting and waiting.reason
        assert waiting.admitted_at is None and not waiting.finished, waiting
        spec = Slots(client(), 1, TTL_S, node="n1").spec(RunId(run_id))
        assert spec is not None and spec.pin == "n2" and queued.lane == "quick"
    done = finished(run_id)
    assert (done.verdict, done.lane, done.node) == ("pass", "quick", "n2"), done.reason


def test_a_green_run_on_another_node_leaves_the_canonical_where_it_lives(
    hosts: Hosts,
) -> None:
    """A cold run on latest (it would promote) goes to the free node n1 while n2, which holds
    the canonical, is full: it is green and promotes nothing; the canonical stays on n2 alone."""
    before = canonical.read_registry(hosts.far.state_dir, RECIPE)
    assert before is not None
    with occupied("n2"):
        done = finished(cold())
    assert (done.verdict, done.node) == ("pass", "n1"), done.reason
    assert f"not promoted: the canonical of {RECIPE} lives on node n2" in (done.reason or "")
    assert canonical.read_registry(hosts.host.state_dir, RECIPE) is None
    assert canonical.read_registry(hosts.far.state_dir, RECIPE) == before


def test_cold_runs_spread_over_both_nodes_within_max_tests_each(
    hosts: Hosts, example_recipes: Path, engines: dict[str, DockerClient]
) -> None:
    """Four cold runs at once on a tag that does not promote (no canonical lock): they run on
    both nodes, never more than one app at a time on either engine (100 ms watcher)."""
    from ccci_tasks.naming import Recipe as R
    from ccci_tasks.platform.recipes import RecipeRepo

    versions = RecipeRepo(example_recipes / RECIPE, R(RECIPE)).versions()
    older = versions[-2]
    with Watcher(engines["n1"]) as on_n1, Watcher(engines["n2"]) as on_n2:
        ids = [cold(older) for _ in range(4)]
        done = [finished(run_id) for run_id in ids]
    assert [d.verdict for d in done] == ["pass"] * 4, [d.reason for d in done]
    assert {d.node for d in done} == {"n1", "n2"}
    assert on_n1.samples > 50 and on_n2.samples > 50
    assert (on_n1.most, on_n2.most) == (1, 1)


def test_every_host_sees_both_nodes_and_every_run(hosts: Hosts) -> None:
    """`ccci status` and `ccci runs list` on n1 and inside n2 show both nodes and the runs
    each of them ran."""
    for host in hosts:
        status = json.loads(_ok(host, "status", "--json"))
        assert {n["node"]: n["state"] for n in status["nodes"]} == {"n1": "up", "n2": "up"}
        runs = json.loads(_ok(host, "runs", "list", "--json"))
        assert {"n1", "n2"} <= {r.get("node") for r in runs}, runs


def _ok(host: Host, *args: str) -> str:
    done = host.ccci(*args)
    assert done.returncode == 0, f"ccci {' '.join(args)} on {host.node}: {done.stderr}"
    return done.stdout


def test_a_node_lost_mid_run_ends_its_run_and_its_recipe_falls_back_to_cold(
    hosts: Hosts, example_recipes: Path
) -> None:
    """n2's runs worker is SIGKILLed while a run of it is in a step: within the lease TTL and
    a janitor round n2 is lost and the run ends ``error`` naming it; n2's canonical is not
    offered, so the next quick run of the recipe is a cold run on n1; nothing is left
    ``running``. Then n2 comes back."""
    assert canonical.read_registry(hosts.far.state_dir, RECIPE) is not None
    assert hosts.far.workers is not None
    with occupied("n1"):
        run_id = cold()
        wait_until(lambda: (r := report(run_id)) is not None and r.node == "n2"
                   and r.current is not None and r, 120, "the cold run to be in a step on n2")
    started = time.monotonic()
    hosts.far.workers.kill("runs")
    ended = finished(run_id, TTL_S * 3 + JANITOR_S * 5 + 60)
    took = time.monotonic() - started
    assert ended.verdict == "error" and "node n2 lost" in (ended.reason or ""), ended.reason
    status = json.loads(_ok(hosts.host, "status", "--json"))
    assert {n["node"]: n["state"] for n in status["nodes"]}["n2"] == "lost"
    sha = pr_commit(example_recipes / RECIPE)
    fallback = finished(quick(sha))
    assert (fallback.verdict, fallback.lane, fallback.node) == ("pass", "cold", "n1"), \
        fallback.reason
    assert "fell back to a full cold run" in (fallback.reason or "")
    from ccci_tasks.config import get_settings
    from ccci_tasks.state import reports

    running = [r.run_id for r in reports.at(get_settings()).all(unfinished=True)]
    assert running == [], running
    hosts.far.workers.start("runs")
    hosts.far.workers.wait_ready(("runs",))
    print(f"run ended {took:.1f} s after its node's worker was killed (TTL {TTL_S} s, "
          f"janitor every {JANITOR_S} s)", file=sys.stderr)
