"""Run admission (MAX_TESTS) and canonical exclusion against a real Redis."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from ccci_tasks import constants as c
from ccci_tasks.admission import KEY_EXPIRED, KEY_REAPING, Resource, RunSpec, Slots, keep_alive
from ccci_tasks.errors import BrokerError, InvalidInput
from ccci_tasks.naming import Recipe, Ref, RunId


class FakeClock:
    """A settable clock shared by the Slots under test."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def run(lane: str = "cold", recipe: str = "app", *resources: str,
        ref: str | None = None) -> RunSpec:
    return RunSpec(new_run_id(), lane, Recipe(recipe), ref=None if ref is None else Ref(ref),
                   resources=tuple(map(Resource.parse, resources or ("slot",))))


def new_run_id() -> RunId:
    return RunId(str(uuid.uuid4()))


def ids(specs: list[RunSpec]) -> list[str]:
    return [s.run_id for s in specs]


def tok(slots: Slots, run_id: RunId) -> int:
    spec = slots.spec(run_id)
    assert spec is not None
    return spec.token


@pytest.fixture
def client(quiet_redis_url: str) -> Iterator[redis.Redis]:
    """A client on a flushed test database no worker uses."""
    cli = redis.Redis.from_url(quiet_redis_url)
    yield cli
    cli.close()


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- FIFO and MAX_TESTS -------------------------------------------------------------------


def test_fifo_one_slot_admits_in_order(client: redis.Redis, clock: FakeClock) -> None:
    """With max 1, runs are admitted one at a time in enqueue order."""
    slots = Slots(client, max_tests=1, ttl_s=60, clock=clock)
    runs = [slots.enqueue(run(recipe=f"r{i}")) for i in range(4)]
    assert ids(slots.pending()) == ids(runs)
    for i, expected in enumerate(runs):
        assert ids(slots.admit()) == [expected.run_id]
        assert slots.admit() == []
        assert ids(slots.pending()) == ids(runs[i + 1:])
        assert slots.holds(expected.run_id)
        assert slots.release(expected.run_id, tok(slots, expected.run_id))
        assert not slots.holds(expected.run_id)
    assert slots.admit() == []
    assert slots.leases() == []


def test_two_slots_admit_two(client: redis.Redis, clock: FakeClock) -> None:
    """With max 2, the first two pending runs are admitted and the rest wait."""
    slots = Slots(client, max_tests=2, ttl_s=60, clock=clock)
    runs = [slots.enqueue(run()) for _ in range(5)]
    assert ids(slots.admit()) == ids(runs[:2])
    assert len(slots.leases()) == 2
    assert slots.admit() == []
    slots.release(runs[1].run_id)
    assert ids(slots.admit()) == [runs[2].run_id]
    assert sorted(lease.run_id for lease in slots.leases()) == sorted(
        [runs[0].run_id, runs[2].run_id])


