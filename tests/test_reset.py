"""`make reset` takes this system's apps off the engine, and no other system's.

scripts/reset_apps.py (what `make reset` runs with run/ccci.env loaded) on the real engine:
the apps of its base domain go with their volumes, whatever their kind; an app of another
base domain, and a volume without ccci labels, stay.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import REPO, TEST_ENV

from ccci_tasks.constants import LABEL_DOMAIN, LABEL_KIND, LABEL_RECIPE, STACK_NAMESPACE_LABEL
from ccci_tasks.naming import Domain, stack_name

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker]


@pytest.fixture
def volumes(swarm: DockerClient) -> Iterator[dict[str, str]]:
    """Volumes of apps of two base domains of their own, and one unlabelled volume."""
    hexid = os.urandom(3).hex()
    mine, other = f"r{hexid}.localhost", f"o{hexid}.localhost"
    domains = {"infra": Domain(f"warm-keycloak.{mine}"),
               "warm": Domain(f"warm-custom-html.{mine}"),
               "other": Domain(f"warm-custom-html.{other}")}
    made = {}
    for key, domain in domains.items():
        kind = "infra" if key == "infra" else "warm"
        labels = {LABEL_KIND: kind, LABEL_DOMAIN: domain,
                  LABEL_RECIPE: domain.split(".")[0].removeprefix("warm-"),
                  STACK_NAMESPACE_LABEL: stack_name(domain)}
        made[key] = swarm.volumes.create(f"{stack_name(domain)}_data", labels=labels).name
    made["plain"] = swarm.volumes.create(f"ccci-reset-test-{hexid}").name
    made["base"] = mine
    yield made
    for key, name in made.items():
        if key != "base":
            subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True,
                           check=False)


def test_reset_removes_exactly_this_base_domains_apps(
    swarm: DockerClient, volumes: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **TEST_ENV, "CCCI_BASE_DOMAIN": volumes["base"],
           "CCCI_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "scripts/reset_apps.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    left = {v.name for v in swarm.volumes.list()}
    assert volumes["infra"] not in left and volumes["warm"] not in left
    assert volumes["other"] in left and volumes["plain"] in left
    base = volumes["base"]
    assert done.stdout.splitlines() == [
        f"reset: removed warm-custom-html.{base} (warm) with its volumes and secrets",
        f"reset: removed warm-keycloak.{base} (infra) with its volumes and secrets"]
    again = subprocess.run([sys.executable, "scripts/reset_apps.py"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert (again.returncode, again.stdout.strip()) == (0, f"reset: no app of {base} on the engine")
