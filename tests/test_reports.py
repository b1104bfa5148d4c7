"""Run reports <state>/runs/<run_id>.json: create, steps, updates, verdicts, locking."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import RunId
from ccci_tasks.state.reports import (
    create_report,
    end_report,
    finish_report,
    list_reports,
    load_report,
    record_step,
    start_step,
    update_report,
)


def _run_id() -> RunId:
    return RunId(str(uuid.uuid4()))


def test_create_and_load(tmp_path: Path) -> None:
    """A new report is in flight (verdict None) and its file has exactly the documented keys."""
    run_id = _run_id()
    report = create_report(tmp_path, run_id, "quick", "custom-html", "abc1234",
                           "warm-custom-html.ci.localhost")
    assert report.verdict is None and report.steps == ()
    assert load_report(tmp_path, run_id) == report
    raw = json.loads((tmp_path / "runs" / f"{run_id}.json").read_text())
    assert set(raw) == {"run_id", "lane", "recipe", "ref", "domain", "verdict", "reason",
                        "started_at", "admitted_at", "finished_at", "current", "steps"}
    assert report.state == "queued"
    assert raw["started_at"].endswith("Z")


def test_create_is_idempotent(tmp_path: Path) -> None:
    """Creating a report twice (a redelivered first step) keeps the first."""
    run_id = _run_id()
    first = create_report(tmp_path, run_id, "cold", "custom-html")
    assert create_report(tmp_path, run_id, "quick", "other") == first


def test_run_id_must_be_a_uuid(tmp_path: Path) -> None:
    """A run id that is not a Celery task id is refused before any file is touched."""
    for bad in ("../../etc/passwd", "abc", str(uuid.uuid4()).upper(), ""):
        with pytest.raises(InvalidInput, match="run id"):
            create_report(tmp_path, RunId(bad), "cold", "custom-html")  # parsed first
    assert not (tmp_path / "runs").exists()


def test_bad_lane_refused(tmp_path: Path) -> None:
    """A lane must look like a lane name (the lane registry checks it exists at submission)."""
    for bad in ("Fast!", "", "../x"):
        with pytest.raises(InvalidInput):
            create_report(tmp_path, _run_id(), bad, "custom-html")


def test_finished_report_takes_no_more_steps(tmp_path: Path) -> None:
    """Once a run has its verdict, a late step (one that lost its lease) is not recorded,
    and only the first verdict is returned by end_report."""
    run_id = _run_id()
    create_report(tmp_path, run_id, "quick", "custom-html")
    now = datetime.now(UTC)
    assert start_step(tmp_path, run_id, "admit", "t1", now) is not None
    running = load_report(tmp_path, run_id)
    assert running is not None and running.state == "running"
    assert running.current is not None and running.current.name == "admit"
    assert end_report(tmp_path, run_id, "error", "crashed") is not None
    assert end_report(tmp_path, run_id, "pass", "late") is None
    assert record_step(tmp_path, run_id, "deploy", "t2", now, 1.0, True, "late") is None
    assert start_step(tmp_path, run_id, "deploy", "t2", now) is None
    final = load_report(tmp_path, run_id)
    assert final is not None and final.steps == () and final.current is None
    assert (final.verdict, final.reason, final.state) == ("error", "crashed", "finished")


def test_steps_recorded_in_order_and_replaced_on_redelivery(tmp_path: Path) -> None:
    """Steps are kept in start order; the same (name, task id) replaces its entry."""
    run_id = _run_id()
    create_report(tmp_path, run_id, "quick", "custom-html")
    t1 = datetime(2026, 1, 1, 3, 0, 0, tzinfo=UTC)
    t2 = datetime(2026, 1, 1, 3, 0, 5, tzinfo=UTC)
    record_step(tmp_path, run_id, "upgrade", "t-2", t2, 2.5, True)
    record_step(tmp_path, run_id, "deploy", "t-1", t1, 4.25, False, "boom")
    report = record_step(tmp_path, run_id, "deploy", "t-1", t1, 4.0, True, "ok")
    assert report is not None
    assert [(s.name, s.ok, s.detail) for s in report.steps] == [
        ("deploy", True, "ok"), ("upgrade", True, "")]
    assert load_report(tmp_path, run_id) == report


def test_update_and_finish(tmp_path: Path) -> None:
    """Updates change allowed fields only; the first verdict wins."""
    run_id = _run_id()
    create_report(tmp_path, run_id, "cold", "custom-html")
    report = update_report(tmp_path, run_id, domain="cust-1a2b3c.ci.localhost", ref="1.1.0+1.1")
    assert report.domain == "cust-1a2b3c.ci.localhost"
    with pytest.raises(InvalidInput, match="cannot update"):
        update_report(tmp_path, run_id, verdict="pass")
    done = finish_report(tmp_path, run_id, "fail", "did not move")
    assert (done.verdict, done.reason) == ("fail", "did not move")
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert finish_report(tmp_path, run_id, "pass", "late") == done
    with pytest.raises(InvalidInput, match="verdict"):
        finish_report(tmp_path, _run_id(), "green")


def test_missing_report_is_an_error_for_writers(tmp_path: Path) -> None:
    """Recording a step of an unknown run is a StateError; loading it is None."""
    run_id = _run_id()
    assert load_report(tmp_path, run_id) is None
    with pytest.raises(StateError, match=run_id):
        record_step(tmp_path, run_id, "deploy", None, datetime.now(UTC), 1.0, True)


def test_concurrent_steps_are_all_kept(tmp_path: Path) -> None:
    """Read-modify-write under the lock: 8 threads x 10 steps lose nothing."""
    run_id = _run_id()
    create_report(tmp_path, run_id, "sweep", None)

    def worker(n: int) -> None:
        for i in range(10):
            record_step(tmp_path, run_id, f"s{n}-{i}", None, datetime.now(UTC), 0.1, True)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = load_report(tmp_path, run_id)
    assert report is not None and len(report.steps) == 80


def test_list_reports(tmp_path: Path) -> None:
    """Listing returns every report by start time and skips unreadable files."""
    ids = [_run_id() for _ in range(3)]
    for n, run_id in enumerate(ids):
        create_report(tmp_path, run_id, "cold", "custom-html",
                      started_at=datetime(2026, 1, 1, 3, 0, 3 - n, tzinfo=UTC))
    (tmp_path / "runs" / f"{_run_id()}.json").write_text("{broken")
    assert [r.run_id for r in list_reports(tmp_path)] == list(reversed(ids))
    assert list_reports(tmp_path / "nowhere") == []
