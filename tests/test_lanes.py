"""The lanes end to end: real Redis, real worker processes, the real swarm, the example recipe.

The module seeds the custom-html canonical once with a first cold run on latest, then runs
quick runs against it; every quick run must leave the known-good byte-identical.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TEST_ENV, Workers, flush_redis, ours, remove_ccci_objects
from recipe_commits import make_commit

from ccci_tasks.naming import Recipe
from ccci_tasks.state.reports import RunReport

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = Recipe("custom-html")
RUN_TIMEOUT_S = 300


def _wipe(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _fingerprint(state: Path) -> dict[str, str]:
    """sha256 of the registry and of every file of the current snapshot."""
    files = [state / RECIPE / "canonical.json"]
    snap = state / RECIPE / "snapshot"
    files += sorted(p for p in snap.resolve().rglob("*") if p.is_file())
    return {str(p.relative_to(state.resolve()) if p.is_relative_to(state.resolve()) else p):
            hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _services(client: DockerClient, kind: str | None = None, recipe: str | None = RECIPE
              ) -> list[Any]:
    labels = [f"ccci.kind={kind}" if kind else "ccci.kind"]
    labels += [f"ccci.recipe={recipe}"] if recipe else []
    return [s for s in client.services.list(filters={"label": labels}) if ours(s)]


def _volumes(client: DockerClient, kind: str, recipe: str | None = RECIPE) -> list[Any]:
    labels = [f"ccci.kind={kind}"] + ([f"ccci.recipe={recipe}"] if recipe else [])
    return [v for v in client.volumes.list(filters={"label": labels}) if ours(v)]


def _wait(run_id: str) -> Any:
    from ccci_tasks.runs import wait

    return wait(run_id, RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def seeded(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str
           ) -> Iterator[RunReport]:
    """A clean system, then the first cold run on latest of the enrolled example."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.tasks import cold_run

    get_settings.cache_clear()
    flush_redis(redis_server)
    remove_ccci_objects(swarm)
    _wipe(Path(TEST_ENV["CCCI_STATE_DIR"]))
    report = _wait(cold_run.delay(RECIPE).id)
    yield report
    remove_ccci_objects(swarm)


@pytest.fixture
def state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


def test_first_cold_run_seeds_the_canonical(seeded: RunReport, swarm: DockerClient,
                                            state: Path) -> None:
    """The first green cold run on latest writes canonical.json and a snapshot, and leaves
    no cold app or cold volume behind."""
    from ccci_tasks.state import canonical, warmsnap

    assert seeded.verdict == "pass", seeded.reason
    registry = canonical.read_registry(state, RECIPE)
    assert registry is not None
    assert registry.version == "2.0.0+2.0"
    assert registry.status == "known-good"
    manifest = warmsnap.read_current(state, RECIPE)
    assert manifest is not None and manifest.version == "2.0.0+2.0"
    assert [v.name for v in manifest.volumes]
    assert (state / RECIPE / "snapshot" / "manifest.json").is_file()
    assert _services(swarm, "cold") == []
    assert _volumes(swarm, "cold") == []
    assert _services(swarm, "warm") == []  # the canonical is left data-warm: undeployed
    assert _volumes(swarm, "warm")
    names = [s.name for s in seeded.steps]
    assert names[:3] == ["admit", "new_app", "install"]
    assert "teardown" in names and names.index("teardown") < names.index("promote_snapshot")
    upgrade_tier = next(s for s in seeded.steps if s.name == "upgrade_tier")
    assert "skipped: no canonical" in upgrade_tier.detail


def test_quick_run_with_a_good_ref_keeps_known_good(
    seeded: RunReport, swarm: DockerClient, state: Path, example_recipes: Path
) -> None:
    """A quick run of a good PR head passes, leaves registry and snapshot byte-identical,
    and leaves the canonical undeployed with its volume kept."""
    from ccci_tasks.tasks import quick_run

    before = _fingerprint(state)
    sha = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("Hello from custom-html", "Hello from the good PR")},
                      "pr-good")
    report = _wait(quick_run.delay(RECIPE, sha).id)
    assert report.verdict == "pass", report.reason
    assert report.lane == "quick"
    names = [s.name for s in report.steps]
    assert names == ["admit", "verify", "deploy_canonical", "health_check", "realm_create",
                     "upgrade", "assert_upgrade", "overlay_upgrade", "overlay_custom",
                     "restore", "realm_delete"]
    assert sha[:8] in next(s.detail for s in report.steps if s.name == "assert_upgrade")
    assert _fingerprint(state) == before
    assert _services(swarm, "warm") == []
    assert _volumes(swarm, "warm")


def test_quick_run_with_a_bad_ref_restores_known_good(
    seeded: RunReport, swarm: DockerClient, state: Path, example_recipes: Path
) -> None:
    """A quick run whose head names a missing image is red at once with the reason (the
    image is named: the deploy was failed, not waited out to DEPLOY_TIMEOUT), restores the
    canonical's data, and leaves registry and snapshot byte-identical."""
    from ccci_tasks.tasks import quick_run

    before = _fingerprint(state)
    volume = _volumes(swarm, "warm")[0]
    data = Path(volume.attrs["Mountpoint"])
    listing_before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    sha = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("ccci/custom-html:2.0", "ccci/custom-html:9.9-missing")},
                      "pr-bad")
    started = time.monotonic()
    # Something the bad head "wrote": it must be gone after the restore.
    (data / "www" / "written-by-bad-head.txt").write_text("junk")
    report = _wait(quick_run.delay(RECIPE, sha).id)
    elapsed = time.monotonic() - started
    assert report.verdict == "fail", report.reason
    assert "9.9-missing" in (report.reason or "")
    assert "timed out" not in (report.reason or ""), report.reason
    print(f"\na quick run of a missing image ended {report.verdict} in {elapsed:.1f} s")
    assert elapsed < 120, f"a missing image must fail fast, took {elapsed:.0f} s"
    assert _fingerprint(state) == before
    assert _services(swarm, "warm") == []
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == listing_before
    assert not (data / "www" / "written-by-bad-head.txt").exists()


