"""The platform seam: ``get_platform`` picks the swarm or abra backend from settings;
``run_finished`` (a run hook) lets it drop what it kept for one run alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccci_tasks.config import Settings
from ccci_tasks.naming import RunId
from ccci_tasks.platform.base import (
    AppInfo,
    ContainerStop,
    DeployedState,
    Kind,
    Platform,
    ServiceState,
    StopReport,
    VolumeInfo,
)

if TYPE_CHECKING:
    from ccci_tasks.state.reports import RunReport


def get_platform(settings: Settings, run_id: RunId | None = None) -> Platform:
    """The configured platform. ``run_id`` gives the abra backend its own ABRA_DIR."""
    if settings.platform == "abra":
        from ccci_tasks.platform.abra import AbraPlatform

        return AbraPlatform(settings, run_id=run_id)
    from ccci_tasks.platform.swarm import SwarmPlatform

    return SwarmPlatform(settings)


def run_finished(settings: Settings, report: RunReport) -> None:
    """A run ended: the abra backend deletes the run's own ABRA_DIR (its recipe checkouts);
    the swarm backend keeps nothing per run."""
    if settings.platform == "abra":
        from ccci_tasks.platform.abra import discard_run_dir

        discard_run_dir(settings, report.run_id)


__all__ = [
    "AppInfo",
    "ContainerStop",
    "DeployedState",
    "Kind",
    "Platform",
    "ServiceState",
    "StopReport",
    "VolumeInfo",
    "get_platform",
    "run_finished",
]
