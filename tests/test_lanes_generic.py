"""The lanes on a recipe unlike the example: two services, two volumes, another health path.

The recipe is made here from plain files (no new images: it reuses the busybox-based image of
custom-html with its own commands), enrolled in the session's tests dir, then seeded by a
cold run and exercised by a good and a crash-looping quick run.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TEST_ENV, Workers, flush_redis, ours, remove_ccci_objects
from recipe_commits import GIT, make_commit
from test_lanes import _wait, _wipe

from ccci_tasks.naming import Recipe
from ccci_tasks.state.reports import RunReport

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = Recipe("two-part")
COMPOSE = """\
version: "3.8"
services:
  app:
    image: ccci/custom-html:1.0
    entrypoint: ["/bin/sh", "-c"]
    command:
      - >-
        trap "exit 0" TERM; mkdir -p /content/www && echo ok > /content/www/health.txt &&
        echo "two-part @@VERSION@@ ${MOTTO:-steady}" > /content/www/index.html &&
        httpd -f -p 127.0.0.1:${CCCI_HTTP_PORT} -h /content/www & wait $$!
    networks: [hostnet]
    volumes: ["content:/content"]
    deploy:
      labels: ["coop-cloud.${STACK_NAME}.version=@@VERSION@@"]
  worker:
    image: ccci/custom-html:1.0
    entrypoint: ["/bin/sh", "-c"]
    command:
      - >-
        echo "@@VERSION@@ started" >> /state/journal.txt; trap "exit 0" TERM;
        while true; do sleep 1 & wait $$!; done
    networks: [hostnet]
    volumes: ["state:/state"]
networks:
  hostnet:
    external: true
    name: host
volumes:
  content:
  state:
"""
META = """\
WARM_CANONICAL = True
HEALTH_PATH = "/health.txt"
HEALTH_OK = [200]
DEPLOY_TIMEOUT = 90
HTTP_TIMEOUT = 30
"""


def _make_recipe(recipes: Path, tests_dir: Path) -> Path:
    repo = recipes / RECIPE
    if repo.exists():
        return repo
    repo.mkdir(parents=True)
    subprocess.run([*GIT, "init", "-q", "-b", "main", str(repo)], check=True)
    for version in ("1.0.0+1.0", "1.1.0+1.0"):
        (repo / "compose.yml").write_text(COMPOSE.replace("@@VERSION@@", version))
        (repo / ".env.sample").write_text("TYPE=two-part\n")
        (repo / "release").mkdir(exist_ok=True)
        (repo / "release" / version).write_text(f"{version}: nothing to do\n")
        subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
        subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", version], check=True)
        subprocess.run([*GIT, "-C", str(repo), "tag", version], check=True)
    (tests_dir / RECIPE).mkdir(parents=True, exist_ok=True)
    (tests_dir / RECIPE / "recipe_meta.py").write_text(META)
    return repo


def _labelled(objs: list[Any], kind: str) -> list[Any]:
    def labels(obj: Any) -> dict[str, str]:
        return obj.attrs.get("Spec", {}).get("Labels") or obj.attrs.get("Labels") or {}

    return [o for o in objs if ours(o) and labels(o).get("ccci.recipe") == RECIPE
            and labels(o).get("ccci.kind") == kind]


def _fingerprint(state: Path) -> dict[str, str]:
    files = [state / RECIPE / "canonical.json"]
    files += sorted(p for p in (state / RECIPE / "snapshot").resolve().rglob("*") if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def seeded(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str
           ) -> Iterator[RunReport]:
    """A clean system with the two-part recipe enrolled and seeded by a cold run."""
    from ccci_tasks.tasks import cold_run

    flush_redis(redis_server)
    remove_ccci_objects(swarm)
    _wipe(Path(TEST_ENV["CCCI_STATE_DIR"]))
    _make_recipe(example_recipes, Path(TEST_ENV["CCCI_TESTS_DIR"]))
    yield _wait(cold_run.delay(RECIPE).id)
    remove_ccci_objects(swarm)


def test_cold_run_seeds_every_volume(seeded: RunReport, swarm: DockerClient) -> None:
    """A two-service recipe is green on its own health path, and its canonical snapshot
    holds both volumes; nothing cold is left."""
    from ccci_tasks.state import warmsnap

    assert seeded.verdict == "pass", seeded.reason
    state = Path(TEST_ENV["CCCI_STATE_DIR"])
    manifest = warmsnap.read_current(state, RECIPE)
    assert manifest is not None and manifest.version == "1.1.0+1.0"
    assert sorted(v.name for v in manifest.volumes) == ["content", "state"]
    health = next(s for s in seeded.steps if s.name == "health_check")
    assert "/health.txt" in health.detail
    assert _labelled(swarm.services.list(), "cold") == []
    assert _labelled(swarm.volumes.list(), "cold") == []


def test_quick_runs_good_and_crash_looping(seeded: RunReport, swarm: DockerClient,
                                           example_recipes: Path) -> None:
    """A good head passes; a head whose second service crash-loops fails fast with the task
    error; both leave the canonical's registry and snapshot byte-identical."""
    from ccci_tasks.tasks import quick_run

    state = Path(TEST_ENV["CCCI_STATE_DIR"])
    before = _fingerprint(state)
    repo = example_recipes / RECIPE
    good = make_commit(repo, "1.1.0+1.0", {"compose.yml": ("steady", "moving")}, "pr-two-good")
    loop = "while true; do sleep 1 & wait $$!; done"
    bad = make_commit(repo, "1.1.0+1.0", {"compose.yml": (loop, "exit 3")}, "pr-two-bad")
    report = _wait(quick_run.delay(RECIPE, good).id)
    assert report.verdict == "pass", report.reason
    assert _fingerprint(state) == before
    report = _wait(quick_run.delay(RECIPE, bad).id)
    assert report.verdict == "fail", report.reason
    assert "worker" in (report.reason or "")
    assert "crash-looping" in (report.reason or "") and "timed out" not in report.reason
    upgrade = next(s for s in report.steps if s.name == "assert_upgrade")
    print(f"\nthe crash loop was named after {upgrade.duration_s:.1f} s of assert_upgrade")
    assert upgrade.duration_s < 150, "a crash loop must fail fast"
    assert _fingerprint(state) == before
    assert _labelled(swarm.services.list(), "warm") == []
    assert len(_labelled(swarm.volumes.list(), "warm")) == 2