def test_quick_runs_are_serial_and_fifo(
    seeded: RunReport, swarm: DockerClient, state: Path, example_recipes: Path
) -> None:
    """With MAX_TESTS=1, four quick runs enqueued at once never overlap and finish in FIFO
    order; a watcher sampling the swarm every 100 ms never sees two apps live."""
    from ccci_tasks.tasks import quick_run

    sha = make_commit(example_recipes / RECIPE, "2.0.0+2.0",
                      {"compose.yml": ("Hello from custom-html", "Hello from the FIFO PR")},
                      "pr-fifo")
    most_live = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most_live
        while not stop.is_set():
            stacks = {s.attrs["Spec"]["Labels"].get("com.docker.stack.namespace")
                      for s in _services(swarm)}
            most_live = max(most_live, len(stacks))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        ids = [quick_run.delay(RECIPE, sha).id for _ in range(4)]
        reports = [_wait(run_id) for run_id in ids]
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert [r.verdict for r in reports] == ["pass"] * 4, [r.reason for r in reports]
    assert most_live <= 1
    spans = [(r.steps[0].started_at, r.finished_at) for r in reports]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None and end <= start, "runs overlapped or ran out of FIFO order"


def test_quick_run_without_canonical_runs_cold(
    seeded: RunReport, swarm: DockerClient, example_recipes: Path, state: Path
) -> None:
    """A quick run of a recipe that has no canonical runs a full cold run instead, and the
    report says so."""
    from ccci_tasks.tasks import quick_run

    other = "plain-html"
    dest = example_recipes / other
    if not dest.exists():
        subprocess.run(["git", "clone", "-q", str(example_recipes / RECIPE), str(dest)],
                       check=True)
    sha = subprocess.run(["git", "-C", str(dest), "rev-parse", "2.0.0+2.0^{commit}"],
                         check=True, capture_output=True, text=True).stdout.strip()
    report = _wait(quick_run.delay(other, sha).id)
    assert report.verdict == "pass", report.reason
    assert report.lane == "cold"
    assert "no canonical for plain-html" in (report.reason or "")
    assert "fell back to a full cold run" in (report.reason or "")
    assert (state / other / "canonical.json").exists() is False  # a PR run never promotes
    assert _services(swarm, "cold", other) == [] and _volumes(swarm, "cold", other) == []


@pytest.mark.parametrize(
    ("recipe", "ref", "needle"),
    [
        ("../x", "0123abcd", "'../x'"),
        (RECIPE, "--foo", "'--foo'"),
        (RECIPE, "$(id)", "'$(id)'"),
        ("no-such-recipe", "0123abcd", "unknown recipe 'no-such-recipe'"),
        (RECIPE, "feedbeefcafe", "feedbeefcafe"),
    ],
)
def test_bad_input_is_an_error_and_deploys_nothing(
    workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str,
    recipe: str, ref: str, needle: str,
) -> None:
    """Bad input through quick_run.delay gives verdict error with a clear reason naming the
    value, and nothing is deployed."""
    from ccci_tasks.tasks import quick_run

    services_before = {s.id for s in _services(swarm)}
    report = _wait(quick_run.delay(recipe, ref).id)
    assert report.verdict == "error"
    assert needle in (report.reason or "")
    assert report.steps == ()
    assert {s.id for s in _services(swarm)} == services_before


def test_steps_send_progress_events(seeded: RunReport, example_recipes: Path) -> None:
    """Every step of a quick run sends a ccci-step event with its step name, recipe and
    domain (what Flower shows), and records itself in the run report."""
    from ccci_tasks.celery_app import app
    from ccci_tasks.tasks import quick_run

    events: list[dict[str, Any]] = []
    ready = threading.Event()

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(
            connection, handlers={"ccci-step": events.append},
            node_id=f"ccci-test-{time.monotonic_ns()}",
        )

        def listen() -> None:
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=False)

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        ready.wait(5)
        time.sleep(1)  # let the receiver bind its queue before the run starts
        sha = subprocess.run(["git", "-C", str(example_recipes / RECIPE), "rev-parse",
                              "2.0.0+2.0^{commit}"], check=True, capture_output=True,
                             text=True).stdout.strip()
        report = _wait(quick_run.delay(RECIPE, sha).id)
        deadline = time.monotonic() + 10
        while len(events) < len(report.steps) and time.monotonic() < deadline:
            time.sleep(0.2)
        receiver.should_stop = True
        listener.join(timeout=5)
    assert report.verdict == "pass", report.reason
    mine = [e for e in events if e.get("run_id") == report.run_id]
    assert [e["step"] for e in mine] == [s.name for s in report.steps]
    assert {e["recipe"] for e in mine} == {RECIPE}
    assert {e["domain"] for e in mine} == {report.domain}
