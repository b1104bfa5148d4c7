"""Live-warm infrastructure end to end (R2, R3): the keycloak and traefik stand-ins reconciled
by real workers on the real swarm, per-run realms on a Keycloak admin API stand-in.

One private system for the module: its recipes are session copies whose newer tags each test
brings back (``keep_tags_upto``), so every scenario is "the newest tag is now X".
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import REPO, TEST_BASE, TEST_ENV, Workers, _free_port, reports_at
from fake_keycloak import FakeKeycloak
from faults import labels, ours, private_system, wait_until
from push_receiver import PushReceiver
from recipe_commits import GIT, make_commit
from recipe_tags import keep_tags_upto, session_copy

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

KC_V1, KC_PATCH, KC_BROKEN, KC_CRASH, KC_MINOR, KC_MAJOR = (
    "1.0.0+26.0.0", "1.0.1+26.0.1", "1.0.2+26.0.2", "1.0.3+26.0.3", "1.1.0+26.1.0",
    "2.0.0+27.0.0")
TR_V1, TR_PATCH, TR_BROKEN = "3.0.0+v3.1.0", "3.0.1+v3.1.1", "3.0.2+v3.1.2"
SSO = "sso-html"
KC_USER, KC_PASSWORD = "admin", "kc-" + os.urandom(6).hex()
SSO_META = """\
WARM_CANONICAL = True
HEALTH_OK = [200]
DEPLOY_TIMEOUT = 90
HTTP_TIMEOUT = 30
DEPS = ["keycloak"]
"""
SSO_TEST = '''"""The per-run realm exists on the warm keycloak while the run goes."""
import json
import os
import urllib.request


def test_the_run_has_its_own_realm() -> None:
    """CCCI_REALM is set and the realm answers on CCCI_KEYCLOAK_URL."""
    realm = os.environ["CCCI_REALM"]
    url = os.environ["CCCI_KEYCLOAK_URL"] + "/realms/" + realm
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.load(response)["realm"] == realm
    print("saw realm", realm)
'''


@dataclass
class Infra:
    workers: Workers
    recipes: Path
    examples: Path
    keycloak: FakeKeycloak


@pytest.fixture(scope="module")
def infra(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """A private system with keycloak and traefik as live-warm apps (first at their oldest
    tags), a Keycloak admin API stand-in, and an SSO-dependent recipe."""
    recipes = tmp_path_factory.mktemp("infra-recipes")
    for name in ("keycloak", "traefik", "custom-html"):
        session_copy(example_recipes / name, recipes)
    keep_tags_upto(recipes / "keycloak", KC_V1)
    keep_tags_upto(recipes / "traefik", TR_V1)
    subprocess.run([*GIT, "clone", "-q", str(recipes / "custom-html"), str(recipes / SSO)],
                   check=True)
    tests = Path(TEST_ENV["CCCI_TESTS_DIR"]) / SSO
    tests.mkdir(exist_ok=True)
    (tests / "recipe_meta.py").write_text(SSO_META)
    (tests / "test_custom.py").write_text(SSO_TEST)
    keycloak = FakeKeycloak(KC_USER, KC_PASSWORD, port=_free_port()).start()
    env = {
        "CCCI_RECIPES_DIR": str(recipes), "CCCI_INFRA_APPS": "keycloak traefik",
        "CCCI_KEYCLOAK_URL": keycloak.url, "CCCI_KEYCLOAK_ADMIN_USER": KC_USER,
        "CCCI_KEYCLOAK_ADMIN_PASSWORD": KC_PASSWORD,
        "CCCI_LEASE_TTL_S": "10", "CCCI_JANITOR_INTERVAL_S": "2",
    }
    try:
        with private_system(workers, swarm, redis_server, "infra", **env) as own:  # type: ignore[arg-type]  # env: CCCI_* only
            yield Infra(own, recipes, example_recipes, keycloak)
    finally:
        keycloak.stop()


def state_dir() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


def newest(infra: Infra, app: str, version: str) -> None:
    """Make ``version`` the newest tag of ``app``'s recipe."""
    session_copy(infra.examples / app, infra.recipes)
    keep_tags_upto(infra.recipes / app, version)


