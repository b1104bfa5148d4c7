"""The platform seam: ``get_platform`` picks the swarm or abra backend from settings."""

from __future__ import annotations

from ccci_tasks.config import Settings
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


def get_platform(settings: Settings, run_id: str | None = None) -> Platform:
    """The configured platform. ``run_id`` gives the abra backend its own ABRA_DIR."""
    if settings.platform == "abra":
        from ccci_tasks.platform.abra import AbraPlatform

        return AbraPlatform(settings, run_id=run_id)
    from ccci_tasks.platform.swarm import SwarmPlatform

    return SwarmPlatform(settings)


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
]
