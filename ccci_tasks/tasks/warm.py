"""Snapshot and restore of a data-warm canonical: thin task wrappers over ``state.warmsnap``."""

from __future__ import annotations

from typing import Any

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import get_settings
from ccci_tasks.naming import validate_domain, validate_recipe, validate_version
from ccci_tasks.platform import get_platform
from ccci_tasks.state import warmsnap


@app.task(name=c.task_name(c.QUEUE_RUNS, "snapshot"))  # type: ignore[untyped-decorator]
def snapshot(recipe: str, domain: str, version: str) -> dict[str, Any]:
    """Snapshot the undeployed app's volumes as the recipe's known-good; return the manifest."""
    validate_recipe(recipe)
    validate_domain(domain)
    validate_version(version)
    settings = get_settings()
    manifest = warmsnap.snapshot(
        get_platform(settings), settings.state_dir, recipe, domain, version
    )
    return manifest.to_json()


@app.task(name=c.task_name(c.QUEUE_RUNS, "restore"))  # type: ignore[untyped-decorator]
def restore(recipe: str, domain: str) -> dict[str, Any]:
    """Restore the recipe's known-good snapshot into the undeployed app's volumes."""
    validate_recipe(recipe)
    validate_domain(domain)
    settings = get_settings()
    manifest = warmsnap.restore(get_platform(settings), settings.state_dir, recipe, domain)
    return manifest.to_json()
