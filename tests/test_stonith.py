"""Failpoints, STONITH and owned intent records, without a worker (R13).

The failpoint parser names every bad part; a worker refuses to start with a bad value or in
production; a point fires once per worker, in a step only, after writing its record. The
janitor's kill finds a stopped process by its holder record and a detached command by its
tag, never a recycled pid, and never the process of a run that still holds its lease. An
intent record changes only by its owner, the janitor, or a run that takes it over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from ccci_tasks import failpoints, stonith
from ccci_tasks.errors import ConfigError
from ccci_tasks.naming import Domain, Recipe, RunId
from ccci_tasks.state import intents

RUN = RunId("0f1e2d3c-0000-4000-8000-000000000001")
OTHER = RunId("0f1e2d3c-0000-4000-8000-000000000002")


# --------------------------------------------------------------------------- failpoints


def test_failpoints_parse_points_steps_and_actions() -> None:
    """Every point, with and without @step, and every action parse; blanks are skipped."""
    parsed = failpoints.parse(
        "before-engine-change@restore=pause; mid-restore=kill;;before-snapshot-swap=sleep:1.5;"
        "before-verdict=pause")
    assert parsed == {
        ("before-engine-change", "restore"): failpoints.Action("pause"),
        ("mid-restore", None): failpoints.Action("kill"),
        ("before-snapshot-swap", None): failpoints.Action("sleep", 1.5),
        ("before-verdict", None): failpoints.Action("pause"),
    }


@pytest.mark.parametrize(("value", "named"), [
    ("before-engine=pause", "'before-engine'"),
    ("mid-restore", "no '=<action>'"),
    ("mid-restore=stop", "'stop'"),
    ("mid-restore=sleep:-1", "'sleep:-1'"),
    ("mid-restore=sleep:soon", "'sleep:soon'"),
    ("before-engine-change@Restore!=pause", "'Restore!'"),
])
def test_failpoints_refuse_a_bad_value_naming_the_part(value: str, named: str) -> None:
    """A malformed value is a ConfigError that names the variable and the bad part."""
    with pytest.raises(ConfigError) as info:
        failpoints.parse(value)
    assert "CCCI_FAILPOINTS" in str(info.value) and named in str(info.value)


def _start_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "workers.runs"], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=60, check=False)


def test_worker_refuses_failpoints_in_production_and_bad_values() -> None:
    """A worker started with CCCI_FAILPOINTS under CCCI_ENV=production, or with a bad value,
    exits 2 before it starts, naming the variable."""
    prod = _start_worker({"CCCI_ENV": "production", "CCCI_FAILPOINTS": "mid-restore=pause"})
    assert prod.returncode == 2
    assert "CCCI_FAILPOINTS" in prod.stderr and "production" in prod.stderr
    bad = _start_worker({"CCCI_FAILPOINTS": "mid-restore=explode"})
    assert bad.returncode == 2 and "'explode'" in bad.stderr


def test_a_point_fires_once_per_worker_inside_a_step_only(state_dir: Path) -> None:
    """Outside a step nothing fires; inside, the point writes its record and acts once, and
    the pool process that replaces a killed one (same worker) does not fire it again."""
    from ccci_tasks.config import get_settings

    get_settings.cache_clear()
    try:
        failpoints.load({"CCCI_FAILPOINTS": "before-verdict=sleep:0;mid-restore@other=kill"})
        failpoints.fire("before-verdict")  # not in a step
        records = state_dir / "failpoints"
        assert not list(records.glob("*.json"))
        with failpoints.in_step(RUN, "restore"):
            assert failpoints.armed("before-verdict")
            assert not failpoints.armed("mid-restore")  # armed for another step only
            failpoints.fire("mid-restore")
            failpoints.fire("before-verdict")
            assert not failpoints.armed("before-verdict")
            failpoints.fire("before-verdict")
        record = json.loads((records / f"{os.getpid()}.json").read_text())
        assert record["point"] == "before-verdict" and record["step"] == "restore"
        assert record["run_id"] == RUN and record["pid"] == os.getpid() and record["at"]
        assert len(list((records / ".claimed").iterdir())) == 1
    finally:
        failpoints.load({})


# --------------------------------------------------------------------------- STONITH


def _sleeper(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)


def _gone(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> bool:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _record(state: Path, run_id: str, token: int, pid: int, start: int, node: str = "n1") -> Path:
    path = state / "holders" / run_id / f"{pid}-{start}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id, "token": token, "node": node, "pid": pid,
                                "start": start, "kind": "step", "what": "deploy",
                                "at": "2026-01-01T00:00:00.000000Z"}))
    return path


def test_kill_stale_kills_a_stopped_holder_and_a_detached_tagged_command(
    state_dir: Path,
) -> None:
    """A stopped process recorded as a dead run's holder and a command of that run started
    in a session of its own (only its tag names it) are SIGKILLed and found gone, with a
    note each; the holder record goes. A command tagged by another system is left alone."""
    holder = _sleeper()
    os.kill(holder.pid, signal.SIGSTOP)
    start = stonith.proc_start(holder.pid)
    assert start is not None
    path = _record(state_dir, RUN, 7, holder.pid, start)
    command = _sleeper({**os.environ,
                        stonith.ENV_TAG: f"{stonith.system_id(state_dir)}:{RUN}:7"})
    other_system = _sleeper({**os.environ, stonith.ENV_TAG: f"0123456789ab:{RUN}:7"})
    try:
        time.sleep(0.1)
        done = stonith.kill_stale(state_dir, "n1", live=set)
        assert _gone(holder) and _gone(command)
        assert not _gone(other_system, 0.3), "a command of another system was killed"
        assert {k["pid"] for k in done.killed} == {holder.pid, command.pid}
        assert not done.stuck_runs and not done.problems
        assert not path.exists()
        notes = stonith.killed_notes(state_dir)
        assert {n["pid"] for n in notes} == {holder.pid, command.pid}
        assert all(str(n["gone_at"]) >= str(n["killed_at"]) for n in notes)  # ISO times
    finally:
        for proc in (holder, command, other_system):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_kill_stale_spares_live_runs_recycled_pids_and_other_nodes(state_dir: Path) -> None:
    """The process of a run that still holds its lease, a record whose start time does not
    match the pid's (a recycled pid), and a record of another node are never killed."""
    live = _sleeper()
    recycled = _sleeper()
    foreign = _sleeper()
    try:
        _record(state_dir, RUN, 3, live.pid, stonith.proc_start(live.pid) or 0)
        stale_path = _record(state_dir, OTHER, 4, recycled.pid,
                             (stonith.proc_start(recycled.pid) or 0) + 1)
        _record(state_dir, OTHER, 4, foreign.pid, stonith.proc_start(foreign.pid) or 0,
                node="n2")
        done = stonith.kill_stale(state_dir, "n1", live=lambda: {(RUN, 3)})
        assert done.killed == []
        assert not _gone(live, 0.3) and not _gone(recycled, 0.1) and not _gone(foreign, 0.1)
        assert not stale_path.exists(), "the record of a process that is gone stays"
    finally:
        for proc in (live, recycled, foreign):
            proc.kill()
            proc.wait()


