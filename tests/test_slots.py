"""Run admission (MAX_TESTS) and canonical exclusion against a real Redis."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from ccci_tasks import constants as c
from ccci_tasks.errors import BrokerError, InvalidInput
from ccci_tasks.slots import KEY_EXPIRED, KEY_REAPING, Lease, RunSpec, Slots


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


def run(lane: str = "cold", recipe: str = "app", canonical: str | None = None,
        ref: str | None = None) -> RunSpec:
    return RunSpec(str(uuid.uuid4()), lane, recipe, ref=ref, canonical=canonical)


def ids(specs: list[RunSpec]) -> list[str]:
    return [s.run_id for s in specs]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the flushed test Redis."""
    cli = redis.Redis.from_url(redis_url)
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
        assert slots.release(expected.run_id)
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


def test_concurrent_admit_never_exceeds_max(redis_url: str, client: redis.Redis) -> None:
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
        cli = redis.Redis.from_url(redis_url)
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
        cli = redis.Redis.from_url(redis_url)
        mine = Slots(cli, max_tests=max_tests, ttl_s=60)
        try:
            barrier.wait(timeout=10)
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                got = ids(mine.admit())
                with record:
                    admitted.append(got)
                    if sum(len(batch) for batch in admitted) >= total:
                        done.set()
                time.sleep(0.002)
                for run_id in got:
                    assert mine.release(run_id)
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


# --- canonical exclusion ------------------------------------------------------------------


def test_canonical_exclusion(client: redis.Redis, clock: FakeClock) -> None:
    """Two runs on one canonical never hold slots at once; unrelated runs pass the waiter."""
    slots = Slots(client, max_tests=3, ttl_s=60, clock=clock)
    a = slots.enqueue(run("quick", "r", canonical="r"))
    b = slots.enqueue(run("quick", "r", canonical="r"))
    cold = slots.enqueue(run("cold", "other"))
    assert ids(slots.admit()) == [a.run_id, cold.run_id]
    assert ids(slots.pending()) == [b.run_id]
    assert slots.admit() == [], "B must wait for A although a slot is free"
    assert client.get(c.KEY_CANON_LOCK + "r") == a.run_id.encode()
    later = slots.enqueue(run("promote", "x", canonical="x"))
    assert ids(slots.admit()) == [later.run_id]
    assert slots.release(a.run_id)
    assert client.get(c.KEY_CANON_LOCK + "r") is None
    assert slots.release(cold.run_id)
    assert ids(slots.admit()) == [b.run_id]
    assert client.get(c.KEY_CANON_LOCK + "r") == b.run_id.encode()


def test_canonical_waiter_keeps_fifo_place(client: redis.Redis, clock: FakeClock) -> None:
    """Among runs on one canonical the older goes first once the canonical frees."""
    slots = Slots(client, max_tests=4, ttl_s=60, clock=clock)
    first = slots.enqueue(run("quick", "r", canonical="r"))
    waiters = [slots.enqueue(run("promote", "r", canonical="r")) for _ in range(3)]
    assert ids(slots.admit()) == [first.run_id]
    previous = first
    for waiter in waiters:
        slots.release(previous.run_id)
        assert ids(slots.admit()) == [waiter.run_id]
        previous = waiter


# --- expiry -------------------------------------------------------------------------------


def test_expired_lease_dropped_and_slot_freed(client: redis.Redis, clock: FakeClock) -> None:
    """A lease not renewed past ttl is dropped; its slot goes to the next run only once the
    janitor has reaped the run and cleaned up after it (its app may still be live)."""
    slots = Slots(client, max_tests=1, ttl_s=10, clock=clock)
    a, b = slots.enqueue(run()), slots.enqueue(run())
    assert ids(slots.admit()) == [a.run_id]
    clock.advance(6)
    assert slots.renew(a.run_id)
    clock.advance(6)  # 12 s after admission, 6 s after the renewal: still live
    assert slots.holds(a.run_id)
    assert slots.admit() == []
    clock.advance(4.5)
    assert not slots.holds(a.run_id)
    assert slots.admit() == [], "an expired run occupies its slot until it is reaped"
    assert not slots.renew(a.run_id)
    assert client.zscore(c.KEY_SLOTS, a.run_id) is None, "renew must not re-create a lease"
    assert not slots.release(a.run_id)
    assert ids(slots.reap_expired()) == [a.run_id]
    assert slots.reap_expired() == []
    assert slots.spec(a.run_id) == a
    assert [run_id for run_id, _ in slots.reaping()] == [a.run_id]
    assert slots.admit() == [], "a run being reaped still occupies its slot"
    assert slots.finish_reap(a.run_id)
    assert not slots.finish_reap(a.run_id)
    assert slots.spec(a.run_id) is None and slots.reaping() == []
    assert ids(slots.admit()) == [b.run_id]
    assert [lease.run_id for lease in slots.leases()] == [b.run_id]


