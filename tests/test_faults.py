"""Faults, one promise at a time (R6.9, R9.5): a corrupt canonical, bad CI config, a restore
cut off halfway, a worker stopped past its lease, a broker that lost its data, a step that
kills its own worker.

Every test runs against one private system (short leases, a fast janitor, beat) whose
custom-html canonical is seeded once for the module; each test leaves it known-good.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
from conftest import TEST_ENV, Workers, reports_at
from faults import (
    PidWatch,
    Watcher,
    fingerprint,
    live_stacks,
    ours,
    private_system,
    volumes_match_snapshot,
    wait_quiet,
    wait_until,
    warm_volumes,
)
from recipe_commits import make_commit

from ccci_tasks.naming import Recipe, RunId

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = Recipe("custom-html")
TTL_S, JANITOR_S = 10, 2
# A dead run is cleaned up within its lease, two janitor rounds and the removal itself (R9.5).
# The lease and the rounds are fixed waits; the removal (a cold app, or the canonical put back
# and undeployed) takes about REMOVAL_S on an idle machine: the waits and bounds allow ten
# times that.
REMOVAL_S = 6
CLEANUP_S = TTL_S + 2 * JANITOR_S + 10 * REMOVAL_S
# A run refused at the door (bad registry, bad recipe_meta.py) ends within about 0.5 s when
# idle: waits and bounds allow twenty times that.
REFUSED_S = 10


@pytest.fixture(scope="module")
def system(workers: Workers, swarm: DockerClient, example_recipes: Path,
           redis_server: str) -> Iterator[Workers]:
    """A private system with short leases and a fast janitor, its canonical seeded."""
    with private_system(workers, swarm, redis_server, "faults",
                        CCCI_LEASE_TTL_S=str(TTL_S),
                        CCCI_JANITOR_INTERVAL_S=str(JANITOR_S)) as own:
        report = _wait(_cold(), 300)
        assert report.verdict == "pass", report.reason
        yield own


@pytest.fixture
def state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


@pytest.fixture
def pr_sha(example_recipes: Path) -> str:
    """A PR head that changes the served content."""
    return make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                       {"compose.yml": ("Hello from custom-html", "Hello from a fault PR")},
                       f"pr-fault-{time.monotonic_ns()}")


def _wait(run_id: str, timeout_s: float = 180) -> Any:
    from ccci_tasks.runs import wait

    return wait(run_id, timeout_s)


def _quick(ref: str) -> RunId:
    from ccci_tasks.tasks import quick_run

    return RunId(str(quick_run.delay(RECIPE, ref).id))


def _cold(recipe: str = RECIPE, ref: str | None = None) -> RunId:
    from ccci_tasks.tasks import cold_run

    return RunId(str(cold_run.delay(recipe, ref).id))


def _report(state: Path, run_id: RunId) -> Any:
    return reports_at(state).load(run_id)


def _at_step(state: Path, run_id: RunId, names: tuple[str, ...], timeout_s: float = 120) -> Any:
    def current() -> Any:
        report = _report(state, run_id)
        if report is not None and report.current is not None and report.current.name in names:
            return report
        return None

    return wait_until(current, timeout_s, f"run {run_id} to reach {names}", poll_s=0.05)


def utc() -> Any:
    from ccci_tasks.state.clock import utc_now

    return utc_now()


def _runs_pgid(system: Workers) -> int:
    return system.procs["runs"].pid  # started with start_new_session: its own group


def _warm_services(swarm: DockerClient) -> list[Any]:
    return [s for s in swarm.services.list(filters={"label": "ccci.kind=warm"}) if ours(s)]


# --------------------------------------------------------------------------- corrupt state


def test_flipped_byte_is_refused_before_anything_is_deployed(
    system: Workers, swarm: DockerClient, state: Path, pr_sha: str
) -> None:
    """One flipped byte in a snapshot tar: the quick run is refused (error, naming volume
    and hashes) before any service exists, the volume is untouched, a snapshot-corrupt alert
    exists; a cold run on latest re-seeds the canonical and a quick run then passes."""
    from ccci_tasks.state import alerts, warmsnap

    manifest = warmsnap.read_current(state, RECIPE)
    assert manifest is not None
    tar = (state / RECIPE / "snapshot").resolve() / manifest.volumes[0].file
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    volume = warm_volumes(swarm, RECIPE)[manifest.volumes[0].name]
    from faults import dir_listing

    listing = dir_listing(volume)
    with Watcher(swarm) as watcher:
        report = _wait(_quick(pr_sha), 60)
    assert report.verdict == "error"
    assert (report.reason or "").startswith("refused:"), report.reason
    assert manifest.volumes[0].name in report.reason and manifest.volumes[0].sha256 in report.reason
    assert [s.name for s in report.steps] == ["admit", "verify"]
    assert watcher.most == 0, "a service was deployed for a corrupt canonical"
    assert dir_listing(volume) == listing
    assert [a for a in alerts.pending(state) + alerts.seen(state)
            if a.kind == "snapshot-corrupt" and a.app == RECIPE]
    reseed = _wait(_cold(), 300)
    assert reseed.verdict == "pass", reseed.reason
    assert "promoted" in (reseed.reason or "")
    warmsnap.verify(state, RECIPE)
    quick = _wait(_quick(pr_sha))
    assert quick.verdict == "pass", quick.reason
    assert volumes_match_snapshot(swarm, state, RECIPE) == []


def test_garbage_registry_is_refused_within_seconds_and_cold_reseeds(
    system: Workers, swarm: DockerClient, state: Path, pr_sha: str
) -> None:
    """A canonical.json that does not parse: the quick run ends error "refused:" at the door
    (no step ran, in seconds); a cold run on latest still works and re-seeds a valid
    canonical."""
    from ccci_tasks.state import canonical

    (state / RECIPE / "canonical.json").write_text("{not json")
    started = time.monotonic()
    report = _wait(_quick(pr_sha), REFUSED_S)
    took = time.monotonic() - started
    print(f"\nrefused in {took:.1f} s: {report.reason}")
    assert took < REFUSED_S
    assert report.verdict == "error" and (report.reason or "").startswith("refused:")
    assert report.steps == () and report.admitted_at is None
    assert "canonical.json" in report.reason
    assert _warm_services(swarm) == []
    reseed = _wait(_cold(), 300)
    assert reseed.verdict == "pass", reseed.reason
    registry = canonical.read_registry(state, RECIPE)
    assert registry is not None and registry.version == "2.0.0+2.0"
    assert canonical.quarantined(state, RECIPE) is None


def test_bad_recipe_meta_is_refused_within_seconds(
    system: Workers, state: Path, pr_sha: str
) -> None:
    """A recipe_meta.py that is not literal assignments: quick and cold runs end error
    "refused:" naming the file at the door (no step ran, in seconds), nothing is
    deployed."""
    meta = Path(TEST_ENV["CCCI_TESTS_DIR"]) / RECIPE / "recipe_meta.py"
    good = meta.read_text()
    meta.write_text(good + "\nimport os\n")
    try:
        for run_id in (_quick(pr_sha), _cold()):
            started = time.monotonic()
            report = _wait(run_id, REFUSED_S)
            took = time.monotonic() - started
            print(f"\nrefused in {took:.1f} s: {report.reason}")
            assert took < REFUSED_S
            assert report.verdict == "error" and (report.reason or "").startswith("refused:")
            assert "recipe_meta.py" in report.reason and report.steps == ()
    finally:
        meta.write_text(good)


# --------------------------------------------------------------------------- cut-off undo


def test_restore_killed_halfway_is_finished_before_the_next_run_deploys(
    system: Workers, swarm: DockerClient, state: Path, pr_sha: str
) -> None:
    """The runs worker is SIGKILLed in the middle of a quick run's restore (its volume
    half-written). The next quick run is queued at once; before it deploys the canonical
    the restore is completed, so it boots the known-good data, and afterwards the volume
    equals the snapshot."""
    from ccci_tasks import naming, snapshots
    from ccci_tasks.config import get_settings
    from ccci_tasks.platform import get_platform

    # A known-good snapshot with many files, so a restore takes seconds.
    settings = get_settings()
    platform = get_platform(settings)
    warm = naming.warm_domain(RECIPE, settings.base_domain)
    volume = warm_volumes(swarm, RECIPE)["data"]
    bulk = volume / "www" / "bulk"
    bulk.mkdir()
    count = 30000
    for i in range(count):
        (bulk / f"f{i:05d}.txt").write_text(f"known-good {i}\n")
    manifest = snapshots.snapshot(platform, state, RECIPE, warm, "2.0.0+2.0")
    assert manifest.version == "2.0.0+2.0"

    first = _quick(pr_sha)
    _at_step(state, first, ("upgrade", "assert_upgrade", "overlay_upgrade"))
    gone = volume.parent / f"bulk-gone-{first[:8]}"  # beside the volume's _data: same fs
    os.rename(bulk, gone)  # what the PR head "did", at once: a slow rm would race the restore
    _at_step(state, first, ("restore",))

    def halfway() -> int:
        have = len(os.listdir(bulk)) if bulk.is_dir() else 0
        return have if 0 < have < count else 0

    seen = wait_until(halfway, 60, "the restore to be halfway", poll_s=0.005)
    os.killpg(_runs_pgid(system), signal.SIGKILL)
    system.procs["runs"].wait(timeout=30)
    print(f"killed the restore with {seen} of {count} files back")
    # Only now: removing 30,000 files takes long enough for the restore to finish meanwhile.
    subprocess.run(["rm", "-rf", str(gone)], check=True)
    second = _quick(pr_sha)
    system.start("runs")
    system.wait_ready(("runs",))

    base = platform.base_url(warm)
    booted = _at_step(state, second, ("health_check", "realm_create", "upgrade"))
    assert booted is not None
    answer = httpx.get(f"{base}/bulk/f{count - 1:05d}.txt", headers={"Host": warm}, timeout=10)
    assert answer.status_code == 200 and answer.text == f"known-good {count - 1}\n"
    assert _wait(first).verdict == "error"
    later = _wait(second)
    assert later.verdict == "pass", later.reason
    wait_quiet(swarm, state, CLEANUP_S)
    assert volumes_match_snapshot(swarm, state, RECIPE) == []


def _holder_of(state: Path, run_id: str) -> tuple[int, str] | None:
    """(pid, step) of the process running a step of the run now, from its holder record."""
    for path in (state / "holders" / run_id).glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("kind") == "step":
            return int(record["pid"]), str(record["what"])
    return None


def _chaos_version(swarm: DockerClient) -> str | None:
    """The chaos-version label of the canonical's app service, if deployed."""
    for service in _warm_services(swarm):
        for key, value in (service.attrs["Spec"].get("Labels") or {}).items():
            if key.endswith(".chaos-version"):
                return str(value)
    return None


