"""The alerts outbox (R4): ``<state>/alerts/<ts>-<kind>-<app>.json``, relayed ones in ``seen/``.

An alert file is ``{id, kind, app, ts, summary, detail, notes?}``; ``id`` is the file name
without ``.json``. Files are written atomically, so a reader never sees half an alert.
``write_alert`` also asks the alerts queue to relay the alert at once; when the broker is
down the alert simply stays pending and ``relay_pending_alerts`` (beat, every 60 s) picks it
up later. Relaying moves the file into ``seen/`` with one atomic rename.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from ccci_tasks import atomic
from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.state.clock import compact, iso, utc_now

log = logging.getLogger(__name__)

ALERTS_DIR: Final = "alerts"
SEEN_DIR: Final = "seen"
KINDS: Final = (
    "upgrade-held", "rolled-back", "restore-failed", "run-crashed", "snapshot-corrupt",
    "sweep-empty", "promotion-refused",
)

_KIND_RE: Final = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_APP_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,252}")
_ID_RE: Final = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[a-z][a-z0-9-]*-[a-z0-9][a-z0-9_.-]*")
MAX_KIND_LENGTH: Final = 40
MAX_SUMMARY_LENGTH: Final = 250


@dataclass(frozen=True)
class Alert:
    id: str
    kind: str
    app: str
    ts: str
    summary: str
    detail: str | dict[str, Any]  # a string, or an object (e.g. {attempted, last_good, ...})
    notes: str | None = None

    def detail_text(self) -> str:
        """The detail as text (an object as compact JSON)."""
        if isinstance(self.detail, str):
            return self.detail
        return json.dumps(self.detail, sort_keys=True)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "app": self.app,
            "ts": self.ts,
            "summary": self.summary,
            "detail": self.detail,
        }
        if self.notes is not None:
            data["notes"] = self.notes
        return data


def validate_kind(kind: str) -> str:
    if not isinstance(kind, str) or len(kind) > MAX_KIND_LENGTH or not _KIND_RE.fullmatch(kind):
        raise InvalidInput(
            f"alert kind {kind!r} is invalid: expected lowercase words joined by '-', at most "
            f"{MAX_KIND_LENGTH} characters, e.g. one of {', '.join(KINDS)}"
        )
    return kind


def validate_app(app: str) -> str:
    if not isinstance(app, str) or ".." in app or not _APP_RE.fullmatch(app):
        raise InvalidInput(
            f"alert app {app!r} is invalid: expected an app or recipe name or a domain "
            "(lowercase letters, digits, '-', '_', '.'), e.g. 'keycloak'"
        )
    return app


def validate_alert_id(alert_id: str) -> str:
    if not isinstance(alert_id, str) or ".." in alert_id or not _ID_RE.fullmatch(alert_id):
        raise InvalidInput(
            f"alert id {alert_id!r} is invalid: expected <YYYYMMDDTHHMMSS.ffffffZ>-<kind>-<app> "
            "as listed by `ccci alerts`"
        )
    return alert_id


def alerts_dir(state_dir: Path) -> Path:
    return Path(state_dir) / ALERTS_DIR


def seen_dir(state_dir: Path) -> Path:
    return alerts_dir(state_dir) / SEEN_DIR


def pending_path(state_dir: Path, alert_id: str) -> Path:
    return alerts_dir(state_dir) / f"{validate_alert_id(alert_id)}.json"


def seen_path(state_dir: Path, alert_id: str) -> Path:
    return seen_dir(state_dir) / f"{validate_alert_id(alert_id)}.json"


def write_alert(
    state_dir: Path,
    kind: str,
    app: str,
    summary: str,
    detail: str | dict[str, Any],
    notes: str | None = None,
    *,
    enqueue: bool = True,
) -> Alert:
    """Write a pending alert atomically and (best effort) enqueue its relay."""
    validate_kind(kind)
    validate_app(app)
    if not isinstance(summary, str) or not summary.strip():
        raise InvalidInput("alert summary must be a non-empty string")
    if not isinstance(detail, str | dict):
        raise InvalidInput("alert detail must be a string or an object")
    try:
        json.dumps(detail)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"alert detail is not JSON: {exc}") from exc
    if notes is not None and not isinstance(notes, str):
        raise InvalidInput("alert notes must be a string or None")
    summary = " ".join(summary.split())[:MAX_SUMMARY_LENGTH]
    moment = utc_now()
    while True:  # the id names the file: never overwrite an alert written in the same µs
        alert_id = f"{compact(moment)}-{kind}-{app}"
        if not pending_path(state_dir, alert_id).exists() and not seen_path(
            state_dir, alert_id
        ).exists():
            break
        moment += timedelta(microseconds=1)
    alert = Alert(alert_id, kind, app, iso(moment), summary, detail, notes)
    seen_dir(state_dir).mkdir(parents=True, exist_ok=True)
    atomic.write_json(pending_path(state_dir, alert_id), alert.to_json())
    log.info("alert %s written: %s", alert_id, summary)
    if enqueue:
        _enqueue_relay(alert_id)
    return alert


def _enqueue_relay(alert_id: str) -> None:
    """Ask the alerts queue to relay now; if the broker is down, beat's sweep relays later."""
    try:
        from ccci_tasks.celery_app import app
        from ccci_tasks.constants import QUEUE_ALERTS, task_name

        # No result to wait for: without ignore_result Celery first subscribes to the result
        # backend, which retries a down broker for about 15 s before giving up.
        app.send_task(task_name(QUEUE_ALERTS, "relay_alert"), (alert_id,), retry=False,
                      ignore_result=True)
    except Exception as exc:  # broker down or misconfigured: the file is the source of truth
        log.warning("alert %s stays pending; could not enqueue its relay: %s", alert_id, exc)


def _load(path: Path) -> Alert:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Alert(
            id=str(raw["id"]),
            kind=str(raw["kind"]),
            app=str(raw["app"]),
            ts=str(raw["ts"]),
            summary=str(raw["summary"]),
            detail=raw["detail"] if isinstance(raw["detail"], dict) else str(raw["detail"]),
            notes=None if raw.get("notes") is None else str(raw["notes"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path}: unreadable alert: {exc}") from exc


def load_alert(state_dir: Path, alert_id: str) -> Alert | None:
    """The pending alert ``alert_id``, ``None`` when it is not pending."""
    path = pending_path(state_dir, alert_id)
    if not path.exists():
        return None
    return _load(path)


def _list(directory: Path) -> list[Alert]:
    if not directory.is_dir():
        return []
    found: list[Alert] = []
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            found.append(_load(path))
        except StateError as exc:
            if path.exists():  # else it was just relayed (moved to seen/) or archived
                log.warning("skipping %s", exc)
    return found


def pending(state_dir: Path) -> list[Alert]:
    """Alerts not yet relayed, oldest first."""
    return _list(alerts_dir(state_dir))


def seen(state_dir: Path) -> list[Alert]:
    """Alerts already relayed, oldest first."""
    return _list(seen_dir(state_dir))


def mark_seen(state_dir: Path, alert_id: str) -> bool:
    """Move a pending alert into ``seen/`` (one atomic rename). False if it was not pending."""
    source = pending_path(state_dir, alert_id)
    dest = seen_path(state_dir, alert_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
    except FileNotFoundError:
        return False
    atomic.fsync_dir(dest.parent)
    atomic.fsync_dir(source.parent)
    return True
