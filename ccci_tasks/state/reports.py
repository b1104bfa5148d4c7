"""Run reports ``<state>/runs/<run_id>.json``: lane, recipe, ref, steps with timings, verdict.

``verdict`` is ``pass``, ``fail`` or ``error``, and ``None`` while the run is in flight. A run
is *queued* until ``admitted_at`` is set, then *running* until its verdict; ``current`` names
the step running right now. Every change is a read-modify-write under an ``fcntl`` lock
(``runs/.lock``) and lands with an atomic rename, so readers never need the lock. Steps are
keyed by ``(name, task_id)``: a redelivered step replaces its own entry instead of adding a
second one. The first verdict wins, and a finished report takes no more steps: a step that
lost its lease and comes back late cannot write into it.

Lanes may add their own top-level fields (a reconcile's ``outcome``, a sweep's ``recipes``)
with ``set_fields``; they are kept as they are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

import ccci_tasks.atomic as atomic
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import Domain, Recipe, Ref, RunId
from ccci_tasks.state import records
from ccci_tasks.state.clock import utc_now

log = logging.getLogger(__name__)

RUNS_DIR: Final = "runs"
LOCK_FILE: Final = ".lock"

Verdict = Literal["pass", "fail", "error"]
MAX_DETAIL_LENGTH: Final = 4000
_CORE_FIELDS: Final = frozenset({
    "run_id", "lane", "recipe", "ref", "domain", "verdict", "reason", "started_at",
    "finished_at", "steps", "admitted_at", "current",
})


class Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    task_id: str | None
    started_at: AwareDatetime
    duration_s: float = Field(ge=0)
    ok: bool
    detail: str = ""
    undo: bool = False  # a step of the undo that follows a failure (restore, teardown, ...)


class Current(BaseModel):
    """The step running right now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    task_id: str | None
    started_at: AwareDatetime
    undo: bool = False


class RunReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    run_id: RunId
    lane: str = Field(pattern=r"^[a-z][a-z-]{0,30}$")
    recipe: Recipe | None
    ref: Ref | None
    domain: Domain | None
    verdict: Verdict | None = None
    reason: str | None = None
    started_at: AwareDatetime  # when the run was submitted
    admitted_at: AwareDatetime | None = None  # when it got its resources (None: queued)
    finished_at: AwareDatetime | None = None
    current: Current | None = None
    steps: tuple[Step, ...] = ()

    @property
    def finished(self) -> bool:
        return self.verdict is not None

    @property
    def state(self) -> Literal["queued", "running", "finished"]:
        if self.finished:
            return "finished"
        return "running" if self.admitted_at is not None else "queued"

    @property
    def extra(self) -> dict[str, Any]:
        """The lane's own fields (e.g. a reconcile's ``outcome``)."""
        return dict(self.model_extra or {})

    def duration_s(self, now: datetime | None = None) -> float | None:
        """Seconds from the first step (or admission) to the verdict (or ``now``)."""
        start = self.steps[0].started_at if self.steps else self.admitted_at
        if start is None:
            return None
        end = self.finished_at or now or utc_now()
        return max(0.0, (end - start).total_seconds())


def failing_step(report: RunReport) -> int | None:
    """The index of the step that failed the run (its first failed forward step), if any."""
    for index, step in enumerate(report.steps):
        if not step.ok and not step.undo:
            return index
    return None


UPDATABLE: Final = frozenset({"recipe", "ref", "domain", "reason", "lane"})


def runs_dir(state_dir: Path) -> Path:
    return Path(state_dir) / RUNS_DIR


def report_path(state_dir: Path, run_id: RunId) -> Path:
    return runs_dir(state_dir) / f"{run_id}.json"


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with atomic.file_lock(runs_dir(state_dir) / LOCK_FILE):
        yield


def _read(path: Path) -> RunReport | None:
    return records.read(path, RunReport, what="run report")


def _write(state_dir: Path, report: RunReport) -> None:
    atomic.write_json(report_path(state_dir, report.run_id), report.model_dump(mode="json"))


