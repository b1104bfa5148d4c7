"""The test suite's own hygiene: a session removes what ended sessions left on the engine.

A killed test session never cleans up. Its apps stay on the shared engine, and one that
crash-loops after an engine restart looks like a deploy in progress to every later session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import LIVE_DIR, remove_stale_sessions
from docker.errors import APIError, NotFound

if TYPE_CHECKING:
    from docker import DockerClient

IMAGE = "ccci/custom-html:1.0"  # built by examples/make_recipes.py


@pytest.fixture
def made(swarm: DockerClient, example_recipes: Path) -> Iterator[dict[str, str]]:
    """Three idle services: an ended session's, a running session's and `make up`'s."""
    bases = {"ended": f"t{os.urandom(3).hex()}.localhost",
             "running": f"t{os.urandom(3).hex()}.localhost", "up": "localhost"}
    (LIVE_DIR / bases["ended"]).touch()  # its session took the lock and is gone
    held = open(LIVE_DIR / bases["running"], "a")  # noqa: SIM115
    fcntl.flock(held, fcntl.LOCK_EX)
    names = {}
    for who, base in bases.items():
        domain = f"stale-{os.urandom(3).hex()}.{base}"
        names[who] = domain.replace(".", "_") + "_app"
        labels = {"ccci.kind": "test", "ccci.domain": domain}
        volume = swarm.volumes.create(domain.replace(".", "_") + "_data", labels=labels)
        names[f"{who} volume"] = volume.name
        swarm.services.create(
            IMAGE, command=["/bin/sleep", "600"], name=names[who], labels=labels,
            mounts=[f"{volume.name}:/data:rw"], stop_grace_period=500_000_000)
    try:
        yield names
    finally:
        held.close()
        for base in bases.values():
            if base != "localhost":
                (LIVE_DIR / base).unlink(missing_ok=True)
        for who, name in names.items():
            if not who.endswith("volume"):
                with contextlib.suppress(NotFound):
                    swarm.services.get(name).remove()
        for who, name in names.items():
            if who.endswith("volume"):
                for _ in range(60):  # its service's container lets go of it a moment later
                    try:
                        swarm.volumes.get(name).remove(force=True)
                    except NotFound:
                        break
                    except APIError:
                        time.sleep(0.5)


@pytest.mark.docker
def test_only_an_ended_sessions_objects_are_removed(swarm: DockerClient,
                                                    made: dict[str, str]) -> None:
    """An ended session's service and the volume its container had mounted go; a running
    session's and `make up`'s stay."""
    deadline = time.monotonic() + 60
    while not swarm.containers.list(filters={"volume": made["ended volume"]}):
        assert time.monotonic() < deadline, "the ended session's app never started"
        time.sleep(0.3)
    removed = remove_stale_sessions(swarm)
    assert any(made["ended"] in line for line in removed), removed
    assert not any(made["running"] in line or made["up"] in line for line in removed)
    with pytest.raises(NotFound):
        swarm.services.get(made["ended"])
    with pytest.raises(NotFound):
        swarm.volumes.get(made["ended volume"])
    for who in ("running", "up", "running volume", "up volume"):
        (swarm.volumes if who.endswith("volume") else swarm.services).get(made[who])
