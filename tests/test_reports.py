"""Run reports: create, steps, updates, verdicts, atomic changes; the broker holds them and
this host keeps a copy of those it wrote under <state>/runs/<run_id>.json."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from conftest import reports_at

from ccci_tasks import constants as c
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import RunId
from ccci_tasks.state.reports import Reports


def _run_id() -> RunId:
    return RunId(str(uuid.uuid4()))


@pytest.fixture
def store(redis_url: str, tmp_path: Path) -> Reports:
    """The reports of one host (state root ``tmp_path``) on the flushed session Redis."""
    return reports_at(tmp_path, "host-a")


def test_create_and_load(store: Reports, redis_url: str) -> None:
    """A new report is in flight (verdict None); the broker and this host's copy hold the
    same JSON, with exactly the documented keys, and the index lists it by start time."""
    run_id = _run_id()
    report = store.create(run_id, "quick", "custom-html", "abc1234",
                          "warm-custom-html.ci.localhost")
    assert report.verdict is None and report.steps == ()
    assert store.load(run_id) == report
    raw = json.loads(store.copy_path(run_id).read_text())
    assert set(raw) == {"run_id", "lane", "recipe", "ref", "domain", "verdict", "reason",
                        "started_at", "admitted_at", "finished_at", "current", "steps", "node",
                        "rev", "updated"}
    assert report.state == "queued" and report.rev == 1 and report.node is None
    assert raw["started_at"].endswith("Z")
    client = redis.Redis.from_url(redis_url)
    assert json.loads(client.get(c.KEY_REPORT + run_id) or b"") == raw
    assert client.zscore(c.KEY_REPORTS, run_id) == report.started_at.timestamp()


def test_create_is_idempotent(store: Reports) -> None:
    """Creating a report twice (a redelivered first step) keeps the first."""
    run_id = _run_id()
    first = store.create(run_id, "cold", "custom-html")
    assert store.create(run_id, "quick", "other") == first


def test_run_id_must_be_a_uuid(store: Reports) -> None:
    """A run id that is not a Celery task id is refused before any file is touched."""
    for bad in ("../../etc/passwd", "abc", str(uuid.uuid4()).upper(), ""):
        with pytest.raises(InvalidInput, match="run id"):
            store.create(RunId(bad), "cold", "custom-html")  # parsed first
    assert not store.directory.exists()


def test_bad_lane_refused(store: Reports) -> None:
    """A lane must look like a lane name (the lane registry checks it exists at submission)."""
    for bad in ("Fast!", "", "../x"):
        with pytest.raises(InvalidInput):
            store.create(_run_id(), bad, "custom-html")


def test_admission_names_the_node(store: Reports) -> None:
    """``mark_admitted`` makes the run running and names this host's node, once."""
    run_id = _run_id()
    store.create(run_id, "quick", "custom-html")
    store.mark_admitted(run_id)
    admitted = store.load(run_id)
    assert admitted is not None and admitted.state == "running" and admitted.node == "host-a"
    store.mark_admitted(run_id)
    assert store.load(run_id) == admitted


def test_finished_report_takes_no_more_steps(store: Reports) -> None:
    """Once a run has its verdict, a late step (one that lost its lease) is not recorded,
    and only the first verdict is returned by end."""
    run_id = _run_id()
    store.create(run_id, "quick", "custom-html")
    now = datetime.now(UTC)
    assert store.start_step(run_id, "admit", "t1", now) is not None
    running = store.load(run_id)
    assert running is not None and running.state == "running"
    assert running.current is not None and running.current.name == "admit"
    assert store.end(run_id, "error", "crashed") is not None
    assert store.end(run_id, "pass", "late") is None
    assert store.record_step(run_id, "deploy", "t2", now, 1.0, True, "late") is None
    assert store.start_step(run_id, "deploy", "t2", now) is None
    final = store.load(run_id)
    assert final is not None and final.steps == () and final.current is None
    assert (final.verdict, final.reason, final.state) == ("error", "crashed", "finished")


def test_steps_recorded_in_order_and_replaced_on_redelivery(store: Reports) -> None:
    """Steps are kept in start order; the same (name, task id) replaces its entry."""
    run_id = _run_id()
    store.create(run_id, "quick", "custom-html")
    t1 = datetime(2026, 1, 1, 3, 0, 0, tzinfo=UTC)
    t2 = datetime(2026, 1, 1, 3, 0, 5, tzinfo=UTC)
    store.record_step(run_id, "upgrade", "t-2", t2, 2.5, True)
    store.record_step(run_id, "deploy", "t-1", t1, 4.25, False, "boom")
    report = store.record_step(run_id, "deploy", "t-1", t1, 4.0, True, "ok")
    assert report is not None
    assert [(s.name, s.ok, s.detail) for s in report.steps] == [
        ("deploy", True, "ok"), ("upgrade", True, "")]
    assert store.load(run_id) == report


def test_update_and_finish(store: Reports) -> None:
    """Updates change allowed fields only; the first verdict wins."""
    run_id = _run_id()
    store.create(run_id, "cold", "custom-html")
    report = store.update(run_id, domain="cust-1a2b3c.ci.localhost", ref="1.1.0+1.1")
    assert report.domain == "cust-1a2b3c.ci.localhost"
    with pytest.raises(InvalidInput, match="cannot update"):
        store.update(run_id, verdict="pass")
    for core in ("node", "rev", "updated"):
        with pytest.raises(InvalidInput, match="cannot set"):
            store.set_fields(run_id, **{core: "x"})
    done = store.finish(run_id, "fail", "did not move")
    assert (done.verdict, done.reason) == ("fail", "did not move")
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert store.finish(run_id, "pass", "late") == done
    with pytest.raises(InvalidInput, match="verdict"):
        store.finish(_run_id(), "green")


def test_missing_report_is_an_error_for_writers(store: Reports) -> None:
    """Recording a step of an unknown run is a StateError; loading it is None."""
    run_id = _run_id()
    assert store.load(run_id) is None
    with pytest.raises(StateError, match=run_id):
        store.record_step(run_id, "deploy", None, datetime.now(UTC), 1.0, True)


def test_concurrent_steps_are_all_kept(store: Reports) -> None:
    """Read-modify-write in a transaction: 8 threads x 10 steps lose nothing."""
    run_id = _run_id()
    store.create(run_id, "sweep", None)

    def worker(n: int) -> None:
        for i in range(10):
            store.record_step(run_id, f"s{n}-{i}", None, datetime.now(UTC), 0.1, True)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = store.load(run_id)
    assert report is not None and len(report.steps) == 80 and report.rev == 81


def test_list_reports(store: Reports, tmp_path: Path) -> None:
    """Listing returns every report by start time and names, never raises on, an
    unreadable copy."""
    ids = [_run_id() for _ in range(3)]
    for n, run_id in enumerate(ids):
        store.create(run_id, "cold", "custom-html",
                     started_at=datetime(2026, 1, 1, 3, 0, 3 - n, tzinfo=UTC))
    broken = store.directory / f"{_run_id()}.json"
    broken.write_text("{broken")
    listing = store.listing()
    assert [r.run_id for r in listing.records] == list(reversed(ids))
    assert listing.broker_error is None
    assert len(listing.problems) == 1 and str(broken) in listing.problems[0]
    assert [r.run_id for r in reports_at(tmp_path / "nowhere").all()] == list(reversed(ids))