def _require(state_dir: Path, run_id: RunId) -> RunReport:
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
    run_id: RunId,
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


def load_report(state_dir: Path, run_id: RunId) -> RunReport | None:
    return _read(report_path(state_dir, run_id))


def record_step(
    state_dir: Path,
    run_id: RunId,
    name: str,
    task_id: str | None,
    started_at: datetime,
    duration_s: float,
    ok: bool,
    detail: str = "",
    *,
    undo: bool = False,
) -> RunReport | None:
    """Add a step (or replace the entry of the same name and task id) and clear ``current``.

    A finished report takes no more steps: returns None and changes nothing.
    """
    try:
        step = Step(
            name=name,
            task_id=task_id,
            started_at=started_at,
            duration_s=round(duration_s, 3),
            ok=ok,
            detail=detail[:MAX_DETAIL_LENGTH],
            undo=undo,
        )
    except ValidationError as exc:
        raise InvalidInput(f"step {name!r} of run {run_id}: {exc}") from exc
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        if report.finished:
            log.warning("run %s has ended: step %s not recorded", run_id, name)
            return None
        steps = [s for s in report.steps if (s.name, s.task_id) != (name, task_id)]
        steps.append(step)
        steps.sort(key=lambda s: s.started_at)
        current = report.current
        if current is not None and (current.name, current.task_id) == (name, task_id):
            current = None
        updated = report.model_copy(update={"steps": tuple(steps), "current": current})
        _write(state_dir, updated)
        return updated


def start_step(
    state_dir: Path, run_id: RunId, name: str, task_id: str | None, started_at: datetime,
    *, undo: bool = False,
) -> RunReport | None:
    """Record that ``name`` runs now (``current``), and the admission time if unset.
    None (nothing written) when the run has ended."""
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        if report.finished:
            return None
        fields: dict[str, Any] = {
            "current": Current(name=name, task_id=task_id, started_at=started_at, undo=undo)
        }
        if report.admitted_at is None:
            fields["admitted_at"] = started_at
        updated = report.model_copy(update=fields)
        _write(state_dir, updated)
        return updated


def mark_admitted(state_dir: Path, run_id: RunId) -> None:
    """The run got its resources: it is running (no longer queued)."""
    with _locked(state_dir):
        report = _read(report_path(state_dir, run_id))
        if report is None or report.finished or report.admitted_at is not None:
            return
        _write(state_dir, report.model_copy(update={"admitted_at": utc_now()}))


def set_fields(state_dir: Path, run_id: RunId, **fields: Any) -> RunReport:
    """Set lane-specific top-level fields (JSON values), e.g. ``outcome`` of a reconcile."""
    clash = set(fields) & _CORE_FIELDS
    if clash:
        raise InvalidInput(f"cannot set {sorted(clash)} of run {run_id} with set_fields")
    try:
        json.dumps(fields)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"fields of run {run_id} are not JSON: {exc}") from exc
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        updated = _validated({**report.model_dump(), **fields}, f"run report {run_id}")
        _write(state_dir, updated)
        return updated


def update_report(state_dir: Path, run_id: RunId, **fields: Any) -> RunReport:
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
    state_dir: Path, run_id: RunId, verdict: str, reason: str | None = None
) -> RunReport:
    """Set the verdict, reason and finished_at; the first verdict wins."""
    ended = end_report(state_dir, run_id, verdict, reason)
    return ended if ended is not None else _require(state_dir, run_id)


def end_report(
    state_dir: Path, run_id: RunId, verdict: str, reason: str | None = None
) -> RunReport | None:
    """Like ``finish_report``, but None when the run had a verdict already (so whoever gets
    the report back is the one who ended the run)."""
    if verdict not in ("pass", "fail", "error"):
        raise InvalidInput(f"verdict {verdict!r} is invalid: expected pass, fail or error")
    with _locked(state_dir):
        report = _require(state_dir, run_id)
        if report.finished:
            return None
        updated = _validated(
            {**report.model_dump(), "verdict": verdict, "reason": reason,
             "finished_at": utc_now(), "current": None},
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