def ccci(*args: str, timeout_s: float = 300) -> tuple[int, Any]:
    """Run the ccci CLI as an operator would; (exit code, parsed --json output or text)."""
    proc = subprocess.run([sys.executable, "-m", "ccci_tasks.cli", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout_s)
    try:
        out: Any = json.loads(proc.stdout)
    except ValueError:
        out = proc.stdout + proc.stderr
    return proc.returncode, out


def reconciles() -> list[Any]:
    return [r for r in reports_at(state_dir()).all() if r.lane == "reconcile"]


def infra_state(app: str) -> Any:
    from ccci_tasks.naming import Recipe
    from ccci_tasks.state.infra import read_infra

    return read_infra(state_dir(), Recipe(app))


def services(swarm: DockerClient, app: str) -> list[Any]:
    return [s for s in swarm.services.list(filters={"label": f"ccci.recipe={app}"})
            if ours(s) and labels(s).get("ccci.kind") == "infra"]


def running_version(swarm: DockerClient, app: str) -> str | None:
    found = services(swarm, app)
    for service in found:
        for key, value in labels(service).items():
            if key.endswith(".version") and key.startswith("coop-cloud."):
                return value
    return None


def data_dir(swarm: DockerClient, app: str) -> Path:
    (volume,) = [v for v in swarm.volumes.list(filters={"label": f"ccci.recipe={app}"})
                 if ours(v)]
    return Path(volume.attrs["Mountpoint"])


class FileWatch:
    """Polls ``path`` every 50 ms in a thread (with ``with``); ``seen`` is its content the
    first time it existed with some, None if it never did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while self.seen is None and not self._stop.is_set():
            with contextlib.suppress(OSError):  # empty: created, not yet written
                self.seen = self.path.read_text() or None
            time.sleep(0.05)

    def __enter__(self) -> FileWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def alerts_of(kind: str, app: str) -> list[Any]:
    from ccci_tasks.state import alerts

    return [a for a in alerts.pending(state_dir()) + alerts.seen(state_dir())
            if a.kind == kind and a.app == app]


# --------------------------------------------------------------------------- reconcile


def test_first_start_deploys_every_app(infra: Infra, swarm: DockerClient) -> None:
    """When the infra worker starts, keycloak and traefik (never deployed) are deployed at
    their newest tag, health-checked and recorded (outcome deployed)."""
    def finished() -> list[Any]:
        found = [r for r in reconciles() if r.finished]
        return found if len(found) >= 2 else []

    done = wait_until(finished, 180, "the start-up reconciles")
    assert {r.recipe: (r.verdict, r.extra.get("outcome")) for r in done} == {
        "keycloak": ("pass", "deployed"), "traefik": ("pass", "deployed")}
    for app, version in (("keycloak", KC_V1), ("traefik", TR_V1)):
        recorded = infra_state(app)
        assert (recorded.current, recorded.last_good, recorded.status) == (version, version, "ok")
        assert recorded.domain == f"warm-{app}.{TEST_BASE}"
        assert running_version(swarm, app) == version


def test_patch_bump_is_applied(infra: Infra, swarm: DockerClient) -> None:
    """keycloak's newest tag is a patch bump: `ccci reconcile keycloak --wait --json` exits
    0 with outcome applied; current = last_good = newest; one keycloak app live at it."""
    (data_dir(swarm, "keycloak") / "marker.txt").write_text("written before the upgrades\n")
    newest(infra, "keycloak", KC_PATCH)
    code, report = ccci("reconcile", "keycloak", "--wait", "--json")
    assert code == 0, report
    assert (report["verdict"], report["outcome"]) == ("pass", "applied")
    assert (report["from"], report["to"]) == (KC_V1, KC_PATCH)
    recorded = infra_state("keycloak")
    assert (recorded.current, recorded.last_good, recorded.status) == (KC_PATCH, KC_PATCH, "ok")
    assert len(services(swarm, "keycloak")) == 1
    assert running_version(swarm, "keycloak") == KC_PATCH
    assert (data_dir(swarm, "keycloak") / "marker.txt").is_file()


@pytest.mark.parametrize(("target", "bump"), [(KC_MINOR, "minor"), (KC_MAJOR, "major")])
def test_flagged_minor_and_major_bumps_are_held(
    infra: Infra, swarm: DockerClient, push_receiver: PushReceiver, target: str, bump: str
) -> None:
    """A minor bump whose release note flags a manual migration, and a major bump: outcome
    held, exit 0, nothing redeployed, an upgrade-held alert carrying the flagged line,
    relayed once by the alerts queue."""
    push_receiver.start()
    newest(infra, "keycloak", target)
    before = [(s.id, s.attrs["Version"]["Index"]) for s in services(swarm, "keycloak")]
    held_before = len(alerts_of("upgrade-held", "keycloak"))
    code, report = ccci("reconcile", "keycloak", "--wait", "--json")
    assert code == 0, report
    assert (report["verdict"], report["outcome"], report["to"]) == ("pass", "held", target)
    assert [(s.id, s.attrs["Version"]["Index"]) for s in services(swarm, "keycloak")] == before
    assert running_version(swarm, "keycloak") == KC_PATCH
    recorded = infra_state("keycloak")
    assert (recorded.current, recorded.status) == (KC_PATCH, "held")
    alerts = alerts_of("upgrade-held", "keycloak")
    assert len(alerts) == held_before + 1
    alert = alerts[-1]
    assert target in alert.detail_text() and bump in alert.detail_text()
    assert "manual migration required" in (alert.notes or "")
    push_receiver.wait_for(alert.id, 60)
    time.sleep(3)
    assert len(push_receiver.matching(alert.id)) == 1


@pytest.mark.parametrize("broken", [KC_BROKEN, KC_CRASH])
def test_broken_upgrade_is_rolled_back_with_its_data(
    infra: Infra, swarm: DockerClient, broken: str
) -> None:
    """The newest keycloak writes into its volume (seen there while it runs), then fails its
    health gate (or crash-loops at deploy): exit 1, rolled-back; keycloak runs last_good
    again; the marker written before is there and what the broken version wrote is gone;
    alert rolled-back, recovered true."""
    newest(infra, "keycloak", KC_PATCH)
    subprocess.run([*GIT, "-C", str(infra.recipes / "keycloak"), "tag", broken,
                    _tag_commit(infra.examples / "keycloak", broken)], check=True,
                   capture_output=True)
    written = "broken.txt" if broken == KC_BROKEN else "crashed.txt"
    data = data_dir(swarm, "keycloak")
    assert not (data / written).exists()
    with FileWatch(data / written) as watch:
        code, report = ccci("reconcile", "keycloak", "--wait", "--json")
    assert watch.seen == f"written by keycloak {broken}\n", "the broken version wrote nothing"
    assert code == 1, report
    assert (report["verdict"], report["outcome"]) == ("fail", "rolled-back")
    assert [s["name"] for s in report["steps"] if s["undo"]] == ["rollback", "rollback_record"]
    assert running_version(swarm, "keycloak") == KC_PATCH
    assert data_dir(swarm, "keycloak") == data
    assert (data / "marker.txt").is_file()
    assert not (data / "broken.txt").exists() and not (data / "crashed.txt").exists()
    recorded = infra_state("keycloak")
    assert (recorded.current, recorded.last_good, recorded.status) == (
        KC_PATCH, KC_PATCH, "rolled-back")
    alert = alerts_of("rolled-back", "keycloak")[-1]
    assert alert.detail == {"attempted": broken, "last_good": KC_PATCH, "recovered": True}


def _tag_commit(repo: Path, tag: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), "rev-parse", f"{tag}^{{commit}}"],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_stateless_app_rolls_back_its_version_only(infra: Infra, swarm: DockerClient) -> None:
    """traefik (stateless): a good patch is applied; a broken one is rolled back to it
    without any snapshot being taken."""
    newest(infra, "traefik", TR_PATCH)
    code, report = ccci("reconcile", "traefik", "--wait", "--json")
    assert (code, report["outcome"]) == (0, "applied"), report
    newest(infra, "traefik", TR_BROKEN)
    code, report = ccci("reconcile", "traefik", "--wait", "--json")
    assert (code, report["outcome"]) == (1, "rolled-back"), report
    assert "snapshot" not in [s["name"] for s in report["steps"]]
    assert not (state_dir() / "infra" / "traefik" / "snapshot").exists()
    assert running_version(swarm, "traefik") == TR_PATCH
    assert alerts_of("rolled-back", "traefik")[-1].detail["recovered"] is True


def test_app_running_without_its_env_file_is_held_untouched(infra: Infra,
                                                            swarm: DockerClient) -> None:
    """The state root lost traefik's env file while traefik runs (e.g. the state root was
    wiped, as a reset by hand does): the reconcile is held, exit 0, the running service is
    not touched, and the upgrade-held alert says what to do. With the env file back, the
    next reconcile finds it up to date."""
    newest(infra, "traefik", TR_PATCH)
    env_file = state_dir() / "apps" / f"warm-traefik.{TEST_BASE}.env"
    aside = env_file.with_name(env_file.name + ".aside")
    before = [(s.id, s.attrs["Version"]["Index"]) for s in services(swarm, "traefik")]
    env_file.rename(aside)
    try:
        code, report = ccci("reconcile", "traefik", "--wait", "--json")
        assert code == 0, report
        assert (report["verdict"], report["outcome"]) == ("pass", "held")
        assert [s["name"] for s in report["steps"]] == ["admit", "hold"]
        assert [(s.id, s.attrs["Version"]["Index"]) for s in services(swarm, "traefik")] \
            == before
        assert not env_file.exists()
        alert = alerts_of("upgrade-held", "traefik")[-1]
        assert "its env file) is not in this state root" in alert.detail_text()
        assert "restore the state root (CCCI_STATE_DIR)" in alert.detail_text()
    finally:
        aside.rename(env_file)
    code, report = ccci("reconcile", "traefik", "--wait", "--json")
    assert (code, report["outcome"]) == (0, "up-to-date"), report


def test_infra_worker_killed_mid_reconcile(infra: Infra, swarm: DockerClient) -> None:
    """SIGKILL the infra worker in the middle of a stateful reconcile (the new version
    deployed and its file seen written on the volume): after a restart and the janitor,
    keycloak runs last_good with its data, and the broken version's file is gone."""
    from ccci_tasks.tasks import warm_reconcile

    newest(infra, "keycloak", KC_BROKEN)
    data = data_dir(swarm, "keycloak")
    assert not (data / "broken.txt").exists()
    run_id = warm_reconcile.delay("keycloak").id

    def at_health() -> Any:
        report = reports_at(state_dir()).load(run_id)
        return report if report and report.current and report.current.name == "health" \
            else None

    wait_until(at_health, 120, "the reconcile's health gate", poll_s=0.1)
    wait_until(lambda: (data / "broken.txt").is_file(), 60,
               f"{KC_BROKEN} to write broken.txt into the volume", poll_s=0.05)
    assert (data / "broken.txt").read_text() == f"written by keycloak {KC_BROKEN}\n"
    infra.workers.kill("infra")
    infra.workers.start("infra")
    infra.workers.wait_ready(("infra",))

    def recovered() -> Any:
        recorded = infra_state("keycloak")
        return (recorded.status == "rolled-back" and running_version(swarm, "keycloak") ==
                KC_PATCH and not (state_dir() / "intents" / "infra-keycloak.json").exists())

    wait_until(recovered, 120, "keycloak back on its last good")
    from ccci_tasks.state.reports import RunReport

    def with_verdict() -> RunReport | None:
        report = reports_at(state_dir()).load(run_id)
        return report if report is not None and report.verdict else None

    dead = wait_until(with_verdict, 60, "the dead reconcile's verdict")
    assert dead.verdict == "error" and "crashed" in (dead.reason or "")
    # The infra worker reconciles on start: let that attempt (rolled back too) finish.
    wait_until(lambda: all(r.finished for r in reconciles()), 180, "every reconcile to end")
    assert data_dir(swarm, "keycloak") == data
    assert (data / "marker.txt").is_file() and not (data / "broken.txt").exists()
    assert running_version(swarm, "keycloak") == KC_PATCH


