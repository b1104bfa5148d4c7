"""Infra tasks: the sweep watchdog, the realm reaper, the start-up reconcile.

The reconcile and sweep entry tasks (``warm_reconcile``, ``nightly_sweep``) are made from
their lanes' declarations in ``ccci_tasks.tasks.lanes``. When a worker that consumes the
``infra`` queue is ready, every app of ``CCCI_INFRA_APPS`` is reconciled once (R2.4).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import CcciError
from ccci_tasks.lanes import reconcile, sweep
from ccci_tasks.lanes.model import run_hex
from ccci_tasks.naming import RunHex
from ccci_tasks.tasks.lanes import entry_of

log = logging.getLogger(__name__)


@app.task(name=c.task_name(c.QUEUE_INFRA, "sweep_watchdog"))  # type: ignore[untyped-decorator]
def sweep_watchdog() -> dict[str, Any]:
    """R8.3: fire a sweep when the last completed one is older than CCCI_SWEEP_MAX_AGE_H
    (a night lost to a broker outage still gets its sweep)."""
    from ccci_tasks.state import sweeps
    from ccci_tasks.state.clock import utc_now

    settings = get_settings()
    since = sweeps.reference_time(settings.state_dir, broker.client(settings))
    age_h = (utc_now() - since).total_seconds() / 3600
    if age_h <= settings.sweep_max_age_h:
        return {"fired": False, "age_h": round(age_h, 2)}
    log.warning("the last sweep completed %.1f h ago (more than %g h): firing one", age_h,
                settings.sweep_max_age_h)
    result = entry_of(sweep.LANE).delay(scheduled=False)
    return {"fired": True, "age_h": round(age_h, 2), "run_id": result.id}


def live_run_hexes(settings: Settings) -> set[RunHex]:
    """Hexes of every run that is not over: occupying, queued, or with a live cold app."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.lanes.janitor import ours
    from ccci_tasks.platform import get_platform

    slots = Slots.from_settings(settings)
    hexes = {run_hex(lease.run_id) for lease in slots.occupying()}
    hexes |= {run_hex(spec.run_id) for spec in slots.pending()}
    hexes |= {a.run for a in ours(get_platform(settings).live_apps(), settings.base_domain)
              if a.kind == "cold" and a.run}
    return hexes


def reap_realms(settings: Settings, *, dry_run: bool) -> dict[str, Any]:
    """R3.2: delete the per-run realms whose run is over (one list call)."""
    from ccci_tasks import realms
    from ccci_tasks.keycloak import KeycloakAdmin

    with KeycloakAdmin.from_settings(settings) as admin:
        return realms.reap(admin, lambda: live_run_hexes(settings), dry_run=dry_run)


@app.task(name=c.task_name(c.QUEUE_INFRA, "realm_reap"))  # type: ignore[untyped-decorator]
def realm_reap() -> dict[str, Any]:
    """Delete orphaned per-run realms (beat); nothing to do without a warm keycloak."""
    settings = get_settings()
    if not settings.keycloak_url:
        return {"skipped": "CCCI_KEYCLOAK_URL is not set: no realms to reap"}
    return reap_realms(settings, dry_run=False)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _reconcile_on_start(sender: Any = None, **_: Any) -> None:
    """An infra worker that is ready reconciles every live-warm app once (R2.4)."""
    try:
        queues = {q.name for q in sender.task_consumer.queues}
    except AttributeError:
        return
    if c.QUEUE_INFRA not in queues:
        return
    try:
        apps = get_settings().infra_app_list()
        for name in apps:
            entry_of(reconcile.LANE).delay(name)
    except CcciError as exc:
        log.error("could not queue the start-up reconciles: %s", exc)
        return
    if apps:
        log.info("queued the start-up reconcile of %s", ", ".join(apps))