def test_holding_records_the_step_and_tags_its_commands(state_dir: Path) -> None:
    """While a step holds its run, its record exists and every command it starts carries the
    run's tag and is recorded while it runs; afterwards both are gone."""
    from ccci_tasks.proc import run

    with stonith.holding(state_dir, "n1", RUN, 9, "deploy") as holder:
        node, pid, start = holder.split()
        assert (node, int(pid)) == ("n1", os.getpid())
        assert (state_dir / "holders" / RUN / f"{pid}-{start}.json").is_file()
        folder = state_dir / "holders" / RUN
        # The command's record is written just after it started: it waits for it (5 s).
        script = (f'for i in $(seq 100); do ls {folder} | grep -q "^$$-" && break; '
                  f'sleep 0.05; done; echo "${stonith.ENV_TAG}"; ls {folder}')
        out = run(["sh", "-c", script], timeout_s=10, text=True)
        tag, *files = out.stdout.split()
        assert tag == f"{stonith.system_id(state_dir)}:{RUN}:9" and len(files) == 2, out.stdout
    assert not (state_dir / "holders" / RUN).exists()
    outside = run(["sh", "-c", f'echo "${stonith.ENV_TAG}"'], timeout_s=10, text=True)
    assert outside.stdout.strip() == ""


# --------------------------------------------------------------------------- intent owners


