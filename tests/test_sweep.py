"""The nightly sweep (R8), its beat catch-up and watchdog, and the prune, end to end.

One private system for the module: custom-html (green at its newest tag), red-html (enrolled,
red at its newest tag) and old-html (de-enrolled, with warm data), traefik as live-warm app.
The ``swept`` fixture runs one sweep; while it goes, a quick run is enqueued and a second
sweep is fired; the tests look at what each left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import REPO, TEST_ENV, Workers
from faults import Watcher, fingerprint, ours, private_system, wait_until
from recipe_commits import GIT, make_commit
from recipe_tags import keep_tags_upto, session_copy

from ccci_tasks.naming import Recipe

if TYPE_CHECKING:
    from docker import DockerClient

    from ccci_tasks.state.reports import RunReport

pytestmark = [pytest.mark.docker, pytest.mark.slow]

GREEN, RED, OLD = Recipe("custom-html"), Recipe("red-html"), Recipe("old-html")
ENROLLED = "WARM_CANONICAL = True\nHEALTH_OK = [200]\nDEPLOY_TIMEOUT = 90\nHTTP_TIMEOUT = 30\n"


@dataclass
class Swept:
    workers: Workers
    report: tuple[int, Any]  # the exit code and the parsed --json output
    quick: RunReport
    second: tuple[int, Any]
    most_live: int
    red_before: dict[str, str]


def state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


TESTS: dict[str, Path] = {}


def recipe_tests() -> Path:
    """The module's own tests dir: only the recipes the sweep tests are about are enrolled."""
    return TESTS["dir"]


