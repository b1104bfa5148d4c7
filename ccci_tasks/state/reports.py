"""Run reports: lane, recipe, ref, the node that ran it, steps with timings, verdict.

The broker holds every report (``ccci:report:<run_id>``, listed by ``ccci:reports``), so every
host reads every run; each host keeps a copy of the reports it writes under
``<state>/runs/<run_id>.json`` (see ``state.brokered``: atomic changes across hosts, reading
back what a flushed broker lost, this host's copies when the broker is down). Callers reach
them through ``at(settings)``, a ``Reports`` value.

``verdict`` is ``pass``, ``fail`` or ``error``, and ``None`` while the run is in flight. A run
is *queued* until ``admitted_at`` is set, then *running* until its verdict; ``current`` names
the step running right now; ``node`` is the host that admitted it. Steps are keyed by
``(name, task_id)``: a redelivered step replaces its own entry instead of adding a second one.
The first verdict wins, and a finished report takes no more steps: a step that lost its lease
and comes back late cannot write into it. ``rev`` counts the writes and ``updated`` is the
last one's time: of two versions of a report the ended one is newer, then the higher ``rev``.

Lanes may add their own top-level fields (a reconcile's ``outcome``, a sweep's ``recipes``)
with ``set_fields``; they are kept as they are.

The broker keeps a finished report ``CCCI_REPORT_BROKER_DAYS`` days after its end (the
janitor drops older ones, ``Reports.prune``); the hosts' copies stay.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import redis
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import Domain, Recipe, Ref, RunId
from ccci_tasks.state.brokered import Brokered, Found, Kind, Listing
from ccci_tasks.state.clock import utc_now

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

log = logging.getLogger(__name__)

RUNS_DIR: Final = "runs"

Verdict = Literal["pass", "fail", "error"]
MAX_DETAIL_LENGTH: Final = 4000
_CORE_FIELDS: Final = frozenset({
    "run_id", "lane", "recipe", "ref", "domain", "verdict", "reason", "started_at",
    "finished_at", "steps", "admitted_at", "current", "node", "rev", "updated",
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
    node: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")  # admitted on
    rev: int = Field(default=0, ge=0)  # how many writes made this version
    updated: AwareDatetime | None = None  # when it was last written

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


def newness(report: RunReport) -> tuple[bool, int, datetime]:
    """Of two versions of a report, the larger is the newer: ended, then more writes."""
    return (report.finished, report.rev, report.updated or report.started_at)


def failing_step(report: RunReport) -> int | None:
    """The index of the step that failed the run (its first failed forward step), if any."""
    for index, step in enumerate(report.steps):
        if not step.ok and not step.undo:
            return index
    return None


UPDATABLE: Final = frozenset({"recipe", "ref", "domain", "reason", "lane"})


def runs_dir(state_dir: Path) -> Path:
    return Path(state_dir) / RUNS_DIR


def _validated(data: dict[str, Any], what: str) -> RunReport:
    try:
        return RunReport.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {exc}") from exc


def _step(run_id: RunId, name: str, task_id: str | None, started_at: datetime,
          duration_s: float, ok: bool, detail: str, undo: bool) -> Step:
    try:
        return Step(name=name, task_id=task_id, started_at=started_at,
                    duration_s=round(duration_s, 3), ok=ok, detail=detail[:MAX_DETAIL_LENGTH],
                    undo=undo)
    except ValidationError as exc:
        raise InvalidInput(f"step {name!r} of run {run_id}: {exc}") from exc


@dataclass(frozen=True)
class Reports:
    """Where run reports live: the broker, and this host's copies under ``<state>/runs``."""

    state_dir: Path
    client: redis.Redis = field(repr=False)
    node: str
    broker_days: float = 30.0  # how long the broker keeps a finished report
    turn_timeout_s: float = 60.0  # how long a change waits while other writers come first

    @property
    def directory(self) -> Path:
        return runs_dir(self.state_dir)

    @property
    def records(self) -> Brokered[RunReport]:
        """The reports as broker records with this host's copies (``state.brokered``)."""
        return Brokered(Kind(RunReport, "run report", lambda r: r.run_id,
                             lambda r: r.started_at.timestamp(), newness, self._kept,
                             lambda r: not r.finished),
                        self.client, c.KEY_REPORT, c.KEY_REPORTS, c.KEY_REPORTS_OPEN,
                        self.directory, self.turn_timeout_s)

    def _kept(self, report: RunReport) -> bool:
        """Whether the broker should hold ``report``: it ended (or, unfinished, started)
        less than ``broker_days`` ago."""
        since = (report.finished_at if report.finished else None) or report.started_at
        return utc_now() - since < timedelta(days=self.broker_days)

    def copy_path(self, run_id: RunId) -> Path:
        """This host's copy of the report."""
        return self.records.copy_path(run_id)

    # --- reading --------------------------------------------------------------------------

    def lookup(self, run_id: RunId) -> Found[RunReport]:
        """The report (``record``), and ``broker_error`` when it is this host's copy only."""
        return self.records.get(run_id)

    def load(self, run_id: RunId) -> RunReport | None:
        """The report, None when there is none; this host's copy when the broker is down."""
        found = self.lookup(run_id)
        if found.broker_error is not None:
            log.warning("run %s read from this host's copy: %s", run_id, found.broker_error)
        return found.record

    def listing(self, *, unfinished: bool = False) -> Listing[RunReport]:
        """Every report (``unfinished``: those without a verdict), oldest start first,
        whether the broker answered, and what was left out (an unreadable value or file,
        each named)."""
        found = self.records.listing(open_only=unfinished)
        ordered = sorted(found.records, key=lambda r: (r.started_at, r.run_id))
        for problem in found.problems:
            log.warning("run reports: %s", problem)
        return Listing(ordered, found.broker_error, found.problems)

    def all(self, *, unfinished: bool = False) -> list[RunReport]:
        """Every report (``unfinished``: those without a verdict, which the broker lists
        apart), oldest start first (this host's copies when the broker is down)."""
        found = self.listing(unfinished=unfinished)
        if found.broker_error is not None:
            log.warning("run reports of this host only: %s", found.broker_error)
        return found.records

    # --- writing --------------------------------------------------------------------------

    def _change(self, run_id: RunId, edit: Callable[[RunReport | None], RunReport | None]
                ) -> RunReport | None:
        def stamped(current: RunReport | None) -> RunReport | None:
            made = edit(current)
            if made is None:
                return None
            return made.model_copy(update={"rev": (current.rev if current else 0) + 1,
                                           "updated": utc_now()})

        return self.records.change(run_id, stamped)

    def _require(self, run_id: RunId, report: RunReport | None) -> RunReport:
        if report is None:
            raise StateError(f"no run report {run_id} in the broker or under {self.directory}")
        return report

    def create(self, run_id: RunId, lane: str, recipe: str | None, ref: str | None = None,
               domain: str | None = None, started_at: datetime | None = None) -> RunReport:
        """Create the report of a new run; if it exists already (a redelivery), return it."""
        report = _validated({"run_id": run_id, "lane": lane, "recipe": recipe, "ref": ref,
                             "domain": domain, "started_at": started_at or utc_now()},
                            f"run report {run_id}")
        existing: list[RunReport] = []

        def create(current: RunReport | None) -> RunReport | None:
            existing[:] = [current] if current is not None else []
            return report if current is None else None

        made = self._change(run_id, create)
        return made if made is not None else existing[0]

    def start_step(self, run_id: RunId, name: str, task_id: str | None, started_at: datetime,
                   *, undo: bool = False) -> RunReport | None:
        """Record that ``name`` runs now (``current``), and the admission time if unset.
        None (nothing written) when the run has ended."""
        running = Current(name=name, task_id=task_id, started_at=started_at, undo=undo)

        def start(current: RunReport | None) -> RunReport | None:
            report = self._require(run_id, current)
            if report.finished:
                return None
            fields: dict[str, Any] = {"current": running}
            if report.admitted_at is None:
                fields["admitted_at"] = started_at
            return report.model_copy(update=fields)

        return self._change(run_id, start)

    def record_step(self, run_id: RunId, name: str, task_id: str | None, started_at: datetime,
                    duration_s: float, ok: bool, detail: str = "", *, undo: bool = False
                    ) -> RunReport | None:
        """Add a step (or replace the entry of the same name and task id) and clear
        ``current``. A finished report takes no more steps: returns None, changes nothing."""
        step = _step(run_id, name, task_id, started_at, duration_s, ok, detail, undo)

        def record(current: RunReport | None) -> RunReport | None:
            report = self._require(run_id, current)
            if report.finished:
                log.warning("run %s has ended: step %s not recorded", run_id, name)
                return None
            steps = [s for s in report.steps if (s.name, s.task_id) != (name, task_id)]
            steps.append(step)
            steps.sort(key=lambda s: s.started_at)
            now = report.current
            if now is not None and (now.name, now.task_id) == (name, task_id):
                now = None
            return report.model_copy(update={"steps": tuple(steps), "current": now})

        return self._change(run_id, record)

    def mark_admitted(self, run_id: RunId) -> None:
        """The run got its resources on this node: it is running (no longer queued), and
        its report names the node."""
        def admit(current: RunReport | None) -> RunReport | None:
            if current is None or current.finished \
                    or (current.admitted_at is not None and current.node == self.node):
                return None
            return current.model_copy(update={"admitted_at": current.admitted_at or utc_now(),
                                              "node": self.node})

        self._change(run_id, admit)

    def set_fields(self, run_id: RunId, **fields: Any) -> RunReport:
        """Set lane-specific top-level fields (JSON values), e.g. ``outcome`` of a reconcile."""
        clash = set(fields) & _CORE_FIELDS
        if clash:
            raise InvalidInput(f"cannot set {sorted(clash)} of run {run_id} with set_fields")
        try:
            json.dumps(fields)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"fields of run {run_id} are not JSON: {exc}") from exc
        return self._merge(run_id, fields)

    def update(self, run_id: RunId, **fields: Any) -> RunReport:
        """Change some of ``recipe``, ``ref``, ``domain``, ``reason``, ``lane``."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise InvalidInput(
                f"cannot update {sorted(unknown)} of run {run_id}; updatable: "
                f"{sorted(UPDATABLE)} (use record_step and finish for steps and verdicts)")
        return self._merge(run_id, fields)

    def _merge(self, run_id: RunId, fields: dict[str, Any]) -> RunReport:
        def merge(current: RunReport | None) -> RunReport:
            report = self._require(run_id, current)
            return _validated({**report.model_dump(), **fields}, f"run report {run_id}")

        return self._require(run_id, self._change(run_id, merge))

    def end(self, run_id: RunId, verdict: str, reason: str | None = None) -> RunReport | None:
        """Set the verdict, reason and finished_at; None when the run had a verdict already
        (so whoever gets the report back is the one who ended the run)."""
        if verdict not in ("pass", "fail", "error"):
            raise InvalidInput(f"verdict {verdict!r} is invalid: expected pass, fail or error")

        def end(current: RunReport | None) -> RunReport | None:
            report = self._require(run_id, current)
            if report.finished:
                return None
            return _validated({**report.model_dump(), "verdict": verdict, "reason": reason,
                               "finished_at": utc_now(), "current": None},
                              f"run report {run_id}")

        return self._change(run_id, end)

    def finish(self, run_id: RunId, verdict: str, reason: str | None = None) -> RunReport:
        """Like ``end``, but returns the report either way; the first verdict wins."""
        ended = self.end(run_id, verdict, reason)
        return ended if ended is not None else self._require(run_id, self.load(run_id))

    # --- retention ------------------------------------------------------------------------

    def prune(self) -> list[str]:
        """Drop from the broker the reports that ended more than ``broker_days`` ago (this
        host's copies stay); return their run ids."""
        before = (utc_now() - timedelta(days=self.broker_days)).timestamp()
        return self.records.drop_from_broker(before)


def at(settings: Settings, timeout_s: float = broker.DEFAULT_TIMEOUT_S) -> Reports:
    """The run reports of the settings' broker, with this host's copies and node name;
    ``timeout_s`` bounds each broker command (short for a person waiting at the CLI)."""
    return Reports(settings.state_dir, broker.client(settings, timeout_s), settings.node,
                   settings.report_broker_days)


def report_json(report: RunReport) -> str:
    """The report as the JSON text a host keeps and ``ccci runs show --json`` prints."""
    return json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True)
