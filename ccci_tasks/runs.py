"""Waiting for runs: ``wait(run_id, timeout_s)`` blocks until the run's verdict exists."""

from __future__ import annotations

import time

from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import WaitTimeout
from ccci_tasks.naming import RunId
from ccci_tasks.state import reports
from ccci_tasks.state.reports import RunReport

POLL_S = 0.5

__all__ = ["RunReport", "describe", "wait"]


def describe(report: RunReport | None) -> str:
    """One line on where a run is, for timeouts and the CLI."""
    if report is None:
        return "no report yet (the entry task has not run: is the runs worker up?)"
    if report.finished:
        return f"verdict {report.verdict}: {report.reason or ''}".rstrip(": ")
    if not report.steps:
        return f"{report.lane} run queued for a slot"
    last = report.steps[-1]
    return f"{report.lane} run at step {last.name} ({'ok' if last.ok else 'failed'})"


def wait(run_id: str, timeout_s: float, settings: Settings | None = None) -> RunReport:
    """Block until run ``run_id`` has a verdict; ``WaitTimeout`` says where it was."""
    run_id = RunId(run_id)  # a caller's text: parsed here
    settings = settings or get_settings()
    deadline = time.monotonic() + timeout_s
    report, store = None, reports.at(settings)
    while True:
        report = store.load(run_id)
        if report is not None and report.finished:
            return report
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"the verdict of run {run_id}", timeout_s, describe(report))
        time.sleep(POLL_S)
