"""Each step's output, beside its run report: ``<state>/runs/<run_id>/<step>-<task id>.log``.

A step's output is plain text in sections (``== <title>``): for a failed step first the last
log lines of every service of its stack, then what the step itself wrote (an overlay's pytest
output, assertion details included), last the step's detail (its result, or its error).
``StepOutput`` collects the sections while the step runs; ``keep`` redacts the whole text
(so a secret split across two writes is still found), caps it to its last
``MAX_STEP_OUTPUT_CHARS`` characters (at a line start, saying what was cut) and replaces the
file atomically. A redelivered step (same task id) adds its output after the first one's.

Undo steps are kept as ``undo-<step>-<task id>.log``: a lane may run a step of the same name
both forward and as undo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import ccci_tasks.atomic as atomic
from ccci_tasks.naming import RunId
from ccci_tasks.state.clock import iso, utc_now

if TYPE_CHECKING:
    from ccci_tasks.redact import Redactor
    from ccci_tasks.state.reports import Step

MAX_STEP_OUTPUT_CHARS: Final = 256 * 1024
MAX_SECTIONS: Final = 200
SUFFIX: Final = ".log"
_PART_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")


@dataclass
class StepOutput:
    """The sections a step writes while it runs (in memory until ``keep``)."""

    sections: list[tuple[str, str]] = field(default_factory=list)

    def section(self, title: str, text: str, *, first: bool = False) -> None:
        """Add a titled piece of output (e.g. ``test_custom.py (pytest)``); ``first`` puts it
        before the others (the stack's logs go before what the step printed)."""
        if len(self.sections) < MAX_SECTIONS:
            # Keep the memory bounded: a section is cut again at ``keep``, after redaction.
            kept = (" ".join(title.split()), _tail_chars(text, 4 * MAX_STEP_OUTPUT_CHARS))
            self.sections.insert(0 if first else len(self.sections), kept)

    def render(self) -> str:
        return "".join(f"== {title}\n{text.rstrip()}\n\n" for title, text in self.sections)


def _tail_chars(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, from a line start (raw, not yet redacted:
    cutting at a line start never leaves half a one-line secret behind)."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    return cut[newline + 1:] if newline >= 0 else ""


def cap(text: str, limit: int = MAX_STEP_OUTPUT_CHARS) -> str:
    """``text`` cut to its last ``limit`` characters at a line start, with a first line
    saying how much was cut."""
    if len(text) <= limit:
        return text
    kept = _tail_chars(text, limit)
    return (f"[... {len(text) - len(kept)} characters cut: a step keeps the last {limit} "
            "characters of its output ...]\n" + kept)


def _safe(part: str) -> str:
    if not _PART_RE.fullmatch(part) or part.startswith("."):
        raise ValueError(f"{part!r} cannot name a step output file")
    return part


def run_output_dir(state_dir: Path, run_id: RunId) -> Path:
    return Path(state_dir) / "runs" / run_id


def output_path(state_dir: Path, run_id: RunId, name: str, task_id: str | None,
                undo: bool = False) -> Path:
    """Where a step's output is kept; ``ValueError`` for a name that is no file name."""
    stem = f"{'undo-' if undo else ''}{_safe(name)}-{_safe(task_id or 'direct')}"
    return run_output_dir(state_dir, run_id) / f"{stem}{SUFFIX}"


def keep(state_dir: Path, run_id: RunId, name: str, task_id: str | None, undo: bool,
         output: StepOutput, redactor: Redactor) -> Path:
    """Redact, cap and write the step's output (after an earlier delivery's, if any)."""
    path = output_path(state_dir, run_id, name, task_id, undo)
    text = redactor.text(output.render())
    try:
        before = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        before = ""
    if before:
        text = f"{before}== delivered again at {iso(utc_now())}\n\n{text}"
    atomic.write_text(path, cap(text))
    return path


def read(state_dir: Path, run_id: RunId, step: Step) -> str | None:
    """The kept output of ``step`` of run ``run_id``; None when it has none."""
    try:
        path = output_path(state_dir, run_id, step.name, step.task_id, step.undo)
        return path.read_text(encoding="utf-8", errors="replace")
    except (ValueError, FileNotFoundError, IsADirectoryError):
        return None
