"""What the run pages show, as plain data: pure functions over run reports and step output.

Everything a page or a JSON answer carries passes ``Redactor.data``/``text`` here, on top of
the redaction done when the report and the outputs were written (a secret set after a run
ended is hidden on its old pages too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ccci_tasks.errors import CcciError, InvalidInput
from ccci_tasks.naming import Recipe, RunId
from ccci_tasks.redact import Redactor
from ccci_tasks.state import outputs
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.reports import Reports, RunReport, failing_step, report_json

LIST_LIMIT: Final = 500
FAILURE_TAIL_LINES: Final = 40
# A step's output longer than this is shown by its tail, with a link to the whole text.
VIEW_MAX_CHARS: Final = 64 * 1024


class NotFound(Exception):
    """No such run (or a malformed id): answered 404."""


def parse_run_id(text: str) -> RunId:
    try:
        return RunId(text)
    except InvalidInput:
        raise NotFound(f"no run {text[:80]!r}") from None


def find_report(store: Reports, run_id: str) -> RunReport:
    try:
        report = store.load(parse_run_id(run_id))
    except CcciError as exc:
        raise NotFound(str(exc)) from exc
    if report is None:
        raise NotFound(f"no run {run_id}")
    return report


def parse_recipe_filter(value: str | None) -> Recipe | None:
    """``?recipe=``: None (no filter) or a valid recipe name; ``InvalidInput`` otherwise."""
    if value is None or value == "":
        return None
    return Recipe(value)


# --------------------------------------------------------------------------- JSON


def run_document(store: Reports, report: RunReport, redactor: Redactor, *,
                 with_output: bool = True) -> dict[str, Any]:
    """The report as ``ccci runs show --json`` prints it, with ``state``, ``duration_s`` and
    each step's ``output`` (the whole kept text; "" when it has none)."""
    doc: dict[str, Any] = json.loads(report_json(report))
    doc["state"] = report.state
    doc["duration_s"] = report.duration_s()
    if with_output:
        for entry, step in zip(doc["steps"], report.steps, strict=True):
            entry["output"] = outputs.read(store.state_dir, report.run_id, step) or ""
    redacted: dict[str, Any] = redactor.data(doc)
    return redacted


# --------------------------------------------------------------------------- HTML


@dataclass(frozen=True)
class StepView:
    index: int
    name: str
    undo: bool
    ok: bool
    offset_s: float
    duration_s: float
    detail: str
    output: str  # what the page shows (the tail when long)
    output_chars: int  # the whole kept output's length
    failing: bool

    @property
    def shortened(self) -> bool:
        return len(self.output) < self.output_chars


@dataclass(frozen=True)
class RunView:
    report: RunReport
    steps: tuple[StepView, ...]
    failing: StepView | None
    failing_tail: str
    reason: str
    duration_s: float | None
    current: str | None
    output_node: str | None  # the node that keeps the steps' output, when not this one

    @property
    def badge(self) -> str:
        return self.report.verdict or self.report.state


def _tail_lines(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _view_text(text: str) -> str:
    if len(text) <= VIEW_MAX_CHARS:
        return text
    cut = text[-VIEW_MAX_CHARS:]
    return cut[cut.find("\n") + 1:]


def run_view(store: Reports, report: RunReport, redactor: Redactor,
             now: datetime | None = None) -> RunView:
    start = report.steps[0].started_at if report.steps else report.admitted_at
    failing_index = failing_step(report)
    views = []
    for index, step in enumerate(report.steps):
        text = redactor.text(outputs.read(store.state_dir, report.run_id, step) or "")
        offset = (step.started_at - start).total_seconds() if start else 0.0
        views.append(StepView(
            index=index, name=step.name, undo=step.undo, ok=step.ok, offset_s=max(0.0, offset),
            duration_s=step.duration_s, detail=redactor.text(step.detail),
            output=_view_text(text), output_chars=len(text), failing=index == failing_index,
        ))
    failing = views[failing_index] if failing_index is not None else None
    tail = _tail_lines(failing.output, FAILURE_TAIL_LINES) if failing else ""
    current = report.current.name + (" (undo)" if report.current.undo else "") \
        if report.current else None
    return RunView(report=report, steps=tuple(views), failing=failing, failing_tail=tail,
                   reason=redactor.text(report.reason or ""),
                   duration_s=report.duration_s(now or utc_now()), current=current,
                   output_node=report.node if report.node not in (None, store.node) else None)


@dataclass(frozen=True)
class ListView:
    runs: list[dict[str, Any]]
    broker_error: str | None  # the broker did not answer: this host's runs only (the page
    # says so, without the broker's address)


def list_view(store: Reports, recipe: str | None, redactor: Redactor) -> ListView:
    """Runs newest first (at most ``LIST_LIMIT``), of one recipe when ``recipe`` is set."""
    listing = store.listing()
    found = [r for r in listing.records if recipe is None or r.recipe == recipe]
    found.reverse()
    return ListView([{
        "run_id": r.run_id, "lane": r.lane, "recipe": r.recipe, "ref": r.ref, "node": r.node,
        "verdict": r.verdict, "state": r.state, "started_at": r.started_at,
        "duration_s": r.duration_s(), "reason": redactor.text(r.reason or ""),
    } for r in found[:LIST_LIMIT]], redactor.text(listing.broker_error)
        if listing.broker_error else None)


def human_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