def test_worker_stopped_past_its_lease_acts_no_more(
    system: Workers, swarm: DockerClient, state: Path, pr_sha: str, example_recipes: Path
) -> None:
    """SIGSTOP a whole runs worker (master and pool) while it runs a step of a quick run,
    with a second runs worker up and a run of another PR head queued for the same
    canonical. The resources really change hands during the stop: past the lease the
    janitor SIGKILLs the stopped step (noted) before the second run is admitted, and the
    second run deploys its own head on the other worker while the first is still stopped.
    After SIGCONT the stopped run writes nothing more to its journal or report, the second
    run passes with its head deployed to the end, and the known-good is intact."""
    from ccci_tasks import stonith
    from ccci_tasks.lanes.fence import journal_path
    from ccci_tasks.state.clock import parse_iso

    other = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                        {"compose.yml": ("Hello from custom-html", "Hello from the next PR")},
                        f"pr-next-{time.monotonic_ns()}")
    system.start("runs2")
    system.wait_ready(("runs2",))
    before = fingerprint(state, RECIPE)
    try:
        with Watcher(swarm) as watcher:
            first = _quick(pr_sha)
            stopped = None
            for _ in range(5):  # stop it inside a step (not between two)
                _at_step(state, first, ("deploy_canonical", "health_check", "realm_create",
                                        "upgrade", "assert_upgrade"))
                found = wait_until(lambda: _holder_of(state, first), 30, "a step's holder")
                group = os.getpgid(found[0])
                os.killpg(group, signal.SIGSTOP)
                if _holder_of(state, first) == found:
                    stopped = found
                    break
                os.killpg(group, signal.SIGCONT)
            assert stopped is not None, "could not stop the worker inside a step"
            pid, step = stopped
            stop_at = utc()
            watch = PidWatch(pid)
            lines_at_stop = journal_path(state, first).read_text().splitlines()
            at_stop = _report(state, first)
            steps_at_stop = [s.name for s in at_stop.steps]
            second = _quick(other)
            try:
                wait_until(lambda: any(n["pid"] == pid for n in stonith.killed_notes(state)),
                           CLEANUP_S, f"the janitor to kill the stopped pid {pid}")
                # The second run deploys its head while the first worker is still stopped.
                wait_until(lambda: other.startswith(_chaos_version(swarm) or "-"),
                           CLEANUP_S + 60, "the second run's head live on the canonical")
                assert watch.gone_at is not None
            finally:
                os.killpg(group, signal.SIGCONT)
            later = _wait(second)
            time.sleep(2)
    finally:
        system.kill("runs2")
        del system.procs["runs2"]
    dead = _report(state, first)
    assert dead.verdict == "error" and "crashed" in (dead.reason or ""), dead.reason
    assert later.verdict == "pass", later.reason
    assert watch.gone_at < _report(state, second).admitted_at
    assert [s.name for s in dead.steps] == steps_at_stop, "a step was recorded after the stop"
    # Stopped inside that step (its holder record was there before and after the stop).
    assert at_stop.current is None or at_stop.current.name == step
    lines = journal_path(state, first).read_text().splitlines()
    assert lines == lines_at_stop, "the stopped run tried to act after its stop"
    assert all(parse_iso(json.loads(x)["ts"]) < stop_at for x in lines)
    assert watcher.most <= 1
    wait_quiet(swarm, state, CLEANUP_S)
    assert fingerprint(state, RECIPE) == before
    assert volumes_match_snapshot(swarm, state, RECIPE) == []


