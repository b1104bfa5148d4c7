"""Failpoints in the reconcile lane (R13 with R2): the infra worker stops itself at a point
of a keycloak reconcile; past its lease the janitor (on the side queue, never in the infra
pool) SIGKILLs it before the next reconcile is admitted, rolls the app back through its
intent record, and after a SIGCONT nothing of the stopped reconcile touches the app, its
data, its snapshot, its recorded state or the intents.

One private system for the module, keycloak (stateful) its only live-warm app; each case
makes a version the newest tag and restarts the infra worker with its failpoints (the
restarted worker reconciles at once: that is the first run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TEST_ENV, Workers, reports_at
from faults import EngineEvents, PidWatch, dir_listing, ours, private_system, wait_until
from recipe_tags import keep_tags_upto, session_copy

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

APP = "keycloak"
KC_V1, KC_PATCH, KC_BROKEN = "1.0.0+26.0.0", "1.0.1+26.0.1", "1.0.2+26.0.2"
TTL_S, JANITOR_S = 6, 1
WAIT_S = 240


@pytest.fixture(scope="module")
def infra(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workers, Path]]:
    """A private system whose only live-warm app is keycloak, deployed at its oldest tag."""
    recipes = tmp_path_factory.mktemp("fp-recipes")
    session_copy(example_recipes / APP, recipes)
    keep_tags_upto(recipes / APP, KC_V1)
    # A broken version fails its health gate in 5 s here, not 20: the cases are about the
    # windows, not the gate.
    meta = Path(TEST_ENV["CCCI_TESTS_DIR"]) / APP / "recipe_meta.py"
    good = meta.read_text()
    meta.write_text(good.replace("HTTP_TIMEOUT = 20", "HTTP_TIMEOUT = 5"))
    try:
        with private_system(workers, swarm, redis_server, "fp-infra",
                            roles=("infra", "alerts", "beat"),
                            CCCI_RECIPES_DIR=str(recipes), CCCI_INFRA_APPS=APP,
                            CCCI_LEASE_TTL_S=str(TTL_S), CCCI_LEASE_START_GRACE_S="60",
                            CCCI_JANITOR_INTERVAL_S=str(JANITOR_S)) as own:
            wait_until(lambda: [r for r in _reconciles() if r.verdict == "pass"], WAIT_S,
                       "keycloak's first deployment")
            yield own, recipes
    finally:
        meta.write_text(good)


def _state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


def _reconciles() -> list[Any]:
    return [r for r in reports_at(_state()).all() if r.lane == "reconcile"]


def _report(run_id: str) -> Any:
    from ccci_tasks.naming import RunId

    return reports_at(_state()).load(RunId(run_id))


def _fired() -> dict[str, Any] | None:
    folder = _state() / "failpoints"
    for path in folder.glob("*.json") if folder.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            record: dict[str, Any] = json.loads(path.read_text())
            path.unlink()
            return record
    return None


def _data(swarm: DockerClient) -> Path:
    (volume,) = [v for v in swarm.volumes.list(filters={"label": f"ccci.recipe={APP}"})
                 if ours(v)]
    return Path(volume.attrs["Mountpoint"])


def _version(swarm: DockerClient) -> str | None:
    for service in swarm.services.list(filters={"label": f"ccci.recipe={APP}"}):
        if ours(service):
            for key, value in (service.attrs["Spec"].get("Labels") or {}).items():
                if key.startswith("coop-cloud.") and key.endswith(".version"):
                    return str(value)
    return None


def _known(swarm: DockerClient) -> dict[str, Any]:
    """The app's recorded state, its snapshot's files, its data and the intents."""
    state = _state()
    files = [state / "infra" / f"{APP}.json"]
    snap = state / "infra" / APP / "snapshot"
    if snap.exists():
        files += sorted(p for p in snap.resolve().rglob("*") if p.is_file())
    intents = sorted(p.name for p in (state / "intents").glob("*.json")) \
        if (state / "intents").is_dir() else []
    return {"files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
            "data": dir_listing(_data(swarm)), "intents": intents, "version": _version(swarm)}


# (newest tag, CCCI_FAILPOINTS of the infra worker, verdict and version the second reconcile
# ends with)
CASES = [
    (KC_PATCH, "before-snapshot-swap=pause", "pass", KC_PATCH),
    (KC_BROKEN, "before-engine-change@deploy=pause", "fail", KC_PATCH),
    (KC_BROKEN, "mid-restore=pause", "fail", KC_PATCH),
    (KC_BROKEN, "before-verdict=pause", "fail", KC_PATCH),
]


@pytest.mark.parametrize(("newest", "points", "verdict", "runs"), CASES,
                         ids=[f"{n}-{p.split('=')[0]}" for n, p, _, _ in CASES])
def test_reconcile_paused_at_a_failpoint_is_dead_before_the_next_and_never_acts(
    infra: tuple[Workers, Path], swarm: DockerClient, example_recipes: Path, newest: str,
    points: str, verdict: str, runs: str,
) -> None:
    """The reconcile the restarted infra worker starts stops itself at the point; the
    janitor kills it before the queued reconcile is admitted and rolls the app back; that
    reconcile ends as it must (applied, or rolled back from a broken version); keycloak's
    data keeps the marker written before; after SIGCONT nothing of the first changes."""
    from ccci_tasks import naming, stonith
    from ccci_tasks.config import get_settings
    from ccci_tasks.lanes import runner

    system, recipes = infra
    (_data(swarm) / "marker.txt").write_text(f"before {points}\n")
    session_copy(example_recipes / APP, recipes)
    keep_tags_upto(recipes / APP, newest)
    system.restart("infra", CCCI_FAILPOINTS=points)
    fired = wait_until(_fired, WAIT_S, f"the start-up reconcile to reach {points}")
    pid, first = int(fired["pid"]), str(fired["run_id"])
    watch = PidWatch(pid)
    second = naming.RunId(str(uuid.uuid4()))
    runner.submit(get_settings(), second, "reconcile", {"recipe": APP})
    try:
        wait_until(lambda: (_report(second) or None) and _report(second).finished, WAIT_S,
                   "the second reconcile's verdict")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    dead, later = _report(first), _report(second)
    assert watch.gone_at is not None and watch.gone_at < later.admitted_at, (
        f"pid {pid} gone at {watch.gone_at}, the next reconcile admitted {later.admitted_at}")
    assert any(n["pid"] == pid and n["run_id"] == first for n in stonith.killed_notes(_state()))
    assert dead.verdict == "error" and "crashed" in (dead.reason or ""), dead.reason
    assert later.verdict == verdict, later.reason
    assert _version(swarm) == runs
    assert (_data(swarm) / "marker.txt").read_text() == f"before {points}\n"
    after = _known(swarm)
    assert after["intents"] == []
    events = EngineEvents(swarm, naming.stack_name(
        naming.warm_domain(naming.Recipe(APP), get_settings().base_domain)))
    try:
        time.sleep(3)
    finally:
        events.close()
    assert events.seen == [], events.seen[:3]
    assert _known(swarm) == after
    assert _report(first).finished_at == dead.finished_at
