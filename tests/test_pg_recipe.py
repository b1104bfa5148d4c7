"""Every promise re-proven on real PostgreSQL (R12.4 with R6, R7, R9.5), each checked with
PostgreSQL's own tools on the canonical's volume while nothing of the app runs: the cluster
was shut down cleanly (``pg_controldata``), its checksums are clean (``pg_checksums
--check``) and its ``pg_dump`` equals the known-good snapshot's (``pgcheck``).

Two recipes of the same shape and different layouts run the same tests: notes-pg (an app and
``db`` with a healthcheck, PGDATA at the volume's root) and kanban-pg (an app, a worker and
``postgres`` without a healthcheck, PGDATA in a subdirectory, COMPOSE_FILE over two lines).
Each gets one private system whose canonical is seeded once by a cold run; every test leaves it
known-good. The refused promotion, the secrets of a torn-down cold app and the search for
leaked secret values run on notes-pg.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pgcheck
import pytest
from conftest import TEST_ENV, Workers, need, reports_at
from faults import fingerprint, private_system, wait_quiet, wait_until
from test_pr_commit import pr_commit

if TYPE_CHECKING:
    from docker import DockerClient

    from ccci_tasks.naming import Domain, Recipe, RunId

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TTL_S, JANITOR_S = 15, 2
CLEANUP_S = TTL_S + 2 * JANITOR_S + 30
RUN_S = 420


@dataclass(frozen=True)
class Shape:
    """What the tests need to know of a recipe's layout."""

    recipe: str
    db_service: str
    main_table: str
    rows: int
    ignore_stop: str  # the env variable that makes its database ignore its stop signal
    grace_s: float


SHAPES = {
    "notes-pg": Shape("notes-pg", "db", "notes", 5000, "DB_IGNORE_STOP", 10.0),
    "kanban-pg": Shape("kanban-pg", "postgres", "cards", 3000, "PG_IGNORE_STOP", 20.0),
}


class SecretCollector:
    """Reads every app's generated secret values while the module runs (a cold app's are
    gone after its teardown), for the search for leaks at the end."""

    def __init__(self, apps: Path) -> None:
        self.apps = apps
        self.values: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import json

        while not self._stop.is_set():
            for path in self.apps.glob("*.secrets"):
                try:
                    self.values |= set(json.loads(path.read_text()).values())
                except (OSError, ValueError):
                    continue
            time.sleep(0.1)

    def __enter__(self) -> SecretCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Pg:
    shape: Shape
    workers: Workers
    swarm: DockerClient
    state: Path
    seed: Any  # the seeding cold run's report
    known_good: pgcheck.ClusterCheck  # the snapshot's cluster
    secrets: SecretCollector
    notes: list[str] = field(default_factory=list)

    @property
    def recipe(self) -> Recipe:
        from ccci_tasks.naming import Recipe

        return Recipe(self.shape.recipe)

    @property
    def warm(self) -> Domain:
        from ccci_tasks.naming import Domain, warm_domain

        return warm_domain(self.recipe, Domain(TEST_ENV["CCCI_BASE_DOMAIN"]))

    def volume(self) -> Path:
        [volume] = [v for v in self.swarm.volumes.list(
            filters={"label": ["ccci.kind=warm", f"ccci.recipe={self.recipe}"]})
            if v.attrs["Labels"].get("ccci.domain") == self.warm]
        return Path(volume.attrs["Mountpoint"])

    def canonical(self) -> pgcheck.ClusterCheck:
        """The three checks of the canonical's volume (the app must be undeployed)."""
        return pgcheck.check(self.volume())

    def assert_known_good(self) -> None:
        """The canonical is undeployed, cleanly shut down, checksums clean, and its dump is
        the known-good's."""
        wait_quiet(self.swarm, self.state, CLEANUP_S)
        problems = self.canonical().problems(self.known_good.dump)
        assert problems == [], f"canonical of {self.recipe}: {problems}"

    def pr(self, *, bad: bool = False) -> str:
        return pr_commit(Path(TEST_ENV["CCCI_RECIPES_DIR"]) / self.recipe, bad=bad)


def _wait(run_id: str, timeout_s: float = RUN_S) -> Any:
    from ccci_tasks.runs import wait

    return wait(run_id, timeout_s)


def _quick(recipe: str, ref: str) -> RunId:
    from ccci_tasks.naming import RunId
    from ccci_tasks.tasks import quick_run

    return RunId(str(quick_run.delay(recipe, ref).id))


def _cold(recipe: str, ref: str | None = None) -> RunId:
    from ccci_tasks.naming import RunId
    from ccci_tasks.tasks import cold_run

    return RunId(str(cold_run.delay(recipe, ref).id))


def _report(state: Path, run_id: RunId) -> Any:
    return reports_at(state).load(run_id)