# --------------------------------------------------------------------------- broker


def _cold_app_gone(swarm: DockerClient, hexid: str) -> bool:
    objs = swarm.services.list(filters={"label": f"ccci.run={hexid}"}) + \
        swarm.volumes.list(filters={"label": f"ccci.run={hexid}"})
    return not [o for o in objs if ours(o)]


@pytest.mark.parametrize("lane", ["cold", "quick"])
def test_broker_flushed_mid_run(
    system: Workers, swarm: DockerClient, state: Path, pr_sha: str, redis_server: str, lane: str
) -> None:
    """FLUSHALL in the middle of a run: within lease TTL + 2 janitor rounds (+ the removal)
    no app of the run is live (a cold app removed; the canonical restored and undeployed),
    its report (read back from this host's copy, its first steps kept) ends error "lost: ..."
    (the janitor found nothing that explains it), MAX_TESTS is never exceeded, and the next
    run passes."""
    from ccci_tasks.lanes.model import run_hex

    before = fingerprint(state, RECIPE)
    with Watcher(swarm) as watcher:
        run_id = _cold(RECIPE, pr_sha) if lane == "cold" else _quick(pr_sha)
        _at_step(state, run_id, ("health_check", "overlay_install", "upgrade_tier")
                 if lane == "cold" else ("health_check", "upgrade", "assert_upgrade"))
        redis.Redis.from_url(redis_server).flushall()
        flushed = time.monotonic()
        report = _wait(run_id, CLEANUP_S + 30)
        if lane == "cold":
            wait_until(lambda: _cold_app_gone(swarm, run_hex(run_id)), CLEANUP_S,
                       "the cold app to be removed")
        wait_quiet(swarm, state, CLEANUP_S)
        took = time.monotonic() - flushed
        print(f"{lane} run cleaned up {took:.1f} s after the flush: {report.reason}")
        assert took < CLEANUP_S
        later = _wait(_quick(pr_sha) if lane == "quick" else _cold(RECIPE, pr_sha))
    assert report.verdict == "error", report.reason
    assert (report.reason or "").startswith("lost: "), report.reason
    # the steps before the flush were read back from this host's copy of the report
    assert [s.name for s in report.steps][:1] == ["admit"], report.steps
    assert later.verdict == "pass", later.reason
    assert watcher.most <= 1
    assert fingerprint(state, RECIPE) == before
    assert volumes_match_snapshot(swarm, state, RECIPE) == []