# --------------------------------------------------------------------------- realms


def test_dependent_run_and_reconcile_never_overlap_and_realms_come_and_go(
    infra: Infra, swarm: DockerClient
) -> None:
    """A quick run of a recipe with DEPS keycloak, enqueued together with a keycloak
    reconcile: they never run at the same time; the overlay test saw CCCI_REALM and its
    realm; the realm is gone after the run, pass or fail."""
    from ccci_tasks.lanes.model import run_hex
    from ccci_tasks.naming import RunId
    from ccci_tasks.runs import wait
    from ccci_tasks.tasks import cold_run, quick_run, warm_reconcile

    seeded = wait(cold_run.delay(SSO).id, 300)
    assert seeded.verdict == "pass", seeded.reason
    newest(infra, "keycloak", KC_BROKEN)  # a long reconcile: upgrade, then roll back
    sha = make_commit(infra.recipes / SSO, "2.0.0+2.0",
                      {"compose.yml": ("Hello from custom-html", "Hello from an SSO PR")},
                      "pr-sso")
    overlap: list[str] = []
    stop = threading.Event()
    ids: dict[str, RunId] = {}

    def watch() -> None:
        while not stop.is_set():
            running = [name for name, rid in ids.items()
                       if (r := reports_at(state_dir()).load(rid)) and r.state == "running"]
            if len(running) > 1:
                overlap.append(",".join(running))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ids["quick"] = RunId(quick_run.delay(SSO, sha).id)
    ids["reconcile"] = RunId(warm_reconcile.delay("keycloak").id)
    try:
        quick = wait(ids["quick"], 300)
        rec = wait(ids["reconcile"], 300)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert quick.verdict == "pass", quick.reason
    assert (rec.verdict, rec.extra.get("outcome")) == ("fail", "rolled-back"), rec.reason
    assert overlap == []
    realm = f"{SSO}-{run_hex(ids['quick'])}"
    custom = next(s for s in quick.steps if s.name == "overlay_custom")
    assert "1 passed" in custom.detail
    assert next(s for s in quick.steps if s.name == "realm_create").detail == \
        f"created realm {realm}"
    assert realm not in infra.keycloak.realms
    assert infra.keycloak.count("POST", "/admin/realms") >= 2  # the cold run's and this one's

    bad = make_commit(infra.recipes / SSO, "2.0.0+2.0",
                      {"compose.yml": ("ccci/custom-html:2.0", "ccci/custom-html:9.9-missing")},
                      "pr-sso-bad")
    red = wait(quick_run.delay(SSO, bad).id, 300)
    assert red.verdict == "fail", red.reason
    assert f"{SSO}-{run_hex(red.run_id)}" not in infra.keycloak.realms
    assert [s.name for s in red.steps if s.undo] == ["restore", "realm_delete"]


