"""The Docker engine: one SDK client per settings, its errors as ``PlatformError``, its times.

Every module of the platform that talks to the engine connects through ``docker_client`` and
wraps its calls in ``docker_errors``, so a failing or unreachable engine is always a
``PlatformError`` that says what was being done.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final

import docker
from docker.errors import DockerException

from ccci_tasks.config import Settings
from ccci_tasks.errors import PlatformError

__all__ = ["docker_client", "docker_errors", "parse_timestamp"]

_TS_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)


@contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Translate docker SDK and connection errors into ``PlatformError`` naming ``doing``."""
    try:
        yield
    except DockerException as exc:
        raise PlatformError(f"Docker failed while {doing}: {exc}") from exc
    except OSError as exc:  # requests' ConnectionError/Timeout are OSErrors
        raise PlatformError(
            f"cannot reach the Docker engine while {doing}: {exc}; check that dockerd runs "
            "and CCCI_DOCKER_HOST"
        ) from exc


def docker_client(settings: Settings) -> docker.DockerClient:
    """A docker SDK client for ``settings.docker_host`` (API version negotiated)."""
    with docker_errors(f"connecting to {settings.docker_host}"):
        return docker.DockerClient(base_url=settings.docker_host, version="auto", timeout=120)


def parse_timestamp(value: str | None) -> int:
    """Nanoseconds since the epoch of a Docker RFC 3339 time (``0`` when absent/zero).

    Docker trims trailing zeros of the fraction, so these strings do not sort as text.
    """
    if not value:
        return 0
    match = _TS_RE.match(value)
    if match is None:
        return 0
    whole, frac, zone = match.groups()
    offset = "+00:00" if zone == "Z" else zone
    stamp = datetime.fromisoformat(whole + offset)
    if stamp.year <= 1:
        return 0
    seconds = int((stamp - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