def _at_step(state: Path, run_id: RunId, names: tuple[str, ...], timeout_s: float = RUN_S) -> Any:
    def current() -> Any:
        report = _report(state, run_id)
        if report is not None and report.current is not None and report.current.name in names:
            return report
        return None

    return wait_until(current, timeout_s, f"run {run_id} to reach {names}", poll_s=0.02)


def _snapshot_tar(state: Path, recipe: str) -> Path:
    import json

    snap = (state / recipe / "snapshot").resolve()
    [entry] = json.loads((snap / "manifest.json").read_text())["volumes"]
    return snap / str(entry["file"])


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest, workers: Workers, swarm: DockerClient, example_recipes: Path,
       redis_server: str) -> Iterator[Pg]:
    """A private system whose canonical of the recipe (the test's parameter) is seeded by a
    cold run on latest; tests of one recipe share it."""
    if not pgcheck.available():
        need(f"PostgreSQL's tools are not installed under {pgcheck.BIN} "
             "(apt-get install postgresql-15)")
    shape = SHAPES[request.param]
    state = Path(TEST_ENV["CCCI_STATE_DIR"])
    with private_system(workers, swarm, redis_server, f"pg-{shape.recipe}",
                        CCCI_LEASE_TTL_S=str(TTL_S),
                        CCCI_JANITOR_INTERVAL_S=str(JANITOR_S)) as own, \
            SecretCollector(state / "apps") as secrets:
        seed = _wait(_cold(shape.recipe))
        assert seed.verdict == "pass", seed.reason
        assert "promoted" in (seed.reason or ""), seed.reason
        known_good = pgcheck.check_tar(_snapshot_tar(state, shape.recipe))
        yield Pg(shape, own, swarm, state, seed, known_good, secrets)


BOTH = pytest.mark.parametrize("pg", list(SHAPES), indirect=True)
NOTES = pytest.mark.parametrize("pg", ["notes-pg"], indirect=True)


# --------------------------------------------------------------------------- the lanes


@BOTH
def test_cold_run_seeds_a_clean_canonical(pg: Pg) -> None:
    """A green cold run on latest seeds the canonical: the snapshot's cluster was shut down
    cleanly, its checksums are clean and it holds thousands of rows at the newest schema;
    the canonical's volume is that same cluster; the cold app and its secrets are gone."""
    from ccci_tasks.state import canonical

    registry = canonical.read_registry(pg.state, pg.recipe)
    assert registry is not None and registry.status == "known-good"
    assert pg.known_good.problems() == []
    assert pgcheck.rows(pg.known_good.dump, pg.shape.main_table) == pg.shape.rows
    assert "schema_migrations" in pg.known_good.dump
    pg.assert_known_good()
    cold = pg.seed.domain
    leftovers = [s.name for s in pg.swarm.secrets.list(filters={"label": f"ccci.domain={cold}"})]
    assert leftovers == [], f"the cold app's secrets outlived its teardown: {leftovers}"
    assert not (pg.state / "apps" / f"{cold}.secrets").exists()
    warm = pg.swarm.secrets.list(filters={"label": f"ccci.domain={pg.warm}"})
    assert len(warm) == 1, "the canonical keeps its secret"


@BOTH
def test_quick_run_on_a_good_migration_passes(pg: Pg) -> None:
    """A quick run on a PR that adds a migration reattaches the canonical, migrates it in
    place, passes its overlays, and leaves the known-good's cluster behind."""
    before = fingerprint(pg.state, pg.recipe)
    report = _wait(_quick(pg.recipe, pg.pr()))
    assert report.verdict == "pass", report.reason
    assert fingerprint(pg.state, pg.recipe) == before
    pg.assert_known_good()


@BOTH
def test_quick_run_on_a_bad_migration_fails_and_every_row_comes_back(pg: Pg) -> None:
    """A PR whose migration deletes half of the main table, commits that, then fails: the
    app crash-loops once the stack runs, the quick run is red, and the restore brings every
    row back (the dump is the known-good's)."""
    before = fingerprint(pg.state, pg.recipe)
    report = _wait(_quick(pg.recipe, pg.pr(bad=True)))
    assert report.verdict == "fail", report.reason
    assert "crash-looping" in (report.reason or ""), report.reason
    assert "migration" in (report.reason or ""), report.reason
    assert [s.name for s in report.steps if s.undo] == ["restore", "realm_delete"]
    assert fingerprint(pg.state, pg.recipe) == before
    pg.assert_known_good()


def _db_log(pg: Pg) -> str:
    """The log of the canonical's running database container ('' while there is none)."""
    from ccci_tasks.naming import stack_name

    label = f"com.docker.swarm.service.name={stack_name(pg.warm)}_{pg.shape.db_service}"
    for container in pg.swarm.containers.list(filters={"label": label}):
        return str(container.logs().decode(errors="replace"))
    return ""


