"""The keycloak and traefik stand-ins on the real swarm: every version behaves as declared.

Each version is deployed in place on one live-warm app with ``SwarmPlatform``: good versions
answer their health path 200; the broken keycloak versions write into their volume and then
serve without /health/ready (unhealthy) or exit (a crash loop). The keycloak stand-in's data
schema only moves forward, so a version-only rollback after a broken upgrade crash-loops and
the pre-upgrade snapshot under ``infra_dir`` is what brings the old version back (R2.3).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from conftest import TEST_BASE

from ccci_tasks import snapshots
from ccci_tasks.config import Settings
from ccci_tasks.errors import DeployFailed, WaitTimeout
from ccci_tasks.naming import Domain, Recipe, warm_domain
from ccci_tasks.platform.swarm import SwarmPlatform
from ccci_tasks.probes import reconverged, serving
from ccci_tasks.state.infra import infra_dir
from ccci_tasks.state.meta import RecipeMeta, load_meta

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CONVERGE_S = 60.0
EXAMPLE_TESTS = Path(__file__).resolve().parent.parent / "examples" / "tests-recipes"


@pytest.fixture
def platform(settings: Settings, clean_swarm: DockerClient) -> SwarmPlatform:
    """A SwarmPlatform on the session swarm and state root."""
    return SwarmPlatform(settings, client=clean_swarm)


KEYCLOAK = Recipe("keycloak")
TRAEFIK = Recipe("traefik")


def _app(platform: SwarmPlatform, recipe: Recipe, first: str) -> Iterator[Domain]:
    domain = warm_domain(recipe, Domain(TEST_BASE))
    platform.new_app(recipe, domain, first, kind="infra", run=None)
    try:
        yield domain
    finally:
        platform.remove(domain)


@pytest.fixture
def keycloak(platform: SwarmPlatform) -> Iterator[Domain]:
    """The live-warm keycloak stand-in's domain (env file made; removed afterwards)."""
    yield from _app(platform, KEYCLOAK, "1.0.0+26.0.0")


@pytest.fixture
def traefik(platform: SwarmPlatform) -> Iterator[Domain]:
    """The live-warm traefik stand-in's domain (env file made; removed afterwards)."""
    yield from _app(platform, TRAEFIK, "3.0.0+v3.1.0")


def _get(platform: SwarmPlatform, domain: Domain, path: str) -> httpx.Response:
    return httpx.get(platform.base_url(domain) + path, headers={"Host": domain}, timeout=5,
                     trust_env=False)


def _deploy_healthy(platform: SwarmPlatform, domain: Domain, version: str,
                    meta: RecipeMeta) -> None:
    """Deploy ``version``, wait until converged and its health path answers 200."""
    platform.deploy(domain, version)
    state = platform.wait_converged(domain, CONVERGE_S)
    assert state.version == version and reconverged(state)[0]
    assert serving(platform.base_url(domain), domain, meta.health_ok, meta.http_timeout,
                   path=meta.health_path) == 200
    assert _get(platform, domain, "/version").text == f"{platform.read_env(domain)['RECIPE']} "\
        f"{version}\n"


def _deploy_unhealthy(platform: SwarmPlatform, domain: Domain, version: str,
                      meta: RecipeMeta) -> None:
    """Deploy ``version``: it converges and serves, but its health path answers 404."""
    platform.deploy(domain, version)
    platform.wait_converged(domain, CONVERGE_S)
    assert _get(platform, domain, "/version").status_code == 200
    with pytest.raises(WaitTimeout, match="HTTP 404"):
        serving(platform.base_url(domain), domain, meta.health_ok, 3, path=meta.health_path)


def _data(platform: SwarmPlatform, domain: Domain) -> Path:
    [volume] = platform.volumes(domain)
    return Path(volume.mountpoint)


def test_keycloak_versions(platform: SwarmPlatform, keycloak: Domain, state_dir: Path) -> None:
    """Good keycloak versions are healthy; broken ones write into the volume, then fail."""
    meta = load_meta(EXAMPLE_TESTS, KEYCLOAK)
    assert meta.stateful
    _deploy_healthy(platform, keycloak, "1.0.0+26.0.0", meta)
    _deploy_healthy(platform, keycloak, "1.0.1+26.0.1", meta)
    data = _data(platform, keycloak)
    assert (data / "schema").read_text() == "1\n"
    assert len((data / "boots.txt").read_text().splitlines()) == 2

    platform.undeploy(keycloak)  # the pre-upgrade snapshot, where the reconciler keeps it
    base = infra_dir(state_dir, KEYCLOAK)
    manifest = snapshots.snapshot(platform, state_dir, KEYCLOAK, keycloak, "1.0.1+26.0.1",
                                 base=base)
    assert [v.name for v in manifest.volumes] == ["data"]
    assert (base / "snapshot" / "manifest.json").is_file()

    _deploy_unhealthy(platform, keycloak, "1.0.2+26.0.2", meta)
    assert (data / "broken.txt").read_text() == "written by keycloak 1.0.2+26.0.2\n"
    assert (data / "schema").read_text() == "2\n"

    platform.deploy(keycloak, "1.0.3+26.0.3")
    with pytest.raises(DeployFailed, match="crash-looping"):
        platform.wait_converged(keycloak, CONVERGE_S)
    assert (data / "crashed.txt").read_text() == "written by keycloak 1.0.3+26.0.3\n"

    # A version-only rollback over the migrated data cannot work: 1.0.1 refuses schema 2.
    platform.deploy(keycloak, "1.0.1+26.0.1")
    with pytest.raises(DeployFailed, match="crash-looping"):
        platform.wait_converged(keycloak, CONVERGE_S)
    platform.undeploy(keycloak)
    snapshots.restore(platform, state_dir, KEYCLOAK, keycloak, base=base)
    _deploy_healthy(platform, keycloak, "1.0.1+26.0.1", meta)
    assert not (data / "broken.txt").exists() and not (data / "crashed.txt").exists()
    assert (data / "schema").read_text() == "1\n"

    _deploy_healthy(platform, keycloak, "1.1.0+26.1.0", meta)
    _deploy_healthy(platform, keycloak, "2.0.0+27.0.0", meta)
    assert (data / "schema").read_text() == "3\n"


def test_traefik_versions(platform: SwarmPlatform, traefik: Domain) -> None:
    """Good traefik versions answer /ping 200; the broken one serves without /ping; no volume."""
    meta = load_meta(EXAMPLE_TESTS, TRAEFIK)
    assert not meta.stateful
    _deploy_healthy(platform, traefik, "3.0.0+v3.1.0", meta)
    assert _get(platform, traefik, "/ping").text == "OK\n"
    _deploy_healthy(platform, traefik, "3.0.1+v3.1.1", meta)
    _deploy_unhealthy(platform, traefik, "3.0.2+v3.1.2", meta)
    assert platform.volumes(traefik) == []
    _deploy_healthy(platform, traefik, "3.0.1+v3.1.1", meta)  # a version-only rollback works
    _deploy_healthy(platform, traefik, "3.0.3+v3.1.3", meta)  # the newest is good again