def test_concurrent_admit_never_exceeds_max(quiet_redis_url: str, client: redis.Redis) -> None:
    """8 threads admitting and releasing never hold more than max leases, each run once."""
    max_tests, total = 3, 60
    seed = Slots(client, max_tests=max_tests, ttl_s=60)
    runs = [seed.enqueue(run()) for _ in range(total)]
    admitted: list[list[str]] = []
    record = threading.Lock()
    done = threading.Event()
    peak = {"leases": 0, "zcard": 0, "samples": 0}
    errors: list[BaseException] = []

    def sampler() -> None:
        cli = redis.Redis.from_url(quiet_redis_url)
        watcher = Slots(cli, max_tests=max_tests, ttl_s=60)
        try:
            while not done.is_set():
                peak["leases"] = max(peak["leases"], len(watcher.leases()))
                peak["zcard"] = max(peak["zcard"], int(cli.zcard(c.KEY_SLOTS)))
                peak["samples"] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            cli.close()

    def worker(barrier: threading.Barrier) -> None:
        cli = redis.Redis.from_url(quiet_redis_url)
        mine = Slots(cli, max_tests=max_tests, ttl_s=60)
        try:
            barrier.wait(timeout=10)
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                got = mine.admit()
                with record:
                    admitted.append(ids(got))
                    if sum(len(batch) for batch in admitted) >= total:
                        done.set()
                time.sleep(0.002)
                for spec in got:
                    assert mine.release(spec.run_id, spec.token)
        except BaseException as exc:
            errors.append(exc)
        finally:
            cli.close()

    barrier = threading.Barrier(8)
    threads = [threading.Thread(target=worker, args=(barrier,)) for _ in range(8)]
    watch = threading.Thread(target=sampler)
    watch.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    watch.join(timeout=10)
    assert not errors, errors
    every = [run_id for batch in admitted for run_id in batch]
    assert all(len(batch) <= max_tests for batch in admitted)
    assert Counter(every).most_common(1)[0][1] == 1, "a run was admitted twice"
    assert sorted(every) == sorted(ids(runs))
    assert 1 <= peak["leases"] <= max_tests
    assert peak["zcard"] <= max_tests
    assert peak["samples"] > 10, peak
    assert seed.pending() == []


# --- resources ----------------------------------------------------------------------------


def test_canonical_exclusion(client: redis.Redis, clock: FakeClock) -> None:
    """Two runs on one canonical never hold it at once; unrelated runs pass the waiter."""
    slots = Slots(client, max_tests=3, ttl_s=60, clock=clock)
    a = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    b = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    other = slots.enqueue(run("cold", "other"))
    assert ids(slots.admit()) == [a.run_id, other.run_id]
    assert ids(slots.pending()) == [b.run_id]
    assert slots.admit() == [], "B must wait for A although a slot is free"
    later = slots.enqueue(run("cold", "x", "slot", "canon:x"))
    assert ids(slots.admit()) == [later.run_id]
    assert slots.release(a.run_id)
    assert slots.release(other.run_id)
    assert ids(slots.admit()) == [b.run_id]


def test_canonical_waiter_keeps_fifo_place(client: redis.Redis, clock: FakeClock) -> None:
    """Among runs on one canonical the older goes first once the canonical frees."""
    slots = Slots(client, max_tests=4, ttl_s=60, clock=clock)
    first = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    waiters = [slots.enqueue(run("cold", "r", "slot", "canon:r")) for _ in range(3)]
    assert ids(slots.admit()) == [first.run_id]
    previous = first
    for waiter in waiters:
        slots.release(previous.run_id)
        assert ids(slots.admit()) == [waiter.run_id]
        previous = waiter


def test_infra_locks_shared_by_runs_exclusive_for_reconcile(
    client: redis.Redis, clock: FakeClock
) -> None:
    """Runs that depend on a live-warm app share it; its reconcile waits for them, and runs
    queued behind the reconcile wait for it; resources are taken all or none."""
    slots = Slots(client, max_tests=3, ttl_s=60, clock=clock)
    r1 = slots.enqueue(run("quick", "a", "slot", "canon:a", "infra:keycloak:shared"))
    r2 = slots.enqueue(run("cold", "b", "slot", "infra:keycloak:shared"))
    assert ids(slots.admit()) == [r1.run_id, r2.run_id]
    rec = slots.enqueue(run("reconcile", "keycloak", "infra:keycloak:excl"))
    traefik = slots.enqueue(run("reconcile", "traefik", "infra:traefik:excl"))
    assert ids(slots.admit()) == [traefik.run_id], "keycloak's reconcile waits for its runs"
    slots.release(r1.run_id)
    assert slots.admit() == []
    slots.release(r2.run_id)
    assert ids(slots.admit()) == [rec.run_id]
    r3 = slots.enqueue(run("cold", "c", "slot", "infra:keycloak:shared"))
    r4 = slots.enqueue(run("cold", "d"))
    assert ids(slots.admit()) == [r4.run_id], "a dependent run waits for the reconcile"
    slots.release(rec.run_id)
    assert ids(slots.admit()) == [r3.run_id]