def test_reap_expired_without_admit(client: redis.Redis, clock: FakeClock) -> None:
    """reap_expired pops leases past expiry itself and returns them once; the canonical
    stays held until finish_reap, so no run reattaches it before the janitor cleaned up."""
    slots = Slots(client, max_tests=2, ttl_s=10, clock=clock)
    a = slots.enqueue(run("quick", "r", canonical="r"))
    b = slots.enqueue(run("quick", "r", canonical="r"))
    assert ids(slots.admit()) == [a.run_id]
    clock.advance(10)  # expiry == now counts as expired
    assert ids(slots.reap_expired()) == [a.run_id]
    assert slots.reap_expired() == []
    assert not slots.renew(a.run_id)
    assert client.zcard(c.KEY_SLOTS) == 0
    assert slots.admit() == [], "the canonical is the janitor's until it has cleaned up"
    assert not slots.release(a.run_id)  # a late release by the run itself changes nothing
    assert slots.admit() == []
    assert slots.finish_reap(a.run_id)
    assert client.get(c.KEY_CANON_LOCK + "r") is None
    assert ids(slots.admit()) == [b.run_id]


def test_reap_expired_exactly_once_concurrently(redis_url: str, clock: FakeClock) -> None:
    """Two janitors reaping (and admitting) at once get every expired run exactly once."""
    for _round in range(5):
        cli = redis.Redis.from_url(redis_url)
        cli.delete(c.KEY_SLOTS, KEY_EXPIRED, KEY_REAPING, c.KEY_PENDING)
        slots = Slots(cli, max_tests=20, ttl_s=10, clock=clock)
        runs = [slots.enqueue(run()) for _ in range(20)]
        assert len(slots.admit()) == 20
        clock.advance(11)
        results: list[list[str]] = [[], []]
        barrier = threading.Barrier(3)

        def janitor(slot: int, barrier: threading.Barrier = barrier,
                    results: list[list[str]] = results) -> None:
            cli = redis.Redis.from_url(redis_url)
            own = Slots(cli, max_tests=20, ttl_s=10, clock=clock)
            barrier.wait(timeout=10)
            for _ in range(20):
                results[slot] += ids(own.reap_expired())
            cli.close()

        def admitter(barrier: threading.Barrier = barrier) -> None:
            cli = redis.Redis.from_url(redis_url)
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
    assert ids(slots.admit()) == [a.run_id]
    with slots.keep_alive(a.run_id):
        time.sleep(1.5)
        assert slots.holds(a.run_id)
    assert not [t for t in threading.enumerate() if t.name.startswith("ccci-lease-")]
    deadline = time.monotonic() + 3
    while slots.holds(a.run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not slots.holds(a.run_id), "the lease must expire once keep_alive stopped"
    assert ids(slots.reap_expired()) == [a.run_id]


def test_keep_alive_interval_checked(client: redis.Redis) -> None:
    """An interval at or above the ttl is refused: the lease would lapse between renewals."""
    slots = Slots(client, max_tests=1, ttl_s=5)
    run_id = str(uuid.uuid4())
    with pytest.raises(InvalidInput, match="below the lease ttl"), slots.keep_alive(run_id, 5):
        pass


# --- specs, validation, bookkeeping -------------------------------------------------------


def test_spec_json_roundtrip() -> None:
    """A spec survives to_json/from_json unchanged."""
    spec = RunSpec(str(uuid.uuid4()), "quick", "keycloak", ref="pr/12", canonical="keycloak",
                   enqueued_at=12.5)
    assert RunSpec.from_json(spec.to_json()) == spec
    versioned = RunSpec(str(uuid.uuid4()), "promote", "keycloak", ref="10.1.0+26.0.5")
    assert RunSpec.from_json(versioned.to_json()) == versioned


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"run_id": "not-a-uuid"}, "run_id 'not-a-uuid' is invalid"),
        ({"run_id": str(uuid.uuid4()).upper()}, "lowercase uuid4"),
        ({"run_id": str(uuid.uuid1())}, "uuid4"),
        ({"run_id": "../../etc"}, "run_id"),
        ({"lane": "fast"}, "lane 'fast'"),
        ({"recipe": "../x"}, "recipe name"),
        ({"ref": "--upload-pack=x"}, "git ref"),
        ({"canonical": "Bad Name"}, "recipe name"),
        ({"enqueued_at": float("nan")}, "enqueued_at"),
    ],
)
def test_bad_spec_rejected(kwargs: dict[str, object], match: str) -> None:
    """Bad run ids and spec fields raise InvalidInput naming the value."""
    fields: dict[str, object] = {"run_id": str(uuid.uuid4()), "lane": "cold", "recipe": "app"}
    fields.update(kwargs)
    with pytest.raises(InvalidInput, match=match):
        RunSpec(**fields)  # type: ignore[arg-type]