def test_realm_reaper_deletes_exactly_the_dead_runs_realms(infra: Infra) -> None:
    """Over 1,000 realms (900 of dead runs, 50 of queued runs, master, 49 of other shapes)
    `ccci realms reap` deletes exactly the 900 with one list call; --dry-run deletes
    nothing and lists the same 900."""
    import uuid

    from ccci_tasks.admission import RunSpec, Slots
    from ccci_tasks.config import get_settings
    from ccci_tasks.lanes.model import run_hex
    from ccci_tasks.naming import Recipe, RunId

    infra.workers.kill("beat")  # no janitor round admits the queued runs meanwhile
    slots = Slots.from_settings(get_settings())
    queued = [RunId(str(uuid.uuid4())) for _ in range(50)]
    for run_id in queued:
        slots.enqueue(RunSpec(run_id, "cold", Recipe("held-back")))
    live = {f"app{i}-{run_hex(r)}" for i, r in enumerate(queued)}
    dead: set[str] = set()
    while len(dead) < 900:
        hexid = os.urandom(3).hex()
        if hexid not in {run_hex(r) for r in queued}:
            dead.add(f"{'abcdefgh'[len(dead) % 8]}x-{hexid}")
    others = {f"team-{i}" for i in range(45)} | {"ops", "Staff-1", "a-12345", "b-1234567"}
    infra.keycloak.add_realms(sorted(live | dead | others))
    try:
        infra.keycloak.reset_counts()
        code, dry = ccci("realms", "reap", "--dry-run", "--json")
        assert code == 0, dry
        assert sorted(dry["deleted"]) == sorted(dead)
        assert infra.keycloak.count("GET", "/admin/realms") == 1
        assert dead <= set(infra.keycloak.realms)
        infra.keycloak.reset_counts()
        code, done = ccci("realms", "reap", "--json")
        assert code == 0, done
        assert sorted(done["deleted"]) == sorted(dead)
        assert infra.keycloak.count("GET", "/admin/realms") == 1
        left = set(infra.keycloak.realms)
        assert not dead & left and live <= left and others <= left and "master" in left
    finally:
        for run_id in queued:
            slots.cancel(run_id)
            slots.forget(run_id)
        infra.workers.start("beat")


def test_keycloak_down(infra: Infra) -> None:
    """With the Keycloak admin API down, a run with DEPS keycloak ends error naming
    keycloak, and `ccci realms reap` exits 3."""
    from ccci_tasks.runs import wait
    from ccci_tasks.tasks import cold_run

    infra.keycloak.stop()
    try:
        report = wait(cold_run.delay(SSO, "1.1.0+1.1").id, 300)
        assert report.verdict == "error"
        reason = report.reason or ""
        assert "realm_create" in reason and "keycloak" in reason.lower()
        code, out = ccci("realms", "reap", "--json")
        assert code == 3, out
    finally:
        infra.keycloak.start()