def test_waiting_reconcile_is_not_starved_by_dependent_runs(
    client: redis.Redis, clock: FakeClock
) -> None:
    """A reconcile waiting for the runs that share its app keeps its place: runs that depend
    on the app and come after it wait behind it."""
    slots = Slots(client, max_tests=3, ttl_s=60, clock=clock)
    first = slots.enqueue(run("cold", "a", "slot", "infra:keycloak:shared"))
    assert ids(slots.admit()) == [first.run_id]
    rec = slots.enqueue(run("reconcile", "keycloak", "infra:keycloak:excl"))
    later = slots.enqueue(run("cold", "b", "slot", "infra:keycloak:shared"))
    other = slots.enqueue(run("cold", "c"))
    assert ids(slots.admit()) == [other.run_id], "the later dependent run waits its turn"
    slots.release(first.run_id)
    assert ids(slots.admit()) == [rec.run_id]
    slots.release(rec.run_id)
    assert ids(slots.admit()) == [later.run_id]


def test_all_or_none(client: redis.Redis, clock: FakeClock) -> None:
    """A run that needs a free slot and a busy canonical takes neither."""
    slots = Slots(client, max_tests=2, ttl_s=60, clock=clock)
    holder = slots.enqueue(run("cold", "r", "slot", "canon:r"))
    assert ids(slots.admit()) == [holder.run_id]
    waiter = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    free = slots.enqueue(run("cold", "s"))
    assert ids(slots.admit()) == [free.run_id]
    assert {x.run_id for x in slots.leases()} == {holder.run_id, free.run_id}
    assert ids(slots.pending()) == [waiter.run_id]


def test_unexplained_live_apps_count_against_max(client: redis.Redis, clock: FakeClock) -> None:
    """A live app no occupying run explains takes a slot (and its canonical) until it is
    reaped; an app its run explains does not count twice."""
    slots = Slots(client, max_tests=2, ttl_s=60, clock=clock)
    a = slots.enqueue(run("cold", "a"))
    assert ids(slots.admit()) == [a.run_id]
    b = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    mine = f"cold:{a.run_id[:6]}"
    assert slots.admit([mine, "cold:abcdef"]) == [], "the orphan takes the second slot"
    assert slots.admit([mine, "warm:r"]) == [], "a deployed, unheld canonical blocks it"
    assert ids(slots.admit([mine])) == [b.run_id]


# --- leases, tokens, fencing --------------------------------------------------------------


def test_tokens_only_grow_and_fence_renewals(client: redis.Redis, clock: FakeClock) -> None:
    """Each admission gets a larger token; a renewal with another token fails; a requeued
    and re-admitted run gets a new token, so the old one is fenced off; tokens keep growing
    after the keys are flushed."""
    slots = Slots(client, max_tests=1, ttl_s=60, clock=clock)
    a = slots.enqueue(run())
    (admitted,) = slots.admit()
    assert admitted.token > 0
    assert slots.renew(a.run_id, admitted.token)
    assert not slots.renew(a.run_id, admitted.token + 1)
    assert slots.requeue(a.run_id, admitted.token)
    assert ids(slots.pending()) == [a.run_id]
    (again,) = slots.admit()
    assert again.token > admitted.token
    assert not slots.renew(a.run_id, admitted.token), "the old token is fenced off"
    assert slots.renew(a.run_id, again.token)
    client.flushdb()
    assert not slots.renew(a.run_id, again.token), "a flushed lease is lost"
    clock.advance(0.01)  # the counter is floored at the clock in ms
    b = slots.enqueue(run())
    (after,) = slots.admit()
    assert after.run_id == b.run_id and after.token > again.token


