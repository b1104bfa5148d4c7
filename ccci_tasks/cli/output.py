"""How the CLI shows a run: times, durations, a report with its timeline."""

from __future__ import annotations

from datetime import datetime

from ccci_tasks.state.reports import RunReport


def ts(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def duration(report: RunReport) -> str:
    seconds = report.duration_s()
    return f"{seconds:.1f}s" if seconds is not None else "-"


def report_text(report: RunReport) -> str:
    """The run's header, then its timeline: start offset, duration, step, detail."""
    verdict = report.verdict or report.state
    lines = [f"run {report.run_id}: {report.lane} {report.recipe or '-'} "
             f"ref={report.ref or 'latest'}",
             f"  domain:   {report.domain or '-'}",
             f"  node:     {report.node or '-'}",
             f"  started:  {ts(report.started_at)}  duration: {duration(report)}",
             f"  verdict:  {verdict}" + (f" - {report.reason}" if report.reason else "")]
    extra = report.extra
    for key in ("outcome", "from", "to", "skipped", "disk_used_pct", "pruned_stale"):
        if key in extra and extra[key] not in (None, []):
            lines.append(f"  {key + ':':<9} {extra[key]}")
    for field in ("infra", "recipes"):
        for entry in extra.get(field, []):
            name = entry.get("app") or entry.get("recipe")
            lines.append(f"  {field[:-1] if field == 'recipes' else 'infra'} {name}: "
                         f"{entry.get('outcome') or entry.get('verdict') or 'running'} "
                         f"({entry.get('run_id')})")
    origin = report.steps[0].started_at if report.steps else None
    if report.steps:
        lines.append("  timeline:")
    for step in report.steps:
        offset = (step.started_at - origin).total_seconds() if origin else 0.0
        mark = "ok  " if step.ok else "FAIL"
        undo = " (undo)" if step.undo else ""
        lines.append(f"  +{offset:7.1f}s {step.duration_s:7.1f}s {mark} "
                     f"{step.name}{undo}: {step.detail}")
    if report.current is not None:
        lines.append(f"  now running: {report.current.name}")
    return "\n".join(lines)

