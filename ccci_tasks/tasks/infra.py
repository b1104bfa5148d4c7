"""Entry points of the infra lane that INTERFACES.md names but this version does not run yet.

``nightly_sweep`` (SPEC R8) and ``warm_reconcile`` (SPEC R2) keep their public names so the
bridge and beat can import them; calling one ends at once with an ``InfraError`` that says so,
rather than doing part of the job. They have no beat entry.
"""

from __future__ import annotations

from typing import Any

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.errors import InfraError


@app.task(name=c.task_name(c.QUEUE_INFRA, "nightly_sweep"))  # type: ignore[untyped-decorator]
def nightly_sweep() -> dict[str, Any]:
    """The nightly sweep (R8): not available in this version."""
    raise InfraError(
        "the nightly sweep is not available in this version; run `ccci cold RECIPE` for "
        "each enrolled recipe (`ccci enrolled`) instead"
    )


@app.task(name=c.task_name(c.QUEUE_INFRA, "warm_reconcile"))  # type: ignore[untyped-decorator]
def warm_reconcile(app_name: str) -> dict[str, Any]:
    """The live-warm reconciler (R2): not available in this version."""
    raise InfraError(
        f"warm_reconcile of {app_name!r} is not available in this version; "
        "reconcile keycloak/traefik by hand"
    )