def test_ttl_starts_at_first_step(client: redis.Redis, clock: FakeClock) -> None:
    """An admitted run keeps its lease for the start grace until its first step renews it;
    from then on the TTL applies."""
    slots = Slots(client, max_tests=1, ttl_s=10, clock=clock, start_grace_s=100)
    a = slots.enqueue(run())
    (spec,) = slots.admit()
    clock.advance(50)  # waiting in the queue behind another run's step
    assert slots.holds(a.run_id)
    assert slots.reap_expired() == []
    assert slots.renew(a.run_id, spec.token)  # first step starts
    clock.advance(9)
    assert slots.holds(a.run_id)
    clock.advance(2)
    assert not slots.holds(a.run_id)
    assert ids(slots.reap_expired()) == [a.run_id]


def test_never_started_run_is_queued_again(client: redis.Redis, clock: FakeClock) -> None:
    """A run admitted whose first step never started (its worker was down past the grace)
    is put back first in line, not reaped; its old token is fenced off."""
    slots = Slots(client, max_tests=1, ttl_s=10, clock=clock, start_grace_s=30)
    a, b = slots.enqueue(run()), slots.enqueue(run())
    (spec,) = slots.admit()
    clock.advance(31)
    assert slots.reap_expired() == []
    assert slots.reaping() == []
    assert ids(slots.pending()) == [a.run_id, b.run_id]
    (again,) = slots.admit()
    assert again.run_id == a.run_id and again.token > spec.token
    assert not slots.renew(a.run_id, spec.token)
    assert slots.renew(a.run_id, again.token)


def test_server_clock_is_used_by_default(client: redis.Redis) -> None:
    """Without an injected clock, leases are timed by the Redis server's clock."""
    slots = Slots(client, max_tests=1, ttl_s=30)
    now = slots.now()
    assert abs(now - time.time()) < 5
    a = slots.enqueue(run())
    (spec,) = slots.admit()
    assert slots.renew(a.run_id, spec.token)
    (lease,) = slots.leases()
    assert now + 25 < lease.expires_at < now + 35


def test_expired_lease_dropped_and_slot_freed(client: redis.Redis, clock: FakeClock) -> None:
    """A lease not renewed past ttl is lost for good; its slot goes to the next run only
    once the janitor has reaped the run and cleaned up after it (its app may still be live)."""
    slots = Slots(client, max_tests=1, ttl_s=10, clock=clock)
    a, b = slots.enqueue(run()), slots.enqueue(run())
    (spec,) = slots.admit()
    assert slots.renew(a.run_id, spec.token)
    clock.advance(6)
    assert slots.renew(a.run_id, spec.token)
    clock.advance(6)  # 12 s after the first renewal, 6 s after the second: still live
    assert slots.holds(a.run_id)
    assert slots.admit() == []
    clock.advance(4.5)
    assert not slots.holds(a.run_id)
    assert slots.admit() == [], "an expired run occupies its slot until it is reaped"
    assert not slots.renew(a.run_id, spec.token)
    assert client.zscore(c.KEY_SLOTS, a.run_id) is None, "renew must not re-create a lease"
    assert not slots.release(a.run_id, spec.token)
    assert ids(slots.reap_expired()) == [a.run_id]
    assert slots.reap_expired() == []
    assert slots.spec(a.run_id) is not None
    assert [run_id for run_id, _ in slots.reaping()] == [a.run_id]
    assert slots.admit() == [], "a run being reaped still occupies its slot"
    assert slots.finish_reap(a.run_id)
    assert not slots.finish_reap(a.run_id)
    assert slots.spec(a.run_id) is None and slots.reaping() == []
    assert ids(slots.admit()) == [b.run_id]
    assert [lease.run_id for lease in slots.leases()] == [b.run_id]


