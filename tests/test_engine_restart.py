"""The Docker engine restarted in the middle of a cold run (R9.5).

What the system must do, phase by phase: the run was running when the engine went away; it
ends ``pass``, or ``error`` with a reason naming the Docker engine (never ``fail``: the recipe
did nothing wrong; never ``crashed``: no worker died, the lease was kept); no report stays
running; its teardown completes once the engine is back (its undo, or the janitor): no service,
volume, secret or env file of it is left and it holds no slot; at most one app was ever live;
the next cold run passes with its teardown done. The test stops and starts dockerd itself, so
it runs last in its own module and waits for the swarm to be active again.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import SESSION_DIR, TEST_ENV, Workers, reports_at
from faults import Watcher, ours, private_system, wait_until

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = "custom-html"


def _engine_ready() -> bool:
    done = subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
                          capture_output=True, text=True, timeout=20, check=False)
    return done.returncode == 0 and done.stdout.strip() == "active"


def _main_dockerd() -> int:
    """The pid of the engine behind /var/run/docker.sock (never a rig node's dockerd)."""
    pidfile = Path("/var/run/docker.pid")
    if pidfile.exists():
        return int(pidfile.read_text().strip())
    return int(subprocess.run(["pidof", "-s", "dockerd"], capture_output=True, text=True,
                              check=True).stdout.strip())


def restart_dockerd() -> float:
    """SIGTERM dockerd, wait until it is gone, start it again; seconds it was away."""
    pid = _main_dockerd()
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
def system(workers: Workers, swarm: DockerClient, example_recipes: Path,
           redis_server: str) -> Iterator[Workers]:
    """A private system with a fast janitor."""
    with private_system(workers, swarm, redis_server, "engine",
                        CCCI_LEASE_TTL_S="15", CCCI_JANITOR_INTERVAL_S="2") as own:
        yield own


ENGINE = re.compile(r"docker|engine", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _engine_connections(swarm: DockerClient) -> Iterator[None]:
    """The engine's restart cuts the Docker API connections this process holds in its pools;
    they are dropped, and collected here, not during a later test (ResourceWarning)."""
    yield
    swarm.api.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_engine_restart_mid_cold_run(system: Workers, swarm: DockerClient) -> None:
    """dockerd restarted while a cold run installs its app: see the module docstring for
    what each phase must come to."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.config import get_settings
    from ccci_tasks.lanes.model import run_hex
    from ccci_tasks.naming import Recipe, cold_domain
    from ccci_tasks.platform.swarm import SwarmPlatform
    from ccci_tasks.runs import wait
    from ccci_tasks.state.clock import utc_now
    from ccci_tasks.tasks import cold_run

    state = Path(TEST_ENV["CCCI_STATE_DIR"])
    settings = get_settings()
    run_id = cold_run.delay(RECIPE, "1.1.0+1.1").id

    def installing() -> Any:
        report = reports_at(state).load(run_id)
        return report if report and report.current and report.current.name in (
            "install", "health_check") else None

    with Watcher(swarm) as watcher:
        # Phase 1: the engine goes away while the run deploys or probes its app.
        before = wait_until(installing, 120, "the cold run to install its app", poll_s=0.1)
        went_away = utc_now()
        away = restart_dockerd()
        report = wait(run_id, 300)
        print(f"engine away {away:.1f} s from step {before.current.name}; run "
              f"{report.verdict}: {report.reason}")
        assert not before.finished
        assert report.finished_at is not None and report.finished_at > went_away, (
            "the run ended before the engine went away: nothing was tested")
        assert report.verdict in ("pass", "error"), report.reason
        assert report.current is None
        steps = {step.name: step for step in report.steps if not step.undo}
        if report.verdict == "pass":
            assert steps["teardown"].ok, steps["teardown"]
        else:
            reason = report.reason or ""
            assert ENGINE.search(reason) and "crashed" not in reason, reason
            assert [s.name for s in report.steps if s.undo][:1] == ["teardown"], report.steps

        # Phase 2: once the engine is back, nothing of the run is left.
        hexid = run_hex(run_id)
        domain = cold_domain(Recipe(RECIPE), hexid, settings.base_domain)

        def left() -> list[str]:
            found = [o.name for kind in (swarm.services, swarm.volumes, swarm.secrets)
                     for o in kind.list(filters={"label": f"ccci.run={hexid}"}) if ours(o)]
            if SwarmPlatform(settings, client=swarm).env_path(domain).exists():
                found.append(f"env file of {domain}")
            if Slots.from_settings(settings).holds(run_id):
                found.append(f"the run slot of {run_id}")
            return found

        wait_until(lambda: not left(), 180, "everything of the run to be removed")

        # Phase 3: the system works as before.
        later = wait(cold_run.delay(RECIPE, "1.1.0+1.1").id, 300)
    assert later.verdict == "pass", later.reason
    assert [s.ok for s in later.steps if s.name == "teardown"] == [True]
    assert watcher.most <= 1, f"{watcher.most} apps were live at once"