def _kill_restore_halfway(pg: Pg, run_id: RunId) -> int:
    """SIGKILL the runs worker while the run's restore has written part of the cluster;
    the number of files it had written. The restore is made a full one (no stamp), so it
    empties the volume and extracts every file."""
    import os
    import shutil
    import signal

    from ccci_tasks.state.warmsnap import STAMP_DIR

    _at_step(pg.state, run_id, ("upgrade", "assert_upgrade", "overlay_upgrade",
                                "overlay_custom"))
    shutil.rmtree(pg.state / pg.recipe / STAMP_DIR, ignore_errors=True)
    total = sum(len(files) for _, _, files in os.walk(pg.volume()))
    _at_step(pg.state, run_id, ("restore",))

    def halfway() -> int:
        have = sum(len(files) for _, _, files in os.walk(pg.volume()))
        return have if 0 < have < total * 0.9 else 0

    seen = wait_until(halfway, 120, "the restore to be part-way", poll_s=0.002)
    os.killpg(pg.workers.procs["runs"].pid, signal.SIGKILL)
    pg.workers.procs["runs"].wait(timeout=30)
    return seen


@BOTH
def test_restore_killed_halfway_is_finished_before_the_next_run_boots(pg: Pg) -> None:
    """The runs worker is SIGKILLed in the middle of a red quick run's restore (the
    cluster half-written). The next quick run finishes that restore before it deploys: its
    database starts without crash recovery, the run passes, and the canonical ends as the
    known-good."""
    before = fingerprint(pg.state, pg.recipe)
    first = _quick(pg.recipe, pg.pr(bad=True))
    seen = _kill_restore_halfway(pg, first)
    print(f"killed the restore with {seen} files of the cluster written")
    second = _quick(pg.recipe, pg.pr())
    pg.workers.start("runs")
    pg.workers.wait_ready(("runs",))
    _at_step(pg.state, second, ("upgrade", "assert_upgrade", "overlay_upgrade"))
    log = wait_until(lambda: ("ready to accept connections" in _db_log(pg)) and _db_log(pg),
                     60, "the canonical's database to start")
    assert "database system was shut down at" in log, log
    for crashed in ("not properly shut down", "redo starts at", "was interrupted"):
        assert crashed not in log, log
    assert _wait(first).verdict == "error"
    later = _wait(second)
    assert later.verdict == "pass", later.reason
    assert fingerprint(pg.state, pg.recipe) == before
    pg.assert_known_good()


# --------------------------------------------------------------------------- R12.3, secrets


@NOTES
def test_promotion_whose_database_ignores_its_stop_is_refused(pg: Pg) -> None:
    """The canonical's database ignores its stop signal: the promotion's graceful stop has
    to kill it after its grace period. The cold run ends fail naming the service and its
    grace period, an alert promotion-refused says so, registry and snapshot are
    byte-identical, and the canonical's volume is the known-good again."""
    from ccci_tasks.platform.envfile import set_keys
    from ccci_tasks.state.alerts import pending, seen

    env = pg.state / "apps" / f"{pg.warm}.env"
    original = env.read_text()
    env.write_text(set_keys(original, {pg.shape.ignore_stop: "1"}))
    before = fingerprint(pg.state, pg.recipe)
    try:
        report = _wait(_cold(pg.recipe))
    finally:
        env.write_text(original)
    assert report.verdict == "fail", report.reason
    reason = report.reason or ""
    assert "promotion refused" in reason and f"service {pg.shape.db_service} " in reason
    assert f"stop grace period of {pg.shape.grace_s:g} s" in reason
    assert [s.name for s in report.steps if s.undo] == ["restore"]
    alerts = [a for a in pending(pg.state) + seen(pg.state) if a.kind == "promotion-refused"]
    assert len(alerts) == 1 and alerts[0].app == pg.recipe
    assert fingerprint(pg.state, pg.recipe) == before
    pg.assert_known_good()


@NOTES
def test_no_secret_value_in_any_report_or_log(pg: Pg) -> None:
    """The generated secrets (the canonical's and every cold app's) appear nowhere under the
    state root (run reports and journals, alerts, the forge outbox, snapshots, app env
    files and deploy directories) but in the apps' 0600 secret files, and in no worker log."""
    values = {v.encode() for v in pg.secrets.values}
    assert len(values) >= 2, "expected the canonical's and cold apps' secret values"
    places = [p for p in pg.state.rglob("*") if p.is_file() and p.suffix != ".secrets"]
    places += list(pg.workers.logdir.glob("*.log"))
    assert any(p.name.endswith(".tar") for p in places) and len(places) > 10
    for path in places:
        data = path.read_bytes()
        assert not [v for v in values if v in data], f"{path} holds a secret value"
