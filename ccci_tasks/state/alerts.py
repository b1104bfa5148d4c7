"""The alerts outbox (R4): ``<state>/alerts/<ts>-<kind>-<app>.json``, relayed ones in ``seen/``.

An alert file is ``{id, kind, app, ts, summary, detail, notes?}``; ``id`` is the file name
without ``.json``. Each alert is a stream of its own in the outbox ``BOX`` (``state.outbox``):
files are written atomically, so a reader never sees half an alert, and relaying moves the
file into ``seen/`` with one atomic rename. An alert is never given up.

Files only: ``ccci_tasks.outbox.alerts.write_alert`` writes an alert and asks the alerts queue
to relay it at once; ``write_alert`` here only writes it (beat's sweep relays it later).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BeforeValidator

from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.state.clock import compact, iso, utc_now
from ccci_tasks.state.outbox import Box, Message

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
MAX_SAME_MOMENT: Final = 1000  # alerts of one kind and app written in the same microsecond


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


class Alert(Message):
    """One alert, as its file holds it."""

    id: Annotated[str, BeforeValidator(validate_alert_id)]
    kind: Annotated[str, BeforeValidator(validate_kind)]
    app: Annotated[str, BeforeValidator(validate_app)]
    ts: str
    summary: str
    detail: str | dict[str, Any]  # a string, or an object (e.g. {attempted, last_good, ...})
    notes: str | None = None

    @property
    def key(self) -> str:
        return self.id

    @property
    def stream(self) -> str:
        return self.id

    @property
    def position(self) -> tuple[int, str]:
        return (0, self.id)  # the id starts with the time it was written

    @property
    def written_at(self) -> str:
        return self.ts

    def detail_text(self) -> str:
        """The detail as text (an object as compact JSON)."""
        if isinstance(self.detail, str):
            return self.detail
        return json.dumps(self.detail, sort_keys=True)

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if self.notes is None:
            del data["notes"]  # absent, not null
        return data


BOX: Final = Box(model=Alert, pending_dir=ALERTS_DIR, sent_dir=f"{ALERTS_DIR}/{SEEN_DIR}",
                 failed_dir=None, check_key=validate_alert_id, what="alert")


def alerts_dir(state_dir: Path) -> Path:
    return BOX.folder(state_dir, BOX.pending_dir)


def seen_dir(state_dir: Path) -> Path:
    return BOX.folder(state_dir, BOX.sent_dir)


def pending_path(state_dir: Path, alert_id: str) -> Path:
    return BOX.path(state_dir, BOX.pending_dir, alert_id)


def seen_path(state_dir: Path, alert_id: str) -> Path:
    return BOX.path(state_dir, BOX.sent_dir, alert_id)


def write_alert(
    state_dir: Path,
    kind: str,
    app: str,
    summary: str,
    detail: str | dict[str, Any],
    notes: str | None = None,
) -> Alert:
    """Write a pending alert atomically (files only: nothing asks for its relay)."""
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
    for _ in range(MAX_SAME_MOMENT):  # the id names the file: never overwrite an alert
        alert_id = f"{compact(moment)}-{kind}-{app}"
        alert = BOX.put(state_dir, alert_id, partial(
            Alert, id=alert_id, kind=kind, app=app, ts=iso(moment), summary=summary,
            detail=detail, notes=notes))
        if alert is not None:
            log.info("alert %s written: %s", alert_id, summary)
            return alert
        moment += timedelta(microseconds=1)
    raise StateError(f"{MAX_SAME_MOMENT} alerts {kind} of {app} written in one microsecond "
                     f"under {alerts_dir(state_dir)}: is something writing alerts in a loop?")


def load_alert(state_dir: Path, alert_id: str) -> Alert | None:
    """The pending alert ``alert_id``, ``None`` when it is not pending."""
    return BOX.load(pending_path(state_dir, alert_id))


def pending(state_dir: Path) -> list[Alert]:
    """Alerts not yet relayed, oldest first."""
    return BOX.pending(state_dir)


def seen(state_dir: Path) -> list[Alert]:
    """Alerts already relayed, oldest first."""
    return BOX.sent(state_dir)


def mark_seen(state_dir: Path, alert_id: str) -> bool:
    """Move a pending alert into ``seen/`` (one atomic rename). False if it was not pending."""
    return BOX.mark_sent(state_dir, alert_id)
