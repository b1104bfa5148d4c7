"""Run reports from every host: two hosts (two state roots, two node names) on one broker.

A run's report is created by the host that takes the request and written on by the node that
runs it; every host reads it whole (the library, ``ccci runs list/show`` as a subprocess with
the other host's environment, a run page served for the other host). Faults: writers in
several processes at once, a flushed broker mid-run, a corrupt broker value, a stopped Redis.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import REPO, SESSION_DIR, TEST_ENV, _free_port, need, reports_at
from pydantic import SecretStr
from web_support import FakeStep, bridge_process, make_run

from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import BrokerError, StateError, WaitTimeout
from ccci_tasks.naming import RunId
from ccci_tasks.state import reports
from ccci_tasks.state.clock import iso
from ccci_tasks.state.reports import Reports, RunReport

A, B = "host-a", "host-b"


@dataclasses.dataclass(frozen=True)
class Hosts:
    a: Reports
    b: Reports
    client: redis.Redis

    def env(self, store: Reports, **extra: str) -> dict[str, str]:
        """The environment of ``store``'s host (its state root and node name)."""
        return {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO),
                "CCCI_STATE_DIR": str(store.state_dir), "CCCI_NODE": store.node, **extra}


@pytest.fixture
def hosts(redis_url: str, tmp_path: Path) -> Hosts:
    """Two hosts of one system: their own state roots and node names, one (flushed) Redis."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    return Hosts(reports_at(tmp_path / "a", A), reports_at(tmp_path / "b", B),
                 redis.Redis.from_url(redis_url))


def _run_id() -> RunId:
    return RunId(str(uuid.uuid4()))


def _submitted(hosts: Hosts, lane: str = "quick") -> RunId:
    """A run whose request host A took: its report is created there."""
    run_id = _run_id()
    hosts.a.create(run_id, lane, "custom-html", "0" * 40)
    return run_id


def _steps(store: Reports, run_id: RunId, *names: str) -> None:
    """Steps run by ``store``'s host, each started, then recorded."""
    for name in names:
        at = datetime.now(UTC)
        store.start_step(run_id, name, f"task-{name}", at)
        store.record_step(run_id, name, f"task-{name}", at, 0.5, True, f"{name} done")


