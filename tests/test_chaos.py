"""Chaos: quick runs whose runs worker is SIGKILLed at a random moment, then restarted.

The promise under test (R9.5): whatever the moment, every run ends with a verdict, the
canonical's volumes hold exactly the known-good snapshot afterwards, registry and snapshot
are byte-identical to before, nothing of the system stays live, and MAX_TESTS (1) is never
exceeded. The seed of the random moments is printed; set CCCI_CHAOS_SEED to replay it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import TEST_ENV, Workers
from faults import (
    Watcher,
    fingerprint,
    live_stacks,
    private_system,
    volumes_match_snapshot,
    wait_quiet,
)
from recipe_commits import make_commit

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = "custom-html"
ROUNDS = 10
TTL_S, JANITOR_S = 8, 2


@pytest.fixture(scope="module")
def chaos_system(workers: Workers, swarm: DockerClient, example_recipes: Path,
                 redis_server: str) -> Iterator[Workers]:
    """A private system with short leases and a fast janitor, its canonical seeded."""
    from ccci_tasks.runs import wait
    from ccci_tasks.tasks import cold_run

    with private_system(workers, swarm, redis_server, "chaos",
                        CCCI_LEASE_TTL_S=str(TTL_S),
                        CCCI_JANITOR_INTERVAL_S=str(JANITOR_S)) as own:
        seeded = wait(cold_run.delay(RECIPE).id, 300)
        assert seeded.verdict == "pass", seeded.reason
        yield own


def test_sigkill_at_random_moments_keeps_every_promise(
    chaos_system: Workers, swarm: DockerClient, example_recipes: Path
) -> None:
    """Ten quick runs of a good PR head, each with the runs worker SIGKILLed 1-20 s in and
    restarted: every report gets a verdict, the canonical volume equals its snapshot after
    each round, registry and snapshot are byte-identical, nothing stays live, and a 100 ms
    watcher never sees more than MAX_TESTS apps."""
    from ccci_tasks.runs import wait
    from ccci_tasks.tasks import quick_run

    state = Path(TEST_ENV["CCCI_STATE_DIR"])
    sha = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("Hello from custom-html", "Hello from the chaos PR")},
                      "pr-chaos")
    before = fingerprint(state, RECIPE)
    seed = int(os.environ.get("CCCI_CHAOS_SEED") or time.time())
    print(f"chaos seed {seed}")
    rng = random.Random(seed)
    rounds = []
    with Watcher(swarm) as watcher:
        for _ in range(ROUNDS):
            run_id = quick_run.delay(RECIPE, sha).id
            delay = rng.uniform(1, 20)
            time.sleep(delay)
            chaos_system.kill("runs")
            chaos_system.start("runs")
            chaos_system.wait_ready(("runs",))
            report = wait(run_id, 180)
            settle = wait_quiet(swarm, state, 60)
            assert volumes_match_snapshot(swarm, state, RECIPE) == []
            rounds.append(f"kill at {delay:4.1f} s: {report.verdict:5} "
                          f"({(report.reason or '')[:70]}); quiet {settle:.1f} s later")
    print("\n".join(rounds))
    assert fingerprint(state, RECIPE) == before
    assert live_stacks(swarm) == set()
    assert watcher.samples > 100
    assert watcher.most <= 1, f"saw {watcher.most} apps live at once"