def test_reaped_run_keeps_its_canonical(client: redis.Redis, clock: FakeClock) -> None:
    """The canonical of a reaped run stays held until finish_reap, so no run reattaches it
    before the janitor cleaned up; a late release by the run itself changes nothing."""
    slots = Slots(client, max_tests=2, ttl_s=10, clock=clock, start_grace_s=10)
    a = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    b = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    (spec,) = slots.admit()
    assert slots.renew(a.run_id, spec.token)
    clock.advance(10)  # expiry == now counts as expired
    assert ids(slots.reap_expired()) == [a.run_id]
    assert not slots.renew(a.run_id, spec.token)
    assert client.zcard(c.KEY_SLOTS) == 0
    assert slots.admit() == [], "the canonical is the janitor's until it has cleaned up"
    assert not slots.release(a.run_id, spec.token)
    assert slots.finish_reap(a.run_id)
    assert ids(slots.admit()) == [b.run_id]


def test_janitor_hold(client: redis.Redis, clock: FakeClock) -> None:
    """While the janitor holds a slot and a canonical, runs needing them wait."""
    slots = Slots(client, max_tests=1, ttl_s=10, clock=clock)
    hold = new_run_id()
    slots.hold(hold, Recipe("r"), [Resource.slot(), Resource.canon("r")])
    a = slots.enqueue(run("quick", "r", "slot", "canon:r"))
    assert slots.admit() == []
    assert [x.state for x in slots.occupying()] == ["reaping"]
    assert slots.finish_reap(hold)
    assert ids(slots.admit()) == [a.run_id]


def test_reap_expired_exactly_once_concurrently(quiet_redis_url: str, clock: FakeClock) -> None:
    """Two janitors reaping (and admitting) at once get every expired run exactly once."""
    for _round in range(5):
        cli = redis.Redis.from_url(quiet_redis_url)
        cli.delete(c.KEY_SLOTS, KEY_EXPIRED, KEY_REAPING, c.KEY_PENDING)
        slots = Slots(cli, max_tests=20, ttl_s=10, clock=clock, start_grace_s=10)
        runs = [slots.enqueue(run()) for _ in range(20)]
        for spec in slots.admit():
            assert slots.renew(spec.run_id, spec.token)
        clock.advance(11)
        results: list[list[str]] = [[], []]
        barrier = threading.Barrier(3)

        def janitor(slot: int, barrier: threading.Barrier = barrier,
                    results: list[list[str]] = results) -> None:
            cli = redis.Redis.from_url(quiet_redis_url)
            own = Slots(cli, max_tests=20, ttl_s=10, clock=clock)
            barrier.wait(timeout=10)
            for _ in range(20):
                results[slot] += ids(own.reap_expired())
            cli.close()

        def admitter(barrier: threading.Barrier = barrier) -> None:
            cli = redis.Redis.from_url(quiet_redis_url)
            own = Slots(cli, max_tests=20, ttl_s=10, clock=clock)
            barrier.wait(timeout=10)
            for _ in range(20):
                own.admit()
            cli.close()

        threads = [threading.Thread(target=janitor, args=(0,)),
                   threading.Thread(target=janitor, args=(1,)),
                   threading.Thread(target=admitter)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not set(results[0]) & set(results[1])
        assert sorted(results[0] + results[1]) == sorted(ids(runs))
        assert slots.reap_expired() == []
        cli.close()


# --- keep_alive ---------------------------------------------------------------------------


def test_keep_alive_renews(client: redis.Redis) -> None:
    """keep_alive keeps a short lease alive past several ttls and stops on exit."""
    slots = Slots(client, max_tests=1, ttl_s=0.6)
    a = slots.enqueue(run())
    (spec,) = slots.admit()
    assert slots.renew(a.run_id, spec.token)
    with keep_alive(slots, a.run_id, spec.token) as lost:
        time.sleep(1.5)
        assert slots.holds(a.run_id)
        assert not lost.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("ccci-lease-")]
    deadline = time.monotonic() + 3
    while slots.holds(a.run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not slots.holds(a.run_id), "the lease must expire once keep_alive stopped"
    assert ids(slots.reap_expired()) == [a.run_id]


def test_keep_alive_reports_a_lost_lease(client: redis.Redis) -> None:
    """When the lease is lost (here: flushed), keep_alive stops renewing, never revives it,
    and calls on_lost once."""
    slots = Slots(client, max_tests=1, ttl_s=0.6)
    a = slots.enqueue(run())
    (spec,) = slots.admit()
    called: list[str] = []
    with keep_alive(slots, a.run_id, spec.token, on_lost=lambda: called.append("x")) as lost:
        client.flushdb()
        assert lost.wait(3)
        time.sleep(0.5)
    assert called == ["x"]
    assert not slots.holds(a.run_id)


def test_keep_alive_interval_checked(client: redis.Redis) -> None:
    """An interval at or above the ttl is refused: the lease would lapse between renewals."""
    slots = Slots(client, max_tests=1, ttl_s=5)
    run_id = new_run_id()
    with pytest.raises(InvalidInput, match="below the lease ttl"), \
            keep_alive(slots, run_id, 1, 5):
        pass


# --- specs, validation, bookkeeping -------------------------------------------------------


def test_spec_json_roundtrip() -> None:
    """A spec survives to_json/from_json unchanged; version tags are refs."""
    spec = RunSpec(new_run_id(), "quick", Recipe("keycloak"), ref=Ref("pr/12"),
                   resources=(Resource.slot(), Resource.canon("keycloak"),
                              Resource.infra("keycloak", exclusive=False)),
                   parent=new_run_id(), enqueued_at=12.5, token=3)
    assert RunSpec.from_json(spec.to_json()) == spec
    assert spec.canonical == "keycloak"
    versioned = RunSpec(new_run_id(), "cold", Recipe("keycloak"), ref=Ref("10.1.0+26.0.5"))
    assert RunSpec.from_json(versioned.to_json()) == versioned


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"run_id": "not-a-uuid"}, "run id 'not-a-uuid' is invalid"),
        ({"run_id": str(uuid.uuid4()).upper()}, "lowercase UUID"),
        ({"run_id": "../../etc"}, "run id"),
        ({"lane": "Fast!"}, "lane 'Fast!'"),
        ({"recipe": "../x"}, "recipe name"),
        ({"ref": "--upload-pack=x"}, "git ref"),
        ({"resources": ("slot",)}, "resource 'slot' of run .* is not a Resource"),
        ({"enqueued_at": float("nan")}, "enqueued_at"),
        ({"parent": "x"}, "run id 'x'"),
    ],
)
def test_bad_spec_rejected(kwargs: dict[str, object], match: str) -> None:
    """Bad run ids and spec fields raise InvalidInput naming the value."""
    fields: dict[str, object] = {"run_id": str(uuid.uuid4()), "lane": "cold", "recipe": "app"}
    fields.update(kwargs)
    with pytest.raises(InvalidInput, match=match):
        RunSpec(**fields)  # type: ignore[arg-type]


