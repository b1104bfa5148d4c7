"""UTC timestamps for files under the state root: ISO 8601 in JSON, compact in file names."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``2026-11-26T03:00:00.123456Z``: ISO 8601, UTC, microseconds, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compact(moment: datetime) -> str:
    """``20261126T030000.123456Z``: sortable and safe in a file name."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp that carries a UTC offset; ``ValueError`` otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"timestamp {text!r} has no time zone; expected UTC, e.g. ...Z")
    return moment.astimezone(UTC)