# --------------------------------------------------------------------------- poison


KILLER = '''"""A custom test that kills the process running the step (as the OOM killer would)."""
import os
import signal


def test_kill_my_worker() -> None:
    """SIGKILL the worker process running this step."""
    os.kill(os.getppid(), signal.SIGKILL)
'''


def test_a_step_that_kills_its_worker_ends_its_run(
    system: Workers, swarm: DockerClient, state: Path, example_recipes: Path
) -> None:
    """A step whose delivery kills its worker (its custom test SIGKILLs it) is delivered
    3 times; then its run ends error naming the step, its app is torn down, and the run
    queued behind it passes."""
    recipe = "poison-html"
    repo = example_recipes / recipe
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(example_recipes / RECIPE), str(repo)],
                       check=True)
    tests = Path(TEST_ENV["CCCI_TESTS_DIR"]) / recipe
    tests.mkdir(exist_ok=True)
    (tests / "recipe_meta.py").write_text("HEALTH_OK = [200]\nDEPLOY_TIMEOUT = 90\n")
    (tests / "test_custom.py").write_text(KILLER)
    poisoned = _cold(recipe)
    behind = _cold(RECIPE, "1.1.0+1.1")
    report = _wait(poisoned, 240)
    assert report.verdict == "error"
    assert "overlay_custom" in (report.reason or "")
    assert "delivered 3 times" in (report.reason or "")
    assert [s.name for s in report.steps if s.undo] == ["teardown", "realm_delete"]
    later = _wait(behind, 240)
    assert later.verdict == "pass", later.reason
    wait_quiet(swarm, state, CLEANUP_S)
    assert not [s for s in swarm.services.list(filters={"label": f"ccci.recipe={recipe}"})
                if ours(s)]
    assert live_stacks(swarm) == set()
