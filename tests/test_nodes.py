"""Admission on several nodes sharing one broker (R15), on the real Redis: MAX_TESTS per
node, runs pinned to a node, unpinned runs to the node with the most free slots, a node that
does not beat runs nothing, lost nodes left out; and the registry the nodes publish."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ccci_tasks import constants as c
from ccci_tasks import nodes
from ccci_tasks.admission import Resource, RunSpec, Slots
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Recipe, RunId

TTL_S = 30.0


@pytest.fixture
def client(quiet_redis_url: str) -> Iterator[redis.Redis]:
    cli = redis.Redis.from_url(quiet_redis_url)
    yield cli
    cli.close()


def slots_on(client: redis.Redis, node: str, max_tests: int = 1) -> Slots:
    return Slots(client, max_tests, TTL_S, node=node)


def beat(client: redis.Redis, node: str, max_tests: int = 1, live: tuple[str, ...] = (),
         canonicals: tuple[str, ...] = ()) -> None:
    nodes.beat(client, node, max_tests, live, [Recipe(r) for r in canonicals],
               [f"runs.{node}@host"])


def queue(slots: Slots, recipe: str = "app", pin: str | None = None,
          *resources: Resource) -> RunId:
    run_id = RunId(str(uuid.uuid4()))
    slots.enqueue(RunSpec(run_id, "cold", Recipe(recipe), resources=(Resource.slot(), *resources),
                          pin=pin))
    return run_id


def test_each_node_admits_up_to_its_own_max_tests(client: redis.Redis) -> None:
    """Two nodes of one slot each: two runs go one to each node, a third waits; the node
    that admitted a run is written into its spec."""
    beat(client, "n1")
    beat(client, "n2")
    one, two = slots_on(client, "n1"), slots_on(client, "n2")
    first, second, third = queue(one), queue(one), queue(one)
    assert [s.run_id for s in one.admit()] == [first]
    assert one.admit() == []  # n1 is full; n2 has the most free slots
    (admitted,) = two.admit()
    assert admitted.run_id == second and admitted.node == "n2"
    assert one.spec(first) is not None and one.spec(first).node == "n1"  # type: ignore[union-attr]
    assert one.admit() == two.admit() == []
    assert [s.run_id for s in one.pending()] == [third]
    by_node = {n.node: n for n in nodes.read_nodes(client, TTL_S, one.occupying())}
    assert (by_node["n1"].slots_in_use, by_node["n2"].slots_in_use) == (1, 1)
    assert {n.state for n in by_node.values()} == {"up"}


def test_an_unpinned_run_goes_to_the_node_with_the_most_free_slots(client: redis.Redis) -> None:
    """n2 has two free slots, n1 one: n1 leaves an unpinned run to n2. n2 takes it, and
    then, even with n1 (one free slot each), the next too: a tie goes to whoever asks."""
    beat(client, "n1", 1)
    beat(client, "n2", 2)
    one, two = slots_on(client, "n1", 1), slots_on(client, "n2", 2)
    first, second, third = queue(one), queue(one), queue(one)
    assert one.admit() == []
    assert [s.run_id for s in two.admit()] == [first, second]
    assert [s.run_id for s in one.admit()] == [third]


def test_live_apps_a_node_publishes_count_against_its_slots(client: redis.Redis) -> None:
    """A cold app live on n2 that no run explains fills n2's one slot: unpinned runs go to n1."""
    beat(client, "n1")
    beat(client, "n2", live=("cold:abcdef",))
    one, two = slots_on(client, "n1"), slots_on(client, "n2")
    run = queue(one)
    assert two.admit(["cold:abcdef"]) == []
    assert [s.run_id for s in one.admit()] == [run]
    states = {n.node: n for n in nodes.read_nodes(client, TTL_S, one.occupying())}
    assert states["n2"].slots_in_use == 1 and nodes.free_slots(states["n2"]) == 0


def test_a_pinned_run_waits_for_its_node_and_others_go_past_it(client: redis.Redis) -> None:
    """A run pinned to n2 is never admitted by n1; an unpinned run behind it is."""
    beat(client, "n1")
    beat(client, "n2")
    one, two = slots_on(client, "n1"), slots_on(client, "n2")
    pinned, free = queue(one, "a", "n2"), queue(one, "b")
    assert [s.run_id for s in one.admit()] == [free]
    (admitted,) = two.admit()
    assert admitted.run_id == pinned and admitted.node == "n2" and admitted.pin == "n2"


def test_the_canonical_lock_holds_across_nodes(client: redis.Redis) -> None:
    """Two runs holding the same canonical never run at once, whichever nodes admit them."""
    beat(client, "n1")
    beat(client, "n2")
    one, two = slots_on(client, "n1"), slots_on(client, "n2")
    canon = Resource.canon(Recipe("app"))
    first, second = queue(one, "app", None, canon), queue(one, "app", None, canon)
    assert [s.run_id for s in one.admit()] == [first]
    assert two.admit() == []
    assert [s.run_id for s in one.pending()] == [second]


