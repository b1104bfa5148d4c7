"""What the forge and the notification targets are told: pure functions over run reports.

Commit statuses: context ``ccci/<lane>``; ``pending`` while queued, then ``success`` (pass),
``failure`` (fail) or ``error`` (error), the description being the verdict, the run's
duration and its reason, shortened to fit ``MAX_DESCRIPTION`` characters.
"""

from __future__ import annotations

import re
from typing import Final

from ccci_tasks.lanes.registry import falls_back_to, status_context
from ccci_tasks.state.reports import RunReport

MAX_DESCRIPTION: Final = 140
STATE_OF_VERDICT: Final = {"pass": "success", "fail": "failure", "error": "error"}
WORD_OF_VERDICT: Final = {"pass": "passed", "fail": "failed", "error": "error"}
ELLIPSIS: Final = "…"


def context(lane: str) -> str:
    """The status context the lane declares (``ccci/quick``, ``ccci/cold``); ``ccci/<lane>``
    for a lane that does not report to pull requests."""
    return status_context(lane) or f"ccci/{lane}"


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    return line[: max(0, limit - len(ELLIPSIS))].rstrip() + ELLIPSIS


def human_duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 2 min``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def duration_s(report: RunReport) -> float | None:
    if report.finished_at is None:
        return None
    return (report.finished_at - report.started_at).total_seconds()


def pending_description(report: RunReport) -> str:
    return shorten(f"{report.lane} run {report.run_id[:8]} queued", MAX_DESCRIPTION)


def final_state(report: RunReport) -> str:
    """``success``, ``failure`` or ``error`` for a finished report."""
    return STATE_OF_VERDICT[report.verdict or "error"]


def final_description(report: RunReport) -> str:
    """``passed in 1 min 3 s``, ``failed in 42 s: <reason>``, within MAX_DESCRIPTION."""
    seconds = duration_s(report)
    head = WORD_OF_VERDICT[report.verdict or "error"]
    if seconds is not None:
        head += f" in {human_duration(seconds)}"
    reason = " ".join((report.reason or "").split())
    if not reason:
        return shorten(head, MAX_DESCRIPTION)
    return head + ": " + shorten(reason, MAX_DESCRIPTION - len(head) - 2)


def notification(report: RunReport) -> tuple[str, str]:
    """(title, body) of the finish notification: lane, recipe, ref, verdict, duration, reason."""
    seconds = duration_s(report)
    duration = human_duration(seconds) if seconds is not None else "unknown"
    verdict = report.verdict or "unknown"
    target = f"{report.recipe or '-'}" + (f" @ {report.ref[:12]}" if report.ref else "")
    title = f"ccci {report.lane} run of {target}: {verdict}"
    body = "\n".join([
        f"lane: {report.lane}",
        f"recipe: {report.recipe or '-'}",
        f"ref: {report.ref or 'latest'}",
        f"verdict: {verdict}",
        f"duration: {duration}",
        f"reason: {report.reason or '-'}",
        f"run: {report.run_id}",
    ])
    return title, body


# --- pull request comments ------------------------------------------------------------


def queued_comment(lane: str, recipe: str, sha: str, run_id: str) -> str:
    where = f"`{context(lane)}`"
    fallback = falls_back_to(lane)
    if fallback is not None:
        where += f" (`{context(fallback)}` if it falls back to a full {fallback} run)"
    return (
        f"Queued a {lane} run of {recipe} at {sha} (the head of this pull request).\n\n"
        f"Run id: `{run_id}`\n\n"
        f"Its verdict will show as the commit status {where} on that commit."
    )


def refused_comment(user: str, owner: str, recipe: str) -> str:
    return (
        f"Thanks @{user}! Only people with write access to {owner}/{recipe} can start CI "
        "runs, so nothing was started. A maintainer can comment `!testme` (or "
        "`!testme --quick`) to run it."
    )


def closed_comment(number: int) -> str:
    return f"Pull request #{number} is closed, so no run was started."


def failed_comment(lane: str, why: str) -> str:
    return (
        f"Could not start the {lane} run: {shorten(why, 500)}\n\n"
        "Please comment again once this is fixed."
    )


FAILURE_TAIL_LINES: Final = 40
MAX_COMMENT_REASON: Final = 1000


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text`` (it cannot close early)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def verdict_comment(report: RunReport, failing_step: str | None, tail: str, url: str) -> str:
    """The one PR comment of a red run: verdict, failing step, the end of its output in a
    collapsed ``<details>`` block, and the link to the run's page (Markdown)."""
    seconds = duration_s(report)
    head = f"**ccci: {report.lane} run {WORD_OF_VERDICT[report.verdict or 'error']}**"
    if report.ref:
        head += f" at `{report.ref[:12]}`"
    if seconds is not None:
        head += f" after {human_duration(seconds)}"
    lines = [head, ""]
    reason = shorten(report.reason or "", MAX_COMMENT_REASON)
    if reason:
        lines += [f"Reason: {reason}", ""]
    if failing_step is not None:
        lines += [f"Failing step: `{failing_step}`", ""]
        if tail.strip():
            fence = _fence(tail)
            lines += ["<details>",
                      f"<summary>The last {FAILURE_TAIL_LINES} lines of its output</summary>",
                      "", fence, tail.rstrip("\n"), fence, "", "</details>", ""]
    else:
        lines += ["No step failed: the run ended before or between its steps.", ""]
    lines.append(f"Run page: {url}")
    return "\n".join(lines) + "\n"
