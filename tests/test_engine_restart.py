"""The Docker engine restarted in the middle of a cold run (R9.5).

The run ends (green, or error naming the engine); once the engine is back, its teardown is
completed (by its undo or by the janitor) and nothing of it is left. The test stops and starts
dockerd itself, so it runs last in its own module and waits for the swarm to be active again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SESSION_DIR, TEST_ENV, Workers
from faults import ours, private_system, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = "custom-html"


def _engine_ready() -> bool:
    done = subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
                          capture_output=True, text=True, timeout=20, check=False)
    return done.returncode == 0 and done.stdout.strip() == "active"


def restart_dockerd() -> float:
    """SIGTERM dockerd, wait until it is gone, start it again; seconds it was away."""
    pid = int(subprocess.run(["pidof", "-s", "dockerd"], capture_output=True, text=True,
                             check=True).stdout.strip())
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 120, "dockerd to stop")
    with open(SESSION_DIR / "dockerd-restarted.log", "ab") as log:
        # setsid -f: dockerd in a session of its own that outlives this test session.
        subprocess.run(["setsid", "-f", shutil.which("dockerd") or "dockerd"], stdout=log,
                       stderr=log, stdin=subprocess.DEVNULL, check=True, timeout=30)
    wait_until(_engine_ready, 120, "dockerd to answer with the swarm active", poll_s=0.5)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def system(workers: Workers, swarm: Any, example_recipes: Path,
           redis_server: str) -> Iterator[Workers]:
    """A private system with a fast janitor."""
    with private_system(workers, swarm, redis_server, "engine",
                        CCCI_LEASE_TTL_S="15", CCCI_JANITOR_INTERVAL_S="2") as own:
        yield own


def test_engine_restart_mid_cold_run(system: Workers, swarm: Any) -> None:
    """dockerd restarted while a cold run's app is being installed and checked: the run ends
    (pass, or error naming the engine), its teardown completes once the engine is back, and
    nothing of it is left; the next run passes."""
    from ccci_tasks.lanes.model import run_hex
    from ccci_tasks.runs import wait
    from ccci_tasks.state.reports import load_report
    from ccci_tasks.tasks import cold_run

    state = Path(TEST_ENV["CCCI_STATE_DIR"])
    run_id = cold_run.delay(RECIPE, "1.1.0+1.1").id

    def installing() -> Any:
        report = load_report(state, run_id)
        return report if report and report.current and report.current.name in (
            "install", "health_check", "overlay_install") else None

    wait_until(installing, 120, "the cold run to install its app", poll_s=0.1)
    away = restart_dockerd()
    report = wait(run_id, 300)
    print(f"engine away {away:.1f} s; run {report.verdict}: {report.reason}")
    assert report.verdict in ("pass", "error"), report.reason
    if report.verdict == "error":
        reason = (report.reason or "").lower()
        assert "docker" in reason or "engine" in reason or "crashed" in reason, report.reason
    hexid = run_hex(run_id)

    def gone() -> bool:
        objs = swarm.services.list(filters={"label": f"ccci.run={hexid}"}) + \
            swarm.volumes.list(filters={"label": f"ccci.run={hexid}"})
        return not [o for o in objs if ours(o)]

    wait_until(gone, 180, "everything of the run to be removed")
    later = wait(cold_run.delay(RECIPE, "1.1.0+1.1").id, 300)
    assert later.verdict == "pass", later.reason