def test_resource_wire_form() -> None:
    """Each resource's wire form is exactly what run specs in Redis and intent records on
    disk carry; parse gives the same value back; the key ignores the sharing."""
    cases = [
        (Resource.slot(), "slot", "slot"),
        (Resource.sweep(), "sweep", "sweep"),
        (Resource.canon("custom-html"), "canon:custom-html", "canon:custom-html"),
        (Resource.infra("keycloak", exclusive=False), "infra:keycloak:shared", "infra:keycloak"),
        (Resource.infra("keycloak", exclusive=True), "infra:keycloak:excl", "infra:keycloak"),
    ]
    for resource, wire, key in cases:
        assert (str(resource), resource.key) == (wire, key)
        assert Resource.parse(wire) == resource
    assert Resource.from_key("canon:custom-html") == Resource.canon("custom-html")
    assert Resource.from_key("infra:keycloak") == Resource.infra("keycloak", exclusive=True)
    spec = run("quick", "keycloak", "slot", "canon:keycloak", "infra:keycloak:shared")
    assert spec.holds_slot and spec.canonical == "keycloak"
    assert not run("reconcile", "keycloak", "infra:keycloak:excl").holds_slot


def test_stored_spec_carries_the_wire_form(client: redis.Redis, clock: FakeClock) -> None:
    """A spec in Redis lists its resources in their wire form, comma-separated."""
    slots = Slots(client, max_tests=1, ttl_s=5, clock=clock)
    spec = slots.enqueue(run("quick", "r", "slot", "canon:r", "infra:keycloak:shared"))
    stored = client.hget(c.KEY_RUN_SPEC + spec.run_id, "resources")
    assert stored == b"slot,canon:r,infra:keycloak:shared"
    assert slots.spec(spec.run_id) == spec


