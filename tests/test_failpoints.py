"""Failpoints in real workers (R13): a step parked exactly at each crash window.

For each point in each lane that passes it, the runs worker is started with
``CCCI_FAILPOINTS`` so that the first run stops itself there (``pause``) or dies there
(``kill``). With a short lease and a fast janitor the promise is checked where it matters:

* the paused process is gone (SIGKILLed by the janitor, which notes it) before the run
  queued behind it is admitted to the same resources;
* that second run passes, and the known-good (registry, snapshot, canonical volume) is
  intact, or is the new one when the first run had promoted before it stopped;
* after a SIGCONT to the paused process nothing of it acts: no engine event for the
  canonical, no change to its volume, snapshot, registry or intent records.

One private system for the module (its canonical seeded once); each case restarts only the
runs worker with its failpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TEST_ENV, Workers, reports_at
from faults import (
    EngineEvents,
    PidWatch,
    Watcher,
    dir_listing,
    fingerprint,
    private_system,
    volumes_match_snapshot,
    wait_quiet,
    wait_until,
    warm_volumes,
)
from recipe_commits import make_commit

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = "custom-html"
TTL_S, JANITOR_S = 6, 1
CLEANUP_S = TTL_S + 4 * JANITOR_S + 40


@pytest.fixture(scope="module")
def system(workers: Workers, swarm: DockerClient, example_recipes: Path,
           redis_server: str) -> Iterator[Workers]:
    """A private system with a 6 s lease and a 1 s janitor, its canonical seeded."""
    with private_system(workers, swarm, redis_server, "failpoints",
                        CCCI_LEASE_TTL_S=str(TTL_S), CCCI_LEASE_START_GRACE_S="60",
                        CCCI_JANITOR_INTERVAL_S=str(JANITOR_S)) as own:
        seeded = _wait(_cold(), 300)
        assert seeded.verdict == "pass", seeded.reason
        yield own


@pytest.fixture(scope="module")
def pr_sha(example_recipes: Path) -> str:
    return make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                       {"compose.yml": ("Hello from custom-html", "Hello from a failpoint PR")},
                       "pr-failpoints")


def _state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


def _wait(run_id: str, timeout_s: float = 180) -> Any:
    from ccci_tasks.runs import wait

    return wait(run_id, timeout_s)


def _quick(ref: str) -> str:
    from ccci_tasks.tasks import quick_run

    return str(quick_run.delay(RECIPE, ref).id)


def _cold() -> str:
    from ccci_tasks.tasks import cold_run

    return str(cold_run.delay(RECIPE, None).id)


def _report(run_id: str) -> Any:
    from ccci_tasks.naming import RunId

    return reports_at(_state()).load(RunId(run_id))


def _fired(run_id: str) -> dict[str, Any] | None:
    folder = _state() / "failpoints"
    for path in folder.glob("*.json") if folder.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            record: dict[str, Any] = json.loads(path.read_text())
            if record.get("run_id") == run_id:
                return record
    return None


def _intents() -> list[str]:
    folder = _state() / "intents"
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


def _known_good(swarm: DockerClient) -> tuple[dict[str, str], dict[str, Any]]:
    volumes = {name: dir_listing(path) for name, path in warm_volumes(swarm, RECIPE).items()}
    return fingerprint(_state(), RECIPE), volumes


# (lane of the first run, CCCI_FAILPOINTS of the runs worker, whether the first run had made
# a new known-good before the point). The second run is always a quick run: it needs the
# canonical the first one held.
PAUSED = [
    ("quick", "before-engine-change=pause", False),  # deploy_canonical: its intent record
    ("quick", "before-engine-change@upgrade=pause", False),  # the PR head's chaos deploy
    ("quick", "mid-restore=pause", False),  # the known-good half back in the volume
    ("quick", "before-verdict=pause", False),
    ("cold", "before-engine-change@promote_undeploy=pause", False),  # canonical at new version
    ("cold", "before-snapshot-swap=pause", False),
    ("cold", "before-verdict=pause", True),  # promoted, registry written
]


@pytest.mark.parametrize(("lane", "points", "promoted"), PAUSED,
                         ids=[f"{lane}-{points.split('=')[0]}" for lane, points, _ in PAUSED])
def test_paused_at_a_failpoint_is_dead_before_the_next_admission_and_never_acts(
    system: Workers, swarm: DockerClient, pr_sha: str, lane: str, points: str, promoted: bool
) -> None:
    """The first run stops itself at the point; past its lease the janitor SIGKILLs it and
    only then is the queued quick run admitted; that run passes; the known-good is intact
    (or the new one, when the first had promoted); after SIGCONT nothing of the first
    touches the engine, the volume, the snapshot, the registry or the intents."""
    from ccci_tasks import naming, stonith
    from ccci_tasks.config import get_settings

    state = _state()
    system.restart("runs", CCCI_FAILPOINTS=points)
    before = _known_good(swarm)
    with Watcher(swarm) as watcher:
        first = _quick(pr_sha) if lane == "quick" else _cold()
        fired = wait_until(lambda: _fired(first), 240, f"run {first} to reach {points}")
        pid = int(fired["pid"])
        watch = PidWatch(pid)
        second = _quick(pr_sha)
        try:
            later = _wait(second, CLEANUP_S + 120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        dead = _report(first)
        wait_quiet(swarm, state, CLEANUP_S)
    assert watch.gone_at is not None, f"pid {pid} paused at {points} is still alive"
    admitted = _report(second).admitted_at
    assert watch.gone_at < admitted, (
        f"the paused pid {pid} was gone at {watch.gone_at}, after the next run was admitted "
        f"at {admitted}")
    notes = [n for n in stonith.killed_notes(state) if n["pid"] == pid]
    assert notes and notes[-1]["run_id"] == first, "the janitor did not note the kill"
    assert dead.verdict == "error" and "crashed" in (dead.reason or ""), dead.reason
    assert later.verdict == "pass", later.reason
    assert watcher.most <= 1, f"saw {watcher.most} apps live at once"
    assert volumes_match_snapshot(swarm, state, RECIPE) == []
    after = _known_good(swarm)
    if promoted:
        assert after[0] != before[0], "the promotion before the verdict was lost"
    else:
        assert after == before
    # Nothing of the first acts after SIGCONT (it is dead; this proves it).
    warm = naming.warm_domain(naming.Recipe(RECIPE), get_settings().base_domain)
    events = EngineEvents(swarm, naming.stack_name(warm))
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        time.sleep(3)
    finally:
        events.close()
    assert events.seen == [], events.seen[:3]
    assert _known_good(swarm) == after
    assert _intents() == []
    assert _report(first).steps == dead.steps and _report(first).finished_at == dead.finished_at


KILLED = [
    ("quick", "mid-restore=kill"),
    ("quick", "before-engine-change@upgrade=kill"),
    ("cold", "before-snapshot-swap=kill"),
    ("quick", "before-verdict=kill"),
]


@pytest.mark.parametrize(("lane", "points"), KILLED,
                         ids=[f"{lane}-{points.split('=')[0]}" for lane, points in KILLED])
def test_killed_at_a_failpoint_leaves_the_known_good_and_the_next_run_green(
    system: Workers, swarm: DockerClient, pr_sha: str, lane: str, points: str
) -> None:
    """The first run's step dies at the point (SIGKILL of its own process): whatever its
    redelivery makes of the run, the known-good is intact afterwards, nothing stays live,
    and the next quick run passes."""
    state = _state()
    system.restart("runs", CCCI_FAILPOINTS=points)
    before = _known_good(swarm)
    with Watcher(swarm) as watcher:
        first = _quick(pr_sha) if lane == "quick" else _cold()
        wait_until(lambda: _fired(first), 240, f"run {first} to reach {points}")
        report = _wait(first, CLEANUP_S + 120)
        wait_quiet(swarm, state, CLEANUP_S)
        later = _wait(_quick(pr_sha), 180)
        wait_quiet(swarm, state, CLEANUP_S)
    assert report.verdict in ("pass", "error"), report.reason
    assert later.verdict == "pass", later.reason
    assert watcher.most <= 1
    assert volumes_match_snapshot(swarm, state, RECIPE) == []
    if lane == "quick":
        assert _known_good(swarm) == before
