"""The whole beat schedule, and nothing else.

Entries name tasks by their registered names, so this module imports no task code.
Crontabs are evaluated in ``CCCI_TIMEZONE`` (default UTC, which has no DST gaps).
Beat's scheduler (``ccci_tasks.beat``, RedBeat) keeps each entry's last run in Redis, which is
how a run missed while every beat was down is caught up once, by whichever beat fires; beat may
run on several hosts and each entry fires once. A new entry first fires one interval after beat
starts (a crontab: at its next time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.schedules import crontab

if TYPE_CHECKING:
    from ccci_tasks.config import Settings


REALM_REAP_EVERY_S = 900  # orphaned realms cost nothing but clutter: every 15 minutes


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    hour, minute = (int(part) for part in settings.nightly_at.split(":"))
    return {
        # R8: every night at CCCI_NIGHTLY_AT in CCCI_TIMEZONE (the app's timezone). Its last
        # run is kept in Redis, so a night missed while beat was down runs once when beat is
        # back.
        "nightly_sweep": {
            "task": "ccci.infra.nightly_sweep",
            "schedule": crontab(hour=hour, minute=minute),
            "kwargs": {"scheduled": True},
        },
        # R8.3: a sweep lost to a broker outage is fired by the watchdog.
        "sweep_watchdog": {
            "task": "ccci.infra.sweep_watchdog",
            "schedule": float(settings.sweep_watchdog_s),
        },
        "relay_pending_alerts": {
            "task": "ccci.alerts.relay_pending_alerts",
            "schedule": 60.0,
        },
        "forge_sweep": {
            "task": "ccci.alerts.forge_sweep",
            "schedule": 60.0,
        },
        "janitor": {
            "task": "ccci.alerts.janitor",
            "schedule": float(settings.janitor_interval_s),
        },
        "realm_reap": {
            "task": "ccci.infra.realm_reap",
            "schedule": float(REALM_REAP_EVERY_S),
        },
    }


__all__ = ["beat_schedule", "crontab"]