@pytest.mark.parametrize(
    "wire",
    ["canon:Bad Name", "gpu", "slot:x", "canon:", "infra:keycloak", "canon:r:excl",
     "infra:keycloak:open", "sweep,slot", "canon:../x", 7],
)
def test_bad_resource_rejected(wire: object) -> None:
    """A bad wire form is refused naming the value, parsed alone or in a JSON run spec."""
    with pytest.raises(InvalidInput, match=re.escape(f"resource {wire!r} is invalid")):
        Resource.parse(wire)
    data = {"run_id": str(uuid.uuid4()), "lane": "cold", "recipe": "app", "resources": [wire]}
    with pytest.raises(InvalidInput, match=re.escape(f"resource {wire!r} is invalid")):
        RunSpec.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Resource.canon("Bad Name"), "resource Resource"),
        (lambda: Resource.infra("../x", exclusive=False), "resource Resource"),
        (lambda: Resource("canon", "r", exclusive=False), "shared|excl"),
        (lambda: Resource("slot", "x"), "expected slot, sweep"),
        (lambda: Resource.from_key("slot"), "resource key 'slot'"),
        (lambda: Resource.from_key("infra:Bad"), "resource Resource"),
    ],
)
def test_bad_resource_value_rejected(make: Any, match: str) -> None:
    """The constructors check the recipe or app name; only an infra app may be shared."""
    with pytest.raises(InvalidInput, match=match):
        make()


def test_bad_json_and_run_ids_rejected(client: redis.Redis) -> None:
    """from_json and every run-id argument reject bad input before touching Redis."""
    with pytest.raises(InvalidInput, match="not JSON"):
        RunSpec.from_json("{nope")
    with pytest.raises(InvalidInput, match="unknown fields"):
        RunSpec.from_json('{"run_id": "x", "lane": "cold", "recipe": "a", "evil": 1}')
    with pytest.raises(InvalidInput, match="missing fields"):
        RunSpec.from_json('{"lane": "cold"}')
    slots = Slots(client, max_tests=1, ttl_s=5)
    for method in (lambda r: slots.renew(r, 1), slots.release, slots.cancel, slots.spec,
                   slots.forget, slots.finish_reap):
        with pytest.raises(InvalidInput, match="run id"):
            method(RunId("x*"))  # a Slots method takes a parsed run id
    with pytest.raises(InvalidInput, match="live app"):
        slots.admit(["warm:../x"])
    with pytest.raises(InvalidInput, match="max_tests"):
        Slots(client, max_tests=0, ttl_s=5)
    assert client.keys("ccci:*") == []


def test_enqueue_idempotent(client: redis.Redis, clock: FakeClock) -> None:
    """Enqueueing the same run twice keeps one FIFO entry; a different spec is refused."""
    slots = Slots(client, max_tests=1, ttl_s=5, clock=clock)
    spec = run("quick", "r", "slot", "canon:r")
    first = slots.enqueue(spec)
    assert first.enqueued_at == clock.now
    clock.advance(3)
    assert slots.enqueue(spec) == first
    assert ids(slots.pending()) == [spec.run_id]
    with pytest.raises(InvalidInput, match="different spec"):
        slots.enqueue(RunSpec(spec.run_id, "cold", Recipe("r")))
    assert ids(slots.admit()) == [spec.run_id]
    assert slots.enqueue(spec).run_id == spec.run_id
    assert slots.pending() == []


