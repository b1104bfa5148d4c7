"""The custom-html example recipe honours the swarm recipe contract under `docker stack deploy`."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import httpx
import pytest

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

VERSION = "1.0.0+1.0"
STACK = "exmp-0e0e0e_ci_localhost"
DOMAIN = "exmp-0e0e0e.ci.localhost"
NAMESPACE = "com.docker.stack.namespace"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _export(repo: Path, ref: str, dest: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref],
        capture_output=True, check=True, timeout=30,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _env_sample(tree: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (tree / ".env.sample").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" in line
    )
    return {k.strip(): v.strip() for k, v in pairs}


def _stack_deploy(tree: Path, env: dict[str, str]) -> None:
    subprocess.run(
        ["docker", "stack", "deploy", "--resolve-image", "never", "-c", "compose.yml", STACK],
        cwd=tree, env=env, check=True, capture_output=True, timeout=60,
    )


def _stack_rm(client: DockerClient) -> None:
    """`docker stack rm`, then stop the leftover containers (swarm's agent is slow at it)."""
    subprocess.run(["docker", "stack", "rm", STACK], check=True, capture_output=True, timeout=60)
    label = f"{NAMESPACE}={STACK}"
    for container in client.containers.list(all=True, filters={"label": label}):
        try:
            container.stop()
            container.remove()
        except docker.errors.APIError:
            pass  # swarm removed it first
    deadline = time.monotonic() + 60
    while client.containers.list(all=True, filters={"label": label}):
        assert time.monotonic() < deadline, "stack containers still there after 60 s"
        time.sleep(0.2)


def _time_to_serve(url: str, expect: str, timeout_s: float = 60) -> float:
    """Seconds from now until GET url answers 200 with ``expect`` in the body."""
    started = time.monotonic()
    last = ""
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() - started < timeout_s:
            try:
                response = client.get(url, headers={"Host": DOMAIN}, timeout=2)
                if response.status_code == 200 and expect in response.text:
                    return time.monotonic() - started
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
    raise AssertionError(f"{url} did not serve {expect!r} within {timeout_s} s; last: {last}")


def _app_log(client: DockerClient) -> str:
    """The log of the stack's one running app container."""
    [container] = client.containers.list(filters={"label": f"{NAMESPACE}={STACK}"})
    return str(container.logs(stdout=True, stderr=True).decode(errors="replace"))


def test_cold_boot_waits_init_delay_and_warm_boot_does_not(
    clean_swarm: DockerClient, example_recipes: Path, tmp_path: Path
) -> None:
    """1.0.0+1.0 serves its version on its loopback port; the first boot initialises the
    empty volume (its log says so, and it takes at least INIT_DELAY); the warm boot on the kept
    volume does not initialise again (its log says it serves, without the first-boot line)."""
    # No ccci labels on purpose: the recipe is deployed exactly as written (so no other
    # session's clean_swarm removes it mid-test); the test removes its stack and volume.
    tree = _export(example_recipes / "custom-html", VERSION, tmp_path / "tree")
    sample = _env_sample(tree)
    init_delay = float(sample["INIT_DELAY"])
    assert init_delay >= 3
    port = _free_port()
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        **sample, "DOMAIN": DOMAIN, "STACK_NAME": STACK, "CCCI_HTTP_PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}/"
    try:
        started = time.monotonic()
        _stack_deploy(tree, env)
        cold = time.monotonic() - started + _time_to_serve(url, f"custom-html {VERSION}")

        service = clean_swarm.services.get(f"{STACK}_app")
        assert service.attrs["Spec"]["Labels"][f"coop-cloud.{STACK}.version"] == VERSION
        cold_log = _app_log(clean_swarm)
        assert "first boot on an empty volume, initialising" in cold_log, cold_log

        _stack_rm(clean_swarm)
        volume = clean_swarm.volumes.get(f"{STACK}_data")  # kept by stack rm
        started = time.monotonic()
        _stack_deploy(tree, env)
        warm = time.monotonic() - started + _time_to_serve(url, f"custom-html {VERSION}")

        boots = httpx.get(f"{url}boots.txt", trust_env=False, timeout=5).text.splitlines()
        print(f"\ncustom-html {VERSION}: cold boot {cold:.2f} s, warm boot {warm:.2f} s "
              f"(INIT_DELAY {init_delay:g} s)")
        warm_log = _app_log(clean_swarm)
        assert "serving" in warm_log and "first boot" not in warm_log, warm_log
        assert cold >= init_delay, f"cold boot took {cold:.2f} s < INIT_DELAY {init_delay}"
        assert len(boots) == 2, f"boots.txt should keep both boots: {boots}"
        assert Path(volume.attrs["Mountpoint"], ".initialised").exists() or os.geteuid() != 0
    finally:
        _stack_rm(clean_swarm)
        for volume in clean_swarm.volumes.list(filters={"label": f"{NAMESPACE}={STACK}"}):
            volume.remove(force=True)
