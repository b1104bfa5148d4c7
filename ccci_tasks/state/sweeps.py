"""When did a nightly sweep last complete: ``<state>/sweep/last.json``.

``{run_id, verdict, finished_at}`` of the last sweep that ran to its end (skipped sweeps do
not count), written atomically. The watchdog compares it with ``CCCI_SWEEP_MAX_AGE_H``; with
no sweep ever completed it compares with the first time it looked (``watching-since.json``),
so a fresh host gets its first sweep from the watchdog too if beat's night is missed.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import ccci_tasks.atomic as atomic
from ccci_tasks.naming import RunId
from ccci_tasks.state.clock import iso, parse_iso, utc_now

SWEEP_DIR: Final = "sweep"
LAST_FILE: Final = "last.json"
SINCE_FILE: Final = "watching-since.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def record_completed(state_dir: Path, run_id: RunId, verdict: str) -> None:
    atomic.write_json(Path(state_dir) / SWEEP_DIR / LAST_FILE,
                      {"run_id": run_id, "verdict": verdict, "finished_at": iso(utc_now())})


def last_completed(state_dir: Path) -> datetime | None:
    """When the last sweep completed, or None (never, or unreadable)."""
    raw = _read(Path(state_dir) / SWEEP_DIR / LAST_FILE)
    try:
        return parse_iso(str(raw["finished_at"])) if raw else None
    except (KeyError, ValueError):
        return None


def reference_time(state_dir: Path) -> datetime:
    """The last completed sweep, else when the watchdog first looked (recorded now)."""
    last = last_completed(state_dir)
    if last is not None:
        return last
    path = Path(state_dir) / SWEEP_DIR / SINCE_FILE
    raw = _read(path)
    try:
        return parse_iso(str(raw["ts"])) if raw else _start_watching(path)
    except (KeyError, ValueError):
        return _start_watching(path)


def _start_watching(path: Path) -> datetime:
    now = utc_now()
    atomic.write_json(path, {"ts": iso(now)})
    return now
