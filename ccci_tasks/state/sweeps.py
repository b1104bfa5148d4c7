"""When did a nightly sweep last complete: ``<state>/sweep/last.json``, and in the broker.

``{run_id, verdict, finished_at}`` of the last sweep that ran to its end (skipped sweeps do
not count), written atomically, and, given the broker's client, also under
``constants.KEY_SWEEP_LAST``: with several hosts (R15) the sweep ends on one of them and the
watchdog or the next scheduled sweep may look from another; the newest of the two counts.
The watchdog compares it with ``CCCI_SWEEP_MAX_AGE_H``; with
no sweep ever completed it compares with the first time it looked (``watching-since.json``),
so a fresh host gets its first sweep from the watchdog too if beat's night is missed.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import redis
from redis.exceptions import RedisError

import ccci_tasks.atomic as atomic
from ccci_tasks.constants import KEY_SWEEP_LAST
from ccci_tasks.naming import RunId
from ccci_tasks.state.clock import iso, parse_iso, utc_now

log = logging.getLogger(__name__)

SWEEP_DIR: Final = "sweep"
LAST_FILE: Final = "last.json"
SINCE_FILE: Final = "watching-since.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def record_completed(state_dir: Path, run_id: RunId, verdict: str,
                     client: redis.Redis | None = None) -> None:
    record = {"run_id": run_id, "verdict": verdict, "finished_at": iso(utc_now())}
    atomic.write_json(Path(state_dir) / SWEEP_DIR / LAST_FILE, record)
    if client is not None:
        try:
            client.set(KEY_SWEEP_LAST, json.dumps(record))
        except RedisError as exc:  # the file holds it; other hosts see it once Redis is back
            log.warning("could not record the sweep's end in the broker: %s", exc)


def _finished_at(raw: dict[str, Any] | None) -> datetime | None:
    try:
        return parse_iso(str(raw["finished_at"])) if raw else None
    except (KeyError, ValueError):
        return None


def last_completed(state_dir: Path, client: redis.Redis | None = None) -> datetime | None:
    """When the last sweep completed (on this host or, given the broker, on any), or None
    (never, or unreadable)."""
    found = [_finished_at(_read(Path(state_dir) / SWEEP_DIR / LAST_FILE))]
    if client is not None:
        try:
            stored = client.get(KEY_SWEEP_LAST)
            raw = json.loads(stored) if stored else None
            found.append(_finished_at(raw if isinstance(raw, dict) else None))
        except (RedisError, ValueError) as exc:
            log.warning("could not read the last sweep from the broker: %s", exc)
    return max((f for f in found if f is not None), default=None)


def reference_time(state_dir: Path, client: redis.Redis | None = None) -> datetime:
    """The last completed sweep, else when the watchdog first looked (recorded now)."""
    last = last_completed(state_dir, client)
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