def ccci(*args: str, timeout_s: float = 900) -> tuple[int, Any]:
    proc = subprocess.run([sys.executable, "-m", "ccci_tasks.cli", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout_s)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        return proc.returncode, proc.stdout + proc.stderr


def clone(recipes: Path, name: str) -> Path:
    repo = recipes / name
    subprocess.run([*GIT, "clone", "-q", str(recipes / GREEN), str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "fetch", "-q", "origin", "+refs/tags/*:refs/tags/*"],
                   check=True)
    (recipe_tests() / name).mkdir(exist_ok=True)
    (recipe_tests() / name / "recipe_meta.py").write_text(ENROLLED)
    return repo


def sweep_reports() -> list[Any]:
    from ccci_tasks.state.reports import list_reports

    return [r for r in list_reports(state()) if r.lane == "sweep"]


@pytest.fixture(scope="module")
def swept(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swept]:
    """Three recipes seeded (one then red, one then de-enrolled), then one sweep with a
    quick run and a second sweep fired in its middle, watched every 100 ms."""
    from ccci_tasks.runs import wait
    from ccci_tasks.tasks import cold_run, quick_run

    recipes = tmp_path_factory.mktemp("sweep-recipes")
    TESTS["dir"] = tmp_path_factory.mktemp("sweep-tests")
    for name in (GREEN, "traefik"):
        session_copy(example_recipes / name, recipes)
        shutil.copytree(Path(TEST_ENV["CCCI_TESTS_DIR"]) / name, recipe_tests() / name)
    keep_tags_upto(recipes / "traefik", "3.0.1+v3.1.1")
    red = clone(recipes, RED)
    clone(recipes, OLD)
    env = {"CCCI_RECIPES_DIR": str(recipes), "CCCI_INFRA_APPS": "traefik",
           "CCCI_TESTS_DIR": str(recipe_tests()),
           "CCCI_LEASE_TTL_S": "10", "CCCI_JANITOR_INTERVAL_S": "2"}
    with private_system(workers, swarm, redis_server, "sweep", **env) as own:  # type: ignore[arg-type]  # env: CCCI_* only
        for name in (GREEN, RED, OLD):  # seed the canonicals
            seeded = wait(cold_run.delay(name).id, 300)
            assert seeded.verdict == "pass", (name, seeded.reason)
        (recipe_tests() / OLD / "recipe_meta.py").write_text("WARM_CANONICAL = False\n")
        broken = make_commit(red, "2.0.0+2.0", {"compose.yml": (
            "ccci/custom-html:2.0", "ccci/custom-html:9.9-missing")}, "broken-release")
        subprocess.run([*GIT, "-C", str(red), "tag", "3.0.0+3.0", broken], check=True)
        red_before = fingerprint(state(), RED)
        sha = make_commit(recipes / GREEN, "2.0.0+2.0", {"compose.yml": (
            "Hello from custom-html", "Hello from a PR in the sweep")}, "pr-sweep")
        with Watcher(swarm) as watcher:
            out: dict[str, Any] = {}

            def sweep_cli() -> None:
                out["sweep"] = ccci("sweep", "--wait", "--json")

            first = threading.Thread(target=sweep_cli)
            first.start()
            wait_until(lambda: [r for r in sweep_reports() if r.extra.get("recipes")],
                       300, "the sweep's cold runs to start")
            quick_id = quick_run.delay(GREEN, sha).id
            second = ccci("sweep", "--wait", "--json", timeout_s=60)
            first.join(timeout=900)
            quick = wait(quick_id, 300)
        code, report = out["sweep"]
        yield Swept(own, (code, report), quick, second, watcher.most, red_before)


def test_sweep_reports_every_recipe_and_exits_red(swept: Swept) -> None:
    """`ccci sweep --wait --json` exits 1 (one recipe red); the report lists both enrolled
    recipes with run ids and verdicts, the infra outcomes, what was pruned, the disk use."""
    code, report = swept.report
    assert code == 1, report
    assert report["verdict"] == "fail"
    got = {r["recipe"]: r["verdict"] for r in report["recipes"]}
    assert got == {GREEN: "pass", RED: "fail"}
    assert all(len(r["run_id"]) == 36 for r in report["recipes"])
    assert [(i["app"], i["outcome"]) for i in report["infra"]] == [("traefik", "up-to-date")]
    assert report["pruned_stale"] == [OLD]
    assert isinstance(report["disk_used_pct"], float) and report["prune"]["why"]
    names = [s["name"] for s in report["steps"]]
    assert names.index("reconcile_infra") < names.index("cold_runs") < names.index("finish")


def test_green_recipe_promoted_red_one_untouched(swept: Swept) -> None:
    """The green recipe's canonical is promoted at its newest tag; the red one's registry
    and snapshot are byte-identical."""
    from ccci_tasks.state import canonical

    _, report = swept.report
    green = next(r for r in report["recipes"] if r["recipe"] == GREEN)
    from ccci_tasks.state.reports import load_report

    run = load_report(state(), green["run_id"])
    assert run is not None and "promoted" in (run.reason or "")
    registry = canonical.read_registry(state(), GREEN)
    assert registry is not None and registry.version == "2.0.0+2.0"
    assert fingerprint(state(), RED) == swept.red_before


def test_de_enrolled_recipe_warm_data_gone(swept: Swept, swarm: DockerClient) -> None:
    """The de-enrolled recipe's registry, snapshot and volumes are gone."""
    assert not (state() / OLD).exists()
    assert not [v for v in swarm.volumes.list(filters={"label": f"ccci.recipe={OLD}"})
                if ours(v)]


def test_quick_run_in_the_middle_passes_within_max_tests(swept: Swept) -> None:
    """A quick run enqueued in the middle of the sweep passes, and the 100 ms watcher never
    saw more than MAX_TESTS (1) apps live."""
    assert swept.quick.verdict == "pass", swept.quick.reason
    assert swept.most_live <= 1


def test_second_sweep_is_skipped(swept: Swept) -> None:
    """A second `ccci sweep` while one runs is skipped and says so (exit 0)."""
    code, report = swept.second
    assert code == 0, report
    assert report["verdict"] == "pass"
    assert report["reason"].startswith("skipped: sweep ") and "in flight" in report["reason"]
    assert report["skipped"]


# --------------------------------------------------------------------------- beat


def _set_last_run(entry: str, when: datetime) -> None:
    from beats import set_last_run

    from ccci_tasks.celery_app import app

    set_last_run(app, entry, when)


def _last_sweep_at(when: datetime) -> None:
    """The last sweep completed at ``when``, as this host's file and the broker keep it."""
    import json

    from ccci_tasks import atomic, broker
    from ccci_tasks.config import get_settings
    from ccci_tasks.constants import KEY_SWEEP_LAST
    from ccci_tasks.state.clock import iso

    record = {"run_id": "x", "verdict": "pass", "finished_at": iso(when)}
    atomic.write_json(state() / "sweep" / "last.json", record)
    broker.client(get_settings()).set(KEY_SWEEP_LAST, json.dumps(record))


def _nightly_at(now: datetime) -> datetime:
    """The most recent past occurrence of CCCI_NIGHTLY_AT (03:00 UTC)."""
    at = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return at if at <= now else at - timedelta(days=1)


def test_beat_catches_up_a_missed_night_and_only_then(swept: Swept) -> None:
    """Beat started with the nightly entry last run two days ago (kept in the broker) fires a
    sweep within a minute; beat started right after a completed sweep fires none."""
    beat = swept.workers
    now = datetime.now(UTC)
    beat.kill("beat", signal.SIGTERM)
    before = {r.run_id for r in sweep_reports()}
    _set_last_run("nightly_sweep", now - timedelta(days=2))
    _last_sweep_at(now - timedelta(days=2))
    beat.start("beat")
    fired = wait_until(lambda: [r for r in sweep_reports() if r.run_id not in before],
                       60, "beat to fire the missed sweep")
    assert len(fired) == 1
    done = wait_until(lambda: (r := [x for x in sweep_reports() if x.run_id == fired[0].run_id]
                               ) and r[0].finished and r[0], 900, "the caught-up sweep")
    assert "skipped" not in done.extra, done.reason

    beat.kill("beat", signal.SIGTERM)
    _set_last_run("nightly_sweep", _nightly_at(datetime.now(UTC)) + timedelta(minutes=1))
    before = {r.run_id for r in sweep_reports()}
    beat.start("beat")
    time.sleep(60)
    assert [r for r in sweep_reports() if r.run_id not in before] == []


def test_watchdog_fires_when_the_last_sweep_is_too_old(swept: Swept) -> None:
    """The watchdog fires a sweep when the last completed one is older than 25 h, and not
    when it is younger."""
    from ccci_tasks.tasks.infra import sweep_watchdog

    _last_sweep_at(datetime.now(UTC) - timedelta(hours=24))
    assert sweep_watchdog.delay().get(timeout=60)["fired"] is False
    _last_sweep_at(datetime.now(UTC) - timedelta(hours=26))
    result = sweep_watchdog.delay().get(timeout=60)
    assert result["fired"] is True
    from ccci_tasks.runs import wait

    report = wait(result["run_id"], 900)
    assert report.lane == "sweep" and report.finished


def test_nothing_enrolled_is_an_error_with_an_alert(swept: Swept) -> None:
    """With nothing enrolled the sweep ends error (exit 3) and a sweep-empty alert exists."""
    from ccci_tasks.state import alerts

    meta = recipe_tests() / GREEN / "recipe_meta.py"
    good = meta.read_text()
    red_meta = recipe_tests() / RED / "recipe_meta.py"
    red_good = red_meta.read_text()
    meta.write_text(good.replace("WARM_CANONICAL = True", "WARM_CANONICAL = False"))
    red_meta.write_text("WARM_CANONICAL = False\n")
    try:
        code, report = ccci("sweep", "--wait", "--json")
    finally:
        meta.write_text(good)
        red_meta.write_text(red_good)
    assert code == 3, report
    assert report["verdict"] == "error" and "nothing to sweep" in report["reason"]
    assert [a for a in alerts.pending(state()) + alerts.seen(state())
            if a.kind == "sweep-empty"]