def test_bad_json_and_run_ids_rejected(client: redis.Redis) -> None:
    """from_json and every run-id argument reject bad input before touching Redis."""
    with pytest.raises(InvalidInput, match="not JSON"):
        RunSpec.from_json("{nope")
    with pytest.raises(InvalidInput, match="unknown fields"):
        RunSpec.from_json('{"run_id": "x", "lane": "cold", "recipe": "a", "evil": 1}')
    with pytest.raises(InvalidInput, match="missing fields"):
        RunSpec.from_json('{"lane": "cold"}')
    slots = Slots(client, max_tests=1, ttl_s=5)
    for method in (slots.renew, slots.release, slots.holds, slots.cancel, slots.spec,
                   slots.forget):
        with pytest.raises(InvalidInput, match="run_id"):
            method("x*")
    with pytest.raises(InvalidInput, match="max_tests"):
        Slots(client, max_tests=0, ttl_s=5)
    assert client.keys("ccci:*") == []


def test_enqueue_idempotent(client: redis.Redis, clock: FakeClock) -> None:
    """Enqueueing the same run twice keeps one FIFO entry; a different spec is refused."""
    slots = Slots(client, max_tests=1, ttl_s=5, clock=clock)
    spec = run("quick", "r", canonical="r")
    first = slots.enqueue(spec)
    assert first.enqueued_at == clock.now
    clock.advance(3)
    assert slots.enqueue(spec) == first
    assert ids(slots.pending()) == [spec.run_id]
    with pytest.raises(InvalidInput, match="different spec"):
        slots.enqueue(RunSpec(spec.run_id, "cold", "r"))
    assert ids(slots.admit()) == [spec.run_id]
    assert slots.enqueue(spec) == first
    assert slots.pending() == []


def test_cancel_forget_and_leases(client: redis.Redis, clock: FakeClock) -> None:
    """cancel removes a pending run, forget drops its spec, leases() lists live leases."""
    slots = Slots(client, max_tests=1, ttl_s=30, clock=clock)
    a, b, d = slots.enqueue(run()), slots.enqueue(run()), slots.enqueue(run())
    assert slots.cancel(b.run_id)
    assert not slots.cancel(b.run_id)
    assert slots.spec(b.run_id) == b
    slots.forget(b.run_id)
    assert slots.spec(b.run_id) is None
    slots.forget(d.run_id)  # forgotten while pending: admit drops the orphan entry
    assert ids(slots.admit()) == [a.run_id]
    assert slots.leases() == [Lease(a.run_id, clock.now + 30, a)]
    assert not slots.release(b.run_id)
    assert slots.release(a.run_id)
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
    calls = [
        ("admitting", slots.admit),
        ("enqueueing", lambda: slots.enqueue(run())),
        ("listing leases", slots.leases),
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
        slots.renew(str(uuid.uuid4()))
    assert "hunter2pw" not in str(info.value)
