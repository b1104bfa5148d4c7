"""The bridge process serving run pages and metrics, and run reports made for them.

``bridge_process(**env)`` starts ``python -m workers.bridge`` (the real HTTP server) with the
test settings plus ``env`` on a free port and yields its base URL. ``make_run`` writes a run
report with steps and their kept output through the same modules a worker uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from conftest import REPO, SESSION_DIR, TEST_ENV, _free_port, reports_at

from ccci_tasks.naming import RunId
from ccci_tasks.redact import Redactor
from ccci_tasks.state import outputs
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.outputs import StepOutput
from ccci_tasks.state.reports import RunReport


@contextmanager
def bridge_process(name: str, **env: str) -> Iterator[str]:
    """The bridge on a free loopback port with ``TEST_ENV`` + ``env``; yields its URL."""
    listen = env.get("CCCI_BRIDGE_LISTEN") or f"127.0.0.1:{_free_port()}"
    full = {**os.environ, **TEST_ENV, "PYTHONPATH": str(REPO), **env,
            "CCCI_BRIDGE_LISTEN": listen}
    log = SESSION_DIR / f"bridge-{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.bridge"], cwd=REPO, env=full,
                                stdout=out, stderr=out, start_new_session=True)
    url = f"http://{listen}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"bridge exited {proc.returncode}: "
                                     f"{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge not up within 30 s: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class FakeStep:
    name: str
    ok: bool = True
    detail: str = "done"
    output: str = ""
    undo: bool = False
    duration_s: float = 1.5


def make_run(state: Path, run_id: str, steps: list[FakeStep], *, lane: str = "quick",
             recipe: str = "custom-html", ref: str | None = "0" * 40,
             verdict: str | None = "pass", reason: str | None = "passed",
             started: datetime | None = None, current: str | None = None,
             node: str | None = None) -> RunReport:
    """A run report as a worker of ``node`` (the test environment's when None) with state
    root ``state`` writes it: created, admitted, steps, verdict (or running)."""
    run_id = RunId(run_id)
    store = reports_at(state, node)
    start = started or utc_now() - timedelta(minutes=5)
    store.create(run_id, lane, recipe, ref, f"warm-{recipe}.t.localhost", started_at=start)
    store.mark_admitted(run_id)
    at = start + timedelta(seconds=2)
    for number, step in enumerate(steps):
        task_id = f"task-{number}-{step.name}"
        store.start_step(run_id, step.name, task_id, at, undo=step.undo)
        out = StepOutput()
        if step.output:
            out.section("what the step printed", step.output)
        out.section("result", step.detail)
        outputs.keep(state, run_id, step.name, task_id, step.undo, out, Redactor())
        store.record_step(run_id, step.name, task_id, at, step.duration_s, step.ok,
                          step.detail, undo=step.undo)
        at += timedelta(seconds=step.duration_s + 0.1)
    if current is not None:
        store.start_step(run_id, current, "task-current", at)
    if verdict is not None:
        return store.finish(run_id, verdict, reason)
    return saved_report(state, run_id)


def saved_report(state: Path, run_id: str) -> RunReport:
    """The run's report, which the test knows exists (a host with state root ``state``
    reads it)."""
    report = reports_at(state).load(RunId(run_id))
    assert report is not None, f"run {run_id} has no report (state root {state})"
    return report