def test_cancel_forget_and_leases(client: redis.Redis, clock: FakeClock) -> None:
    """cancel removes a pending run, forget drops its spec, leases() lists live leases."""
    slots = Slots(client, max_tests=1, ttl_s=30, clock=clock, start_grace_s=30)
    a, b, d = slots.enqueue(run()), slots.enqueue(run()), slots.enqueue(run())
    assert slots.cancel(b.run_id)
    assert not slots.cancel(b.run_id)
    assert slots.spec(b.run_id) == b
    slots.forget(b.run_id)
    assert slots.spec(b.run_id) is None
    slots.forget(d.run_id)  # forgotten while pending: admit drops the orphan entry
    (spec,) = slots.admit()
    assert spec.run_id == a.run_id
    (lease,) = slots.leases()
    assert (lease.run_id, lease.expires_at, lease.spec, lease.started) == (
        a.run_id, clock.now + 30, spec, False)
    assert not slots.release(b.run_id)
    assert not slots.release(a.run_id, spec.token + 1), "a stale token releases nothing"
    assert slots.release(a.run_id, spec.token)
    assert not slots.release(a.run_id)
    assert slots.admit() == []
    assert slots.pending() == []
    assert slots.spec(a.run_id) == a


# --- broker errors ------------------------------------------------------------------------


def test_redis_down_is_broker_error() -> None:
    """A dead Redis raises BrokerError naming host:port and the operation, not the password."""
    port = free_port()
    cli = redis.Redis(host="127.0.0.1", port=port, password="s3cret-pw",
                      socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    slots = Slots(cli, max_tests=1, ttl_s=5)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("admitting", slots.admit),
        ("enqueueing", lambda: slots.enqueue(run())),
        ("listing occupying runs", slots.leases),
        ("reaping", slots.reap_expired),
    ]
    for what, call in calls:
        with pytest.raises(BrokerError) as info:
            call()
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message
        assert what in message
        assert "s3cret-pw" not in message
    cli.close()


def test_from_settings_hides_password() -> None:
    """Slots.from_settings uses the broker URL; its errors never show the URL's password."""
    from ccci_tasks.config import Settings

    port = free_port()
    settings = Settings(broker_url=SecretStr(f"redis://:hunter2pw@127.0.0.1:{port}/3"),
                        max_tests=2, lease_ttl_s=30)
    slots = Slots.from_settings(settings)
    assert (slots.max_tests, slots.ttl_s) == (2, 30.0)
    with pytest.raises(BrokerError, match=f"127.0.0.1:{port}/3") as info:
        slots.renew(new_run_id(), 1)
    assert "hunter2pw" not in str(info.value)


# --- ends and holders ---------------------------------------------------------------------


def test_end_releases_and_forgets_in_one_step_only_with_the_live_token(
    client: redis.Redis, clock: FakeClock
) -> None:
    """A stale end (old token, or after the lease expired and the janitor took the run)
    frees nothing and forgets nothing; the end with the live token does both at once. The
    holder a renewal names is on the lease, and its node readable."""
    slots = Slots(client, max_tests=1, ttl_s=10, clock=clock)
    first = slots.enqueue(run())
    slots.admit()
    token = tok(slots, first.run_id)
    assert slots.renew(first.run_id, token, "n1 123 456")
    lease = slots.occupying()[0]
    assert lease.holder == "n1 123 456" and lease.node == "n1"
    assert not slots.end(first.run_id, token - 1)
    assert slots.spec(first.run_id) is not None and slots.holds(first.run_id, token)
    clock.advance(11)
    assert slots.reap_expired() and not slots.end(first.run_id, token)
    assert slots.spec(first.run_id) is not None, "a stale end forgot a run being reaped"
    assert [x.state for x in slots.occupying()] == ["reaping"]
    assert slots.finish_reap(first.run_id)
    second = slots.enqueue(run())
    slots.admit()
    assert slots.end(second.run_id, tok(slots, second.run_id))
    assert slots.spec(second.run_id) is None and slots.occupying() == []