def _intent(run_id: RunId, token: int) -> intents.Intent:
    return intents.Intent(resource="canon:custom-html", kind="dirty", run_id=run_id,
                          domain=Domain("warm-custom-html.t.localhost"), token=token)


def test_intent_records_change_only_by_their_owner(state_dir: Path) -> None:
    """Another run (or the same run with an older token) can neither overwrite nor clear a
    record; its owner can; the janitor (owner None) and a run taking over can."""
    intents.write_intent(state_dir, _intent(RUN, 5))
    intents.write_intent(state_dir, _intent(RUN, 5))  # the owner again: fine
    for stale in (_intent(OTHER, 6), _intent(RUN, 4)):
        with pytest.raises(intents.IntentOwned, match=f"belongs to run {RUN} \\(token 5\\)"):
            intents.write_intent(state_dir, stale)
        with pytest.raises(intents.IntentOwned):
            intents.clear_intent(state_dir, "canon:custom-html", owner=stale.owner)
    kept = intents.read_intent(state_dir, "canon:custom-html")
    assert kept is not None and kept.owner == intents.Owner(RUN, 5)
    intents.write_intent(state_dir, _intent(OTHER, 6), take_over=True)
    assert intents.clear_intent(state_dir, "canon:custom-html", owner=intents.Owner(OTHER, 6))
    intents.write_intent(state_dir, _intent(RUN, 5))
    assert intents.clear_intent(state_dir, "canon:custom-html", owner=None)


def test_release_drops_the_record_of_its_own_run_only(state_dir: Path) -> None:
    """A step ending (or parking) its run drops its record before the lease goes; a release
    for another run (ended by a dispatch inside this step) keeps it."""
    folder = state_dir / "holders" / RUN
    with stonith.holding(state_dir, "n1", RUN, 9, "realm_delete"):
        stonith.release(OTHER)
        assert len(list(folder.glob("*.json"))) == 1
        stonith.release(RUN)
        assert not folder.exists()
        assert stonith.tagged_env({}) == {}
    assert not folder.exists()


# --------------------------------------------------------------------------- several nodes


@pytest.mark.docker
def test_a_dead_run_last_held_on_another_node_waits_for_that_nodes_janitor(
    redis_url: str, settings: object, swarm: object
) -> None:
    """A reaped run whose lease names another node as its holder keeps its resources (this
    node cannot kill that node's processes) and the janitor says whom it waits for; once
    the holder is this node's, the same round cleans it up and frees them."""
    import uuid

    import redis

    from ccci_tasks import constants as c
    from ccci_tasks.admission import Resource, RunSpec, Slots
    from ccci_tasks.config import Settings
    from ccci_tasks.lanes import janitor
    from ccci_tasks.platform import get_platform

    assert isinstance(settings, Settings)
    slots = Slots.from_settings(settings)
    client = redis.Redis.from_url(redis_url)
    platform = get_platform(settings)

    def dead_run(node: str) -> str:
        spec = slots.enqueue(RunSpec(RunId(str(uuid.uuid4())), "cold", Recipe("custom-html"),
                                     resources=(Resource.slot(),)))
        (admitted,) = slots.admit()
        assert slots.renew(spec.run_id, admitted.token, f"{node} 1 1")
        client.zadd(c.KEY_SLOTS, {spec.run_id: 1.0})  # its lease ran out long ago
        return spec.run_id

    other = dead_run("elsewhere")
    report = janitor.run(settings, platform)
    assert [x.state for x in slots.occupying() if x.run_id == other] == ["reaping"]
    assert any(f"run {other} was last held on node elsewhere" in p for p in report.problems)
    client.hset(c.KEY_RUN_SPEC + other, "holder", f"{settings.node} 1 1")
    report = janitor.run(settings, platform)
    assert [r["run_id"] for r in report.recovered] == [other]
    assert slots.occupying() == []