def test_a_host_that_does_not_beat_admits_nothing_while_others_do(client: redis.Redis) -> None:
    """A host with no runs worker (it does not beat) leaves the runs to the nodes that do;
    with no node beating at all (one host, or a flushed broker) it admits as on one host."""
    alone = slots_on(client, "n9")
    run = queue(alone)
    beat(client, "n1", 0 + 1)
    assert alone.admit() == []
    client.delete(c.KEY_NODES)
    assert [s.run_id for s in alone.admit()] == [run]


def test_a_lost_node_is_left_out_of_the_comparison(client: redis.Redis) -> None:
    """n2 stopped beating longer ago than the TTL: it is lost, its free slots do not keep an
    unpinned run from n1, and the registry says lost."""
    beat(client, "n1", 1)
    beat(client, "n2", 3)
    seconds, _ = client.time()
    client.zadd(c.KEY_NODES, {"n2": seconds - TTL_S - 5})
    one = slots_on(client, "n1", 1)
    run = queue(one)
    assert [s.run_id for s in one.admit()] == [run]
    states = {n.node: n.state for n in nodes.read_nodes(client, TTL_S)}
    assert states == {"n1": "up", "n2": "lost"}


def test_the_registry_places_a_canonical_on_the_live_node_that_holds_it(
    client: redis.Redis,
) -> None:
    """``canonical_node`` names the live node that publishes the recipe's canonical; a lost
    node's canonical is not offered."""
    beat(client, "n1", canonicals=("alpha",))
    beat(client, "n2", canonicals=("beta", "gamma"))
    found = nodes.read_nodes(client, TTL_S)
    assert nodes.canonical_node(found, Recipe("beta")) == "n2"
    assert nodes.canonical_node(found, Recipe("alpha")) == "n1"
    assert nodes.canonical_node(found, Recipe("delta")) is None
    seconds, _ = client.time()
    client.zadd(c.KEY_NODES, {"n2": seconds - TTL_S - 5})
    assert nodes.canonical_node(nodes.read_nodes(client, TTL_S), Recipe("beta")) is None


@pytest.mark.parametrize("bad", ["", "N1", "-n", "n_1", "a" * 64, "n1;rm", "../x"])
def test_bad_node_names_are_refused(client: redis.Redis, bad: str) -> None:
    with pytest.raises(InvalidInput, match="node"):
        nodes.runs_queue(bad)
    with pytest.raises(InvalidInput, match="node"):
        Slots(client, 1, TTL_S, node=bad)
    with pytest.raises(InvalidInput, match="pin"):
        RunSpec(RunId(str(uuid.uuid4())), "cold", Recipe("app"), pin=bad)


def test_a_beat_refuses_what_it_cannot_publish(client: redis.Redis) -> None:
    with pytest.raises(InvalidInput, match="live app"):
        nodes.beat(client, "n1", 1, ["cold:xyz"], [], [])
    with pytest.raises(InvalidInput, match="worker"):
        nodes.beat(client, "n1", 1, [], [], ["a b"])
    assert client.zcard(c.KEY_NODES) == 0


def test_pin_and_node_survive_the_broker_and_json(client: redis.Redis) -> None:
    beat(client, "n2")
    two = slots_on(client, "n2")
    run = queue(two, "app", "n2")
    (admitted,) = two.admit()
    assert (admitted.pin, admitted.node) == ("n2", "n2")
    assert RunSpec.from_json(admitted.to_json()) == admitted
    # queued again (its first step never started): the node goes, the pin stays
    assert two.requeue(run, admitted.token)
    again = two.spec(run)
    assert again is not None and (again.pin, again.node) == ("n2", None)


def test_a_sweep_completed_on_one_host_counts_on_every_host(
    client: redis.Redis, tmp_path: Path
) -> None:
    """The last completed sweep is kept in the broker too: a host that did not run it sees it
    (the scheduled sweep's skip and the watchdog look from any host); its own file still
    counts when the broker lost it."""
    from ccci_tasks.state import sweeps

    host_a, host_b = tmp_path / "a", tmp_path / "b"
    assert sweeps.last_completed(host_b, client) is None
    sweeps.record_completed(host_a, RunId(str(uuid.uuid4())), "pass", client)
    seen_on_b = sweeps.last_completed(host_b, client)
    assert seen_on_b is not None and seen_on_b == sweeps.last_completed(host_a)
    assert sweeps.reference_time(host_b, client) == seen_on_b
    client.delete(c.KEY_SWEEP_LAST)
    assert sweeps.last_completed(host_b, client) is None
    assert sweeps.last_completed(host_a, client) == seen_on_b


def test_a_promotion_publishes_its_canonical_before_the_next_beat(client: redis.Redis) -> None:
    """``publish_canonical`` adds the recipe to what the node publishes at once (once); a node
    the registry does not know is left alone; the next beat rewrites the whole list."""
    beat(client, "n1", canonicals=("alpha",))
    nodes.publish_canonical(client, "n1", Recipe("beta"))
    nodes.publish_canonical(client, "n1", Recipe("beta"))
    nodes.publish_canonical(client, "n9", Recipe("beta"))
    found = {n.node: n for n in nodes.read_nodes(client, TTL_S)}
    assert set(found) == {"n1"} and found["n1"].canonicals == ("alpha", "beta")
    beat(client, "n1", canonicals=("alpha",))
    assert nodes.canonical_node(nodes.read_nodes(client, TTL_S), Recipe("beta")) is None
