"""Run slots under stress: MAX_TESTS=2, and a runs worker SIGKILLed in the middle of a run.

These tests start their own worker processes (and beat, for the janitor), so the session
workers are paused meanwhile: two runs workers with different MAX_TESTS must not share a queue.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import TEST_ENV, Workers, flush_redis, remove_ccci_objects, reports_at, start_workers
from test_lanes import RECIPE, _services, _volumes, _wait, _wipe

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _tag_sha(recipes: Path, tag: str) -> str:
    return subprocess.run(["git", "-C", str(recipes / RECIPE), "rev-parse", f"{tag}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def own_workers(workers: Workers, swarm: DockerClient, example_recipes: Path,
                redis_server: str) -> Iterator[Callable[..., Workers]]:
    """A factory of private worker sets; the session workers are paused meanwhile."""
    from ccci_tasks.config import get_settings

    workers.stop()
    started: list[Workers] = []

    def make(name: str, roles: tuple[str, ...], **env: str) -> Workers:
        flush_redis(redis_server)
        remove_ccci_objects(swarm)
        _wipe(Path(TEST_ENV["CCCI_STATE_DIR"]))
        get_settings.cache_clear()
        own = start_workers(name, roles, **env)
        started.append(own)
        return own

    try:
        yield make
    finally:
        for own in started:
            own.stop()
        remove_ccci_objects(swarm)
        flush_redis(redis_server)
        workers.restart_all()


def _watch_live(swarm: DockerClient, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        stacks = {s.attrs["Spec"]["Labels"].get("com.docker.stack.namespace")
                  for s in _services(swarm)}
        seen.append(len(stacks))
        time.sleep(0.1)


def test_max_tests_two_never_more_than_two_live(
    own_workers: Callable[..., Workers], swarm: DockerClient, example_recipes: Path
) -> None:
    """With MAX_TESTS=2 and four cold runs enqueued at once, never more than two apps are
    live, and all four finish green."""
    from ccci_tasks.tasks import cold_run

    own_workers("m2", ("runs", "infra", "alerts"), CCCI_MAX_TESTS="2")
    sha = _tag_sha(example_recipes, "1.1.0+1.1")
    seen: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_live, args=(swarm, stop, seen), daemon=True)
    watcher.start()
    try:
        reports = [_wait(r.id) for r in [cold_run.delay(RECIPE, sha) for _ in range(4)]]
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert [r.verdict for r in reports] == ["pass"] * 4, [r.reason for r in reports]
    assert max(seen) <= 2
    assert max(seen) == 2, "MAX_TESTS=2 never ran two apps at once"


def test_sigkilled_runs_worker_is_reaped_and_the_queue_moves_on(
    own_workers: Callable[..., Workers], swarm: DockerClient, example_recipes: Path
) -> None:
    """SIGKILL the runs worker mid cold run and restart it: within lease TTL + janitor
    interval the cold app and its volumes are gone, the slot is free, and the next queued
    run goes ahead, never while the dead run's app is still live."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.config import get_settings
    from ccci_tasks.lanes.model import run_hex
    from ccci_tasks.tasks import cold_run

    own = own_workers("crash", ("runs", "infra", "alerts", "beat"))
    sha = _tag_sha(example_recipes, "1.1.0+1.1")
    seen: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_live, args=(swarm, stop, seen), daemon=True)
    watcher.start()
    first = cold_run.delay(RECIPE, sha).id
    second = cold_run.delay(RECIPE, sha).id
    hexid = run_hex(first)
    deadline = time.monotonic() + 120
    while not [s for s in _services(swarm, "cold")
               if s.attrs["Spec"]["Labels"].get("ccci.run") == hexid]:
        assert time.monotonic() < deadline, "the first run never deployed its cold app"
        time.sleep(0.2)
    own.kill("runs")
    killed_at = time.monotonic()
    own.start("runs")
    own.wait_ready(("runs",))
    settings = get_settings()
    # R9.5: the lease and a janitor round are fixed waits; the removal itself takes a few
    # seconds (2-6 s) on an idle machine, which the bound allows ten times over.
    limit = settings.lease_ttl_s + settings.janitor_interval_s + 10 * 6
    while True:
        report = reports_at(settings.state_dir).load(first)
        gone = not [x for x in _services(swarm, "cold") + _volumes(swarm, "cold")
                    if (x.attrs.get("Spec", {}).get("Labels") or x.attrs.get("Labels") or {})
                    .get("ccci.run") == hexid]
        if report is not None and report.finished and gone:
            break
        assert time.monotonic() - killed_at < limit, (
            f"after {limit} s: report {report and report.verdict}, app gone: {gone}")
        time.sleep(0.5)
    print(f"reaped {time.monotonic() - killed_at:.1f} s after the kill "
          f"(lease TTL {settings.lease_ttl_s} s, janitor every {settings.janitor_interval_s} s)")
    assert report.verdict == "error"
    assert "crashed" in (report.reason or "")
    assert not Slots.from_settings(settings).holds(first)
    later = _wait(second)
    stop.set()
    watcher.join(timeout=5)
    assert later.verdict == "pass", later.reason
    assert max(seen) == 1, "the queued run started before the dead run's app was gone"
