"""Run reports ``<state>/runs/<run_id>.json``: lane, recipe, ref, steps with timings, verdict.

``verdict`` is ``pass``, ``fail`` or ``error``, and ``None`` while the run is in flight. Every
change is a read-modify-write under an ``fcntl`` lock (``runs/.lock``) and lands with an atomic
rename, so readers never need the lock. Steps are keyed by ``(name, task_id)``: a redelivered
step replaces its own entry instead of adding a second one. The first verdict wins:
``finish_report`` on a finished run changes nothing (a redelivered errback is harmless).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.state import atomic
from ccci_tasks.state.clock import utc_now

RUNS_DIR: Final = "runs"
LOCK_FILE: Final = ".lock"

Verdict = Literal["pass", "fail", "error"]
Lane = Literal["quick", "cold", "promote", "reconcile", "sweep"]
MAX_DETAIL_LENGTH: Final = 4000


class Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    task_id: str | None
    started_at: AwareDatetime
    duration_s: float = Field(ge=0)
    ok: bool
    detail: str = ""


class RunReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    lane: Lane
    recipe: str | None
    ref: str | None
    domain: str | None
    verdict: Verdict | None = None
    reason: str | None = None
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    steps: tuple[Step, ...] = ()

    @property
    def finished(self) -> bool:
        return self.verdict is not None


UPDATABLE: Final = frozenset({"recipe", "ref", "domain", "reason", "lane"})


def validate_run_id(run_id: str) -> str:
    """A run id is a Celery task id: a UUID in canonical lowercase form."""
    try:
        if isinstance(run_id, str) and str(uuid.UUID(run_id)) == run_id:
            return run_id
    except ValueError:
        pass
    raise InvalidInput(
        f"run id {run_id!r} is invalid: expected a Celery task id (a UUID such as "
        "'0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a')"
    )


def runs_dir(state_dir: Path) -> Path:
    return Path(state_dir) / RUNS_DIR


def report_path(state_dir: Path, run_id: str) -> Path:
    return runs_dir(state_dir) / f"{validate_run_id(run_id)}.json"


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with atomic.file_lock(runs_dir(state_dir) / LOCK_FILE):
        yield


def _read(path: Path) -> RunReport | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: unreadable run report: {exc}") from exc
    try:
        return RunReport.model_validate_json(text)
    except ValidationError as exc:
        raise StateError(f"{path}: invalid run report: {exc}") from exc


def _write(state_dir: Path, report: RunReport) -> None:
    atomic.write_json(report_path(state_dir, report.run_id), report.model_dump(mode="json"))


def _require(state_dir: Path, run_id: str) -> RunReport:
    report = _read(report_path(state_dir, run_id))
    if report is None:
        raise StateError(f"no run report {run_id} under {runs_dir(state_dir)}")
    return report


def _validated(data: dict[str, Any], what: str) -> RunReport:
    try:
        return RunReport.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {exc}") from exc


def create_report(
    state_dir: Path,
    run_id: str,
    lane: str,
    recipe: str | None,
    ref: str | None = None,
    domain: str | None = None,
    started_at: datetime | None = None,
) -> RunReport:
    """Create the report of a new run; if it exists already (a redelivery), return it."""
    path = report_path(state_dir, run_id)
    with _locked(state_dir):
        existing = _read(path)
        if existing is not None:
            return existing
        report = _validated(
            {
                "run_id": run_id,
                "lane": lane,
                "recipe": recipe,
                "ref": ref,
                "domain": domain,
                "started_at": started_at or utc_now(),
            },
            f"run report {run_id}",
        )
        _write(state_dir, report)
        return report


def load_report(state_dir: Path, run_id: str) -> RunReport | None:
    return _read(report_path(state_dir, run_id))


def record_step(
    state_dir: Path,
    run_id: str,
    name: str,
    task_id: str | None,
    started_at: datetime,
    duration_s: float,
    ok: bool,
    detail: str = "",
) -> RunReport:
    """Add a step (or replace the entry of the same name and task id)."""
    try:
        step = Step(
            name=name,
            task_id=task_id,
            started_at=started_at,
            duration_s=round(duration_s, 3),
            ok=ok,
            detail=detail[:MAX_DETAIL_LENGTH],
        )
    except ValidationError as exc:
        raise InvalidInput(f"step {name!r} of run {run_id}: {exc}") from exc
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        steps = [s for s in report.steps if (s.name, s.task_id) != (name, task_id)]
        steps.append(step)
        steps.sort(key=lambda s: s.started_at)
        updated = report.model_copy(update={"steps": tuple(steps)})
        _write(state_dir, updated)
        return updated


def update_report(state_dir: Path, run_id: str, **fields: Any) -> RunReport:
    """Change some of ``recipe``, ``ref``, ``domain``, ``reason``, ``lane``."""
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise InvalidInput(
            f"cannot update {sorted(unknown)} of run {run_id}; updatable: {sorted(UPDATABLE)} "
            "(use record_step and finish_report for steps and verdicts)"
        )
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        updated = _validated({**report.model_dump(), **fields}, f"run report {run_id}")
        _write(state_dir, updated)
        return updated


def finish_report(
    state_dir: Path, run_id: str, verdict: str, reason: str | None = None
) -> RunReport:
    """Set the verdict, reason and finished_at; the first verdict wins."""
    if verdict not in ("pass", "fail", "error"):
        raise InvalidInput(f"verdict {verdict!r} is invalid: expected pass, fail or error")
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        if report.finished:
            return report
        updated = _validated(
            {**report.model_dump(), "verdict": verdict, "reason": reason,
             "finished_at": utc_now()},
            f"run report {run_id}",
        )
        _write(state_dir, updated)
        return updated


def list_reports(state_dir: Path) -> list[RunReport]:
    """Every run report, oldest start first; unreadable files are skipped."""
    directory = runs_dir(state_dir)
    if not directory.is_dir():
        return []
    found: list[RunReport] = []
    for path in directory.glob("*.json"):
        if path.name.startswith("."):
            continue
        try:
            report = _read(path)
        except StateError:
            continue
        if report is not None:
            found.append(report)
    found.sort(key=lambda r: (r.started_at, r.run_id))
    return found


def report_json(report: RunReport) -> str:
    """The report as the JSON text stored on disk."""
    return json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True)