def ccci(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccci_tasks.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- one run, two hosts


def test_a_run_taken_on_a_and_run_on_b_is_read_whole_on_both(hosts: Hosts) -> None:
    """Created on A, admitted, run and ended on B: both hosts read the same complete report
    (B's node, every step, the verdict); each keeps a copy of what it wrote, and A's older
    copy never hides B's newer version: A's read brings its copy up to date."""
    run_id = _submitted(hosts)
    hosts.b.mark_admitted(run_id)
    _steps(hosts.b, run_id, "deploy", "upgrade")
    assert hosts.b.end(run_id, "pass", "passed: upgraded") is not None
    stale = hosts.a.records.read_copy(run_id)
    assert stale is not None and stale.rev == 1 and stale.node is None
    assert [r.run_id for r in hosts.b.all()] == [run_id] == [r.run_id for r in hosts.a.all()]
    on_a, on_b = hosts.a.load(run_id), hosts.b.load(run_id)
    assert on_a == on_b and on_a is not None
    assert (on_a.node, on_a.verdict, [s.name for s in on_a.steps]) == \
        (B, "pass", ["deploy", "upgrade"])
    assert on_a.rev == 7  # created, admitted, 2 x (started, recorded), ended
    assert hosts.a.records.read_copy(run_id) == on_a == hosts.b.records.read_copy(run_id)


def test_the_cli_of_b_lists_and_shows_a_run_of_a(hosts: Hosts) -> None:
    """``ccci runs list`` and ``runs show`` with B's environment show a run only A wrote
    (queued) and one B ran, each with its node; ``--json`` carries ``node``."""
    queued = _submitted(hosts)
    ran = _submitted(hosts, lane="cold")
    hosts.b.mark_admitted(ran)
    _steps(hosts.b, ran, "deploy")
    hosts.b.end(ran, "fail", "deploy: did not converge")
    env = hosts.env(hosts.b)
    listed = ccci(env, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["run_id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {queued, ran}
    assert (rows[queued]["state"], rows[queued]["node"]) == ("queued", None)
    assert (rows[ran]["verdict"], rows[ran]["node"]) == ("fail", B)
    text = ccci(env, "runs", "list")
    assert text.returncode == 0 and "warning" not in text.stderr
    [line] = [x for x in text.stdout.splitlines() if x.startswith(ran)]
    assert f" {B} " in line and "fail" in line
    shown = ccci(env, "runs", "show", queued)
    assert shown.returncode == 0, shown.stderr
    assert f"run {queued}: quick custom-html" in shown.stdout and "node:     -" in shown.stdout
    as_json = json.loads(ccci(hosts.env(hosts.a), "runs", "show", ran, "--json").stdout)
    assert as_json["node"] == B and [s["name"] for s in as_json["steps"]] == ["deploy"]


def test_a_run_page_served_for_b_shows_a_run_of_a(hosts: Hosts) -> None:
    """The bridge of host B lists and shows a run that host A ran (its node on the page);
    the steps' output stays on A, and B's page says where it is kept."""
    run_id = _run_id()
    make_run(hosts.a.state_dir, run_id, [FakeStep("admit"), FakeStep("upgrade", output="moved")],
             node=A)
    with bridge_process("hosts-b", CCCI_STATE_DIR=str(hosts.b.state_dir), CCCI_NODE=B) as url:
        listing = httpx.get(f"{url}/runs", timeout=20)
        assert listing.status_code == 200 and run_id in listing.text and A in listing.text
        page = httpx.get(f"{url}/runs/{run_id}", timeout=20)
        assert page.status_code == 200
        assert f'<dd class="mono">{A}</dd>' in page.text and "upgrade" in page.text
        assert f"Its output is kept on node {A}." in page.text
        doc = httpx.get(f"{url}/runs/{run_id}.json", timeout=20).json()
        assert doc["node"] == A and doc["verdict"] == "pass"
    with bridge_process("hosts-a", CCCI_STATE_DIR=str(hosts.a.state_dir), CCCI_NODE=A) as url:
        own = httpx.get(f"{url}/runs/{run_id}", timeout=20).text
        assert "moved" in own and "kept on node" not in own


# --------------------------------------------------------------------------- faults

WRITER = """
import sys
from datetime import UTC, datetime

from ccci_tasks.config import Settings
from ccci_tasks.naming import RunId
from ccci_tasks.state import reports
from ccci_tasks.state.clock import iso

store = reports.at(Settings())
run_id, tag, count = RunId(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    store.record_step(run_id, f"{tag}-{i}", None, datetime.now(UTC), 0.1, True)
"""


def test_concurrent_step_updates_from_processes_on_two_hosts_lose_nothing(hosts: Hosts) -> None:
    """Four writer processes, two per host, 25 steps each into one report: all 100 are
    kept, and each host's copy is the newest version it wrote."""
    run_id = _submitted(hosts, lane="sweep")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, run_id, f"{host.node}-{n}", "25"],
                              env=hosts.env(host), cwd=REPO)
             for host in (hosts.a, hosts.b) for n in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    report = hosts.b.load(run_id)
    assert report is not None and len(report.steps) == 100 and report.rev == 101
    assert len({s.name for s in report.steps}) == 100
    copies = [host.records.read_copy(run_id) for host in (hosts.a, hosts.b)]
    assert report in copies  # the last writer's copy is the broker's version
    for copy in copies:
        assert copy is not None and len(copy.steps) == copy.rev - 1


def test_flushed_broker_mid_run_reads_back_the_copies_and_the_run_ends(hosts: Hosts) -> None:
    """FLUSHALL between two steps: A (which only created the run) reads its own older copy
    back and writes it to the broker; B's next step starts from B's newer copy, so no step
    is lost; the run ends with its verdict and both hosts read it whole; after another
    flush either host's listing puts the ended report back, index entry included."""
    run_id = _submitted(hosts)
    hosts.b.mark_admitted(run_id)
    _steps(hosts.b, run_id, "deploy")
    hosts.client.flushall()
    back = hosts.a.load(run_id)
    assert back is not None and back.rev == 1 and back.steps == ()  # A's copy, written back
    assert hosts.client.exists(c.KEY_REPORT + run_id)
    assert [r.run_id for r in hosts.b.all()] == [run_id]
    _steps(hosts.b, run_id, "upgrade")
    ended = hosts.b.end(run_id, "fail", "upgrade: did not move")
    assert ended is not None and [s.name for s in ended.steps] == ["deploy", "upgrade"]
    assert hosts.a.load(run_id) == ended == hosts.b.load(run_id)
    assert ended.node == B and ended.verdict == "fail"
    hosts.client.flushall()
    assert hosts.a.all() == [ended]  # A's copy followed the run to its end
    assert hosts.client.zscore(c.KEY_REPORTS, run_id) == ended.started_at.timestamp()
    assert hosts.b.load(run_id) == ended


def test_a_corrupt_broker_value_falls_back_or_is_named(hosts: Hosts, tmp_path: Path) -> None:
    """Bad JSON under a report's key: a host with a copy reads its copy (and writes it back);
    a host without one gets an error naming the key, its listing leaves the run out and says
    so (the CLI exits 0 with a warning), and ``runs show`` exits 3 naming the key."""
    run_id = _submitted(hosts)
    hosts.b.mark_admitted(run_id)
    key = c.KEY_REPORT + run_id
    hosts.client.set(key, b"{not json")
    healed = hosts.b.load(run_id)
    assert healed is not None and healed.node == B
    assert RunReport.model_validate_json(hosts.client.get(key) or b"") == healed
    hosts.client.set(key, b"{not json")
    other = reports_at(tmp_path / "c", "host-c")
    with pytest.raises(StateError, match=f"key {key}.*no copy"):
        other.load(run_id)
    with pytest.raises(StateError, match="not changed"):
        other.end(run_id, "error", "x")
    fine = _submitted(hosts)
    listing = other.listing()
    assert [r.run_id for r in listing.records] == [fine]
    assert len(listing.problems) == 1 and key in listing.problems[0]
    env = hosts.env(other)
    listed = ccci(env, "runs", "list")
    assert listed.returncode == 0 and fine in listed.stdout and run_id not in listed.stdout
    assert "left out" in listed.stderr and key in listed.stderr
    shown = ccci(env, "runs", "show", run_id)
    assert shown.returncode == 3 and key in shown.stderr


@contextmanager
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test alone (so that stopping it stops no one else's)."""
    binary = shutil.which("redis-server")
    if binary is None:
        need("redis-server is not installed")
        raise AssertionError  # unreachable
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--logfile", str(SESSION_DIR / "redis-r.log")])
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def test_stopped_redis_shows_this_hosts_runs_with_a_warning(tmp_path: Path) -> None:
    """With the broker stopped: ``runs list`` still shows this host's runs (exit 0) and warns
    that they are this host's only, naming the broker error; ``runs show`` shows this host's
    copy with the same warning; a write raises BrokerError naming the operation."""
    with private_redis() as (url, proc):
        settings = Settings().model_copy(update={"broker_url": SecretStr(url),
                                                 "state_dir": tmp_path, "node": A})
        store = reports.at(settings)
        run_id = _run_id()
        store.create(run_id, "cold", "custom-html")
        store.mark_admitted(run_id)
        proc.terminate()
        proc.wait(timeout=10)
        env = {**os.environ, **TEST_ENV, "CCCI_BROKER_URL": url, "CCCI_STATE_DIR": str(tmp_path),
               "CCCI_NODE": A}
        listed = ccci(env, "runs", "list")
        assert listed.returncode == 0, listed.stderr
        assert run_id in listed.stdout
        assert f"the runs of this host only (node {A})" in listed.stderr
        port = url.rsplit(":", 1)[1].split("/")[0]
        assert f"Redis at 127.0.0.1:{port}/0 failed while listing the run reports" \
            in listed.stderr
        as_json = ccci(env, "runs", "list", "--json")
        assert [row["run_id"] for row in json.loads(as_json.stdout)] == [run_id]
        shown = ccci(env, "runs", "show", run_id)
        assert shown.returncode == 0 and f"node:     {A}" in shown.stdout
        assert "this host's copy of the run only" in shown.stderr
        assert ccci(env, "runs", "show", str(uuid.uuid4())).returncode == 3
        with pytest.raises(BrokerError, match=f"writing run report {run_id}"):
            store.end(run_id, "error", "x")


# --------------------------------------------------------------------------- the broker's share


def test_the_broker_drops_old_finished_reports_and_the_copies_stay(hosts: Hosts,
                                                                   tmp_path: Path) -> None:
    """A report that ended longer ago than the broker keeps reports is dropped from the
    broker (a recent one stays); the hosts that hold a copy still list and read it, without
    writing it back; a host without a copy no longer sees it."""
    keep_s = 2.0
    a, b = (dataclasses.replace(h, broker_days=keep_s / 86400) for h in (hosts.a, hosts.b))
    done = _submitted(hosts)
    b.mark_admitted(done)
    b.end(done, "pass")
    assert [r.verdict for r in a.all()] == ["pass"]  # A's janitor lists every round
    time.sleep(keep_s + 0.5)
    recent = _submitted(hosts)
    assert b.prune() == [done]
    assert not hosts.client.exists(c.KEY_REPORT + done)
    assert hosts.client.zscore(c.KEY_REPORTS, done) is None
    for host in (a, b):
        assert [(r.run_id, r.verdict) for r in host.all()] == [(done, "pass"), (recent, None)]
        found = host.load(done)
        assert found is not None and found.verdict == "pass"
    assert not hosts.client.exists(c.KEY_REPORT + done)  # not written back
    assert [r.run_id for r in reports_at(tmp_path / "c", "host-c").all()] == [recent]
    assert b.prune() == []


def test_a_report_written_before_nodes_still_loads(hosts: Hosts) -> None:
    """A report without ``node``, ``rev`` and ``updated`` (written before several hosts) loads
    from the broker and from a copy; ``runs show`` says its node is unknown."""
    run_id, hour_ago = _run_id(), datetime.now(UTC) - timedelta(hours=1)
    old: dict[str, Any] = {
        "run_id": run_id, "lane": "cold", "recipe": "custom-html", "ref": None, "domain": None,
        "verdict": "pass", "reason": "passed", "started_at": iso(hour_ago),
        "admitted_at": iso(hour_ago), "finished_at": iso(hour_ago + timedelta(minutes=5)),
        "current": None, "steps": []}
    hosts.a.directory.mkdir(parents=True)
    hosts.a.copy_path(run_id).write_text(json.dumps(old))
    from_copy = hosts.a.load(run_id)
    assert from_copy is not None and (from_copy.node, from_copy.rev) == (None, 0)
    from_broker = hosts.b.load(run_id)  # A wrote its copy back
    assert from_broker == from_copy
    shown = ccci(hosts.env(hosts.b), "runs", "show", run_id)
    assert shown.returncode == 0 and "node:     -" in shown.stdout


def test_a_writer_that_never_gets_its_turn_times_out_naming_the_report(hosts: Hosts) -> None:
    """When another writer changes the report before each try, a change gives up after its
    turn timeout with an error naming the report, its key and the tries; nothing is written."""
    run_id = _submitted(hosts)
    store = dataclasses.replace(hosts.b, turn_timeout_s=0.5)
    before = hosts.client.get(c.KEY_REPORT + run_id)

    def meddled(current: RunReport | None) -> RunReport | None:
        hosts.client.set(c.KEY_REPORT + run_id, before or b"")  # another writer came first
        assert current is not None
        return current.model_copy(update={"reason": "mine"})

    with pytest.raises(WaitTimeout, match=rf"write run report {run_id} \(key "
                       rf"{c.KEY_REPORT}{run_id}\).*before each of \d+ tries"):
        store.records.change(run_id, meddled)
    report = hosts.a.load(run_id)
    assert report is not None and report.reason is None
    assert not store.copy_path(run_id).exists()


def test_started_at_orders_the_listing_across_hosts(hosts: Hosts) -> None:
    """Every host lists every run oldest first, whichever host created it."""
    now = datetime.now(UTC)
    ids = []
    for n, host in enumerate((hosts.b, hosts.a, hosts.b)):
        run_id = _run_id()
        host.create(run_id, "cold", "custom-html", started_at=now - timedelta(minutes=10 - n))
        ids.append(run_id)
    assert [r.run_id for r in hosts.a.all()] == ids == [r.run_id for r in hosts.b.all()]


def test_unfinished_runs_are_listed_apart(hosts: Hosts) -> None:
    """The runs without a verdict (what the janitor and the sweep look for) are listed from
    their own index: a run A took and B ended is not among them on A, whose copy is brought
    up to date; after a flush each host's unfinished copies are (so nothing in flight is
    forgotten), and its finished ones wait for a full listing."""
    ended, running = _submitted(hosts), _submitted(hosts)
    for run_id in (ended, running):
        hosts.b.mark_admitted(run_id)
    hosts.b.end(ended, "pass")
    assert hosts.client.zrange(c.KEY_REPORTS_OPEN, 0, -1) == [running.encode()]
    assert [r.run_id for r in hosts.a.all(unfinished=True)] == [running]
    copy = hosts.a.records.read_copy(ended)
    assert copy is not None and copy.verdict == "pass"
    hosts.client.flushall()
    assert [r.run_id for r in hosts.b.all(unfinished=True)] == [running]
    assert hosts.client.zrange(c.KEY_REPORTS, 0, -1) == [running.encode()]
    assert {r.run_id for r in hosts.b.all()} == {ended, running}
    assert hosts.client.zcard(c.KEY_REPORTS) == 2
