"""The operator's view: runs by the CLI (version tags as refs), live progress, timelines,
queued versus running, and each step as Flower shows it.

The session workers run everything; the module seeds the custom-html canonical once and
starts a Flower with basic auth on a free loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import (
    REPO,
    SESSION_DIR,
    TEST_ENV,
    Workers,
    _free_port,
    flush_redis,
    remove_ccci_objects,
)
from faults import wait_until, wipe
from recipe_commits import make_commit

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = "custom-html"
HOLD = """

def test_held_while_the_gate_exists():
    import os, time
    deadline = time.monotonic() + 120
    while os.path.exists({gate!r}) and time.monotonic() < deadline:
        time.sleep(0.05)
"""
FLOWER_USER, FLOWER_PASSWORD = "ccci", "flower-" + os.urandom(6).hex()


def ccci(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccci_tasks.cli", *args], cwd=REPO,
                          env={**os.environ, **TEST_ENV}, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def seeded(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str
           ) -> Iterator[dict[str, Any]]:
    """A clean system whose custom-html canonical is seeded by `ccci cold --wait`."""
    from ccci_tasks.config import get_settings

    get_settings.cache_clear()
    flush_redis(redis_server)
    remove_ccci_objects(swarm)
    wipe(Path(TEST_ENV["CCCI_STATE_DIR"]))
    done = ccci("cold", RECIPE, "--wait", "--json")
    assert done.returncode == 0, done.stderr
    yield json.loads(done.stdout)
    remove_ccci_objects(swarm)


@pytest.fixture(scope="module")
def flower(redis_server: str) -> Iterator[str]:
    """Flower on a free loopback port with basic auth; yields its base URL."""
    port = _free_port()
    log = open(SESSION_DIR / "flower.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "flower",
         "--address=127.0.0.1", f"--port={port}", "--enable_events=False"],
        cwd=REPO, env={**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO),
                       "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"},
        stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base), 60, "flower to answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_version_tags_as_refs(seeded: dict[str, Any]) -> None:
    """`ccci quick custom-html 2.0.0+2.0 --wait` and `ccci cold custom-html --ref 1.1.0+1.1
    --wait` pass (every Co-op Cloud tag has a '+')."""
    assert seeded["verdict"] == "pass"
    quick = ccci("quick", RECIPE, "2.0.0+2.0", "--wait", "--json")
    assert quick.returncode == 0, quick.stderr
    assert json.loads(quick.stdout)["ref"] == "2.0.0+2.0"
    assert " deploy_canonical" in quick.stderr and "verdict pass" in quick.stderr
    cold = ccci("cold", RECIPE, "--ref", "1.1.0+1.1", "--wait", "--json")
    assert cold.returncode == 0, cold.stderr
    report = json.loads(cold.stdout)
    assert (report["lane"], report["ref"], report["verdict"]) == ("cold", "1.1.0+1.1", "pass")


def test_red_quick_run_shows_its_restore(seeded: dict[str, Any], example_recipes: Path) -> None:
    """A red quick run's `runs show` lists the restore that put the known-good back, with
    its duration, in a timeline (start offset, duration, step, detail)."""
    bad = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("ccci/custom-html:2.0", "ccci/custom-html:9.9-gone")},
                      "pr-red-operator")
    done = ccci("quick", RECIPE, bad, "--wait")
    assert done.returncode == 1, done.stderr
    run_id = done.stdout.split()[1].rstrip(":")
    shown = ccci("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    restore = next(line for line in shown.stdout.splitlines() if " restore (undo)" in line)
    offset, duration = restore.split()[0], restore.split()[1]
    assert offset.startswith("+") and duration.endswith("s") and float(duration[:-1]) >= 0
    assert "known-good" in restore
    as_json = json.loads(ccci("runs", "show", run_id, "--json").stdout)
    (step,) = [s for s in as_json["steps"] if s["name"] == "restore"]
    assert step["undo"] is True and step["ok"] is True and step["duration_s"] >= 0


def test_enqueue_watch_list_queued_and_running(seeded: dict[str, Any],
                                               example_recipes: Path) -> None:
    """A plain enqueue prints the run id and how to follow it; `runs list` tells a queued
    run from a running one; `ccci watch` prints each step with its duration and exits by
    the verdict."""
    sha = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("Hello from custom-html", "Hello from the watch PR")},
                      "pr-watch")
    # The first run's custom test waits while a gate file exists, so the pair is seen as
    # running and queued however fast a quick run is.
    custom = Path(TEST_ENV["CCCI_TESTS_DIR"]) / RECIPE / "test_custom.py"
    original = custom.read_text()
    gate = SESSION_DIR / "hold-watch"
    gate.touch()
    custom.write_text(original + HOLD.format(gate=str(gate)))
    try:
        first = ccci("quick", RECIPE, sha)
        second = ccci("quick", RECIPE, sha, "--json")
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        first_id = first.stdout.split()[0]
        assert f"follow it: ccci watch {first_id}" in first.stdout
        second_id = json.loads(second.stdout)["run_id"]

        def states() -> dict[str, str] | None:
            rows = json.loads(ccci("runs", "list", "--json").stdout)
            got = {r["run_id"]: r["state"] for r in rows
                   if r["run_id"] in (first_id, second_id)}
            return got if got.get(first_id) == "running" and got.get(second_id) == "queued" \
                else None

        wait_until(states, 60, "one run running and the other queued", poll_s=0.2)
        listing = ccci("runs", "list").stdout.splitlines()
        assert any(first_id in line and " running " in line for line in listing), listing
        assert any(second_id in line and " queued " in line for line in listing), listing
    finally:
        custom.write_text(original)
        gate.unlink(missing_ok=True)
    assert ccci("watch", first_id).returncode == 0
    watched = ccci("watch", second_id)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert any(" deploy_canonical" in line for line in lines)
    assert any(" ok   restore " in line and "s:" in line for line in lines)
    assert lines[-1].split()[2:4] == ["verdict", "pass"]


def test_flower_shows_the_running_step(seeded: dict[str, Any], flower: str,
                                       example_recipes: Path) -> None:
    """During a run, Flower's task list shows the running step as STARTED with the recipe,
    the lane and the run id in its arguments; the entry task's result says it queued a
    run; without credentials the API answers 401."""
    from ccci_tasks.tasks import quick_run

    assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401
    sha = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("Hello from custom-html", "Hello from the Flower PR")},
                      "pr-flower")
    run_id = quick_run.delay(RECIPE, sha).id
    auth = (FLOWER_USER, FLOWER_PASSWORD)

    def started() -> list[dict[str, Any]]:
        tasks = httpx.get(f"{flower}/api/tasks", params={"state": "STARTED"}, auth=auth,
                          timeout=10).json()
        return [t for t in tasks.values() if run_id[:8] in str(t.get("args"))]

    seen = wait_until(started, 120, "a STARTED step of the run in Flower", poll_s=0.3)
    step = seen[0]
    assert step["name"].startswith("ccci.runs.")
    assert RECIPE in step["args"] and "quick" in step["args"]
    from ccci_tasks.runs import wait

    assert wait(run_id, 300).verdict == "pass"
    entry = wait_until(
        lambda: httpx.get(f"{flower}/api/task/info/{run_id}", auth=auth, timeout=10).json()
        if httpx.get(f"{flower}/api/task/info/{run_id}", auth=auth, timeout=10).status_code
        == 200 else None, 60, "the entry task in Flower")
    assert "queued" in str(entry.get("result"))

