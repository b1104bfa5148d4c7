"""examples/make_recipes.py: deterministic repositories, per-version behaviour as checked data."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "make_recipes.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_recipes", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_recipes"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


mr = _load()


def _build(dest: Path) -> dict[str, str]:
    """Build every example repository (no images); {recipe: 'tag sha' lines}."""
    subprocess.run([sys.executable, str(SCRIPT), "--recipes-dir", str(dest), "--no-images"],
                   check=True, capture_output=True, timeout=120)
    return {
        repo.name: subprocess.run(["git", "-C", str(repo), "show-ref", "--tags", "--heads"],
                                  check=True, capture_output=True, text=True).stdout
        for repo in sorted(dest.iterdir())
    }


def test_repositories_are_deterministic(tmp_path: Path) -> None:
    """Two builds give the same tags and commit shas for every example recipe."""
    first, second = _build(tmp_path / "a"), _build(tmp_path / "b")
    assert sorted(first) == ["custom-html", "kanban-pg", "keycloak", "notes-pg", "slow-html",
                             "stubborn-html", "traefik"]
    assert first == second


def test_behaviour_is_baked_per_version() -> None:
    """Recipe defaults merged with a version's own keys land in /etc/ccci-behaviour, sorted."""
    spec = mr.load_spec(REPO / "examples" / "recipes" / "keycloak")
    by_version = {v.version: v for v in spec.versions}
    broken = by_version["1.0.2+26.0.2"]
    assert broken.behaviour_file().decode().splitlines() == [
        "boot_delay_s=1", "data_dir=/data", "health=missing",
        'health_body={"status": "UP", "checks": []}', "health_path=/health/ready",
        "schema=2", "write=broken.txt"]
    assert dict(by_version["1.0.3+26.0.3"].behaviour)["exit_code"] == "1"
    assert dict(by_version["1.0.0+26.0.0"].behaviour)["schema"] == "1"
    tar_bytes = mr.rootfs_tar(spec, broken, SCRIPT, [])
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile("etc/ccci-behaviour")
        assert member is not None and member.read() == broken.behaviour_file()
    assert len({v.image_tag for v in spec.versions}) == len(spec.versions)


def test_recipe_without_behaviour_gets_no_file() -> None:
    """custom-html declares no behaviour: its images carry no behaviour file (unchanged)."""
    spec = mr.load_spec(REPO / "examples" / "recipes" / "custom-html")
    assert all(v.behaviour == () for v in spec.versions)
    with tarfile.open(fileobj=io.BytesIO(mr.rootfs_tar(spec, spec.versions[0], SCRIPT, []))) as t:
        assert "etc/ccci-behaviour" not in t.getnames()


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ({"colour": "red"}, "unknown behaviour key 'colour'"),
        ({"health": "sick"}, "health='sick' does not match"),
        ({"health_path": "ping"}, "does not match"),
        ({"write": "../escape"}, "does not match"),
        ({"exit_code": True}, "must be a string or an integer"),
        ({"health_body": "a\nb"}, "does not match"),
        ({"write": "x.txt"}, "'write' needs a 'data_dir'"),
    ],
)
def test_bad_behaviour_refused(tmp_path: Path, behaviour: dict[str, Any], expected: str) -> None:
    """Unknown keys, values outside their pattern and write without data_dir are refused."""
    source = tmp_path / "demo"
    (source / "files").mkdir(parents=True)
    (source / "entrypoint.sh").write_text("#!/bin/sh\n")
    (source / "recipe.json").write_text(json.dumps({
        "recipe": "demo", "image": {"repository": "ccci/demo", "entrypoint": "entrypoint.sh"},
        "versions": [{"version": "1.0.0+1", "image_tag": "1", "behaviour": behaviour}]}))
    with pytest.raises(mr.BuildError, match=expected):
        mr.load_spec(source)


def test_keep_existing_keeps_a_users_commits(tmp_path: Path) -> None:
    """`--keep-existing` (what `make up` uses) keeps a repository that holds the expected
    tags, with a user's own branch and commit; without it, or when a tag moved, it is
    rebuilt."""
    run = [sys.executable, str(SCRIPT), "--recipes-dir", str(tmp_path), "--recipe",
           "custom-html", "--no-images"]
    subprocess.run(run, check=True, capture_output=True, timeout=120)
    repo = tmp_path / "custom-html"
    git = ["git", "-C", str(repo), "-c", "user.name=u", "-c", "user.email=u@example.invalid"]
    subprocess.run([*git, "checkout", "-q", "-b", "mine", "2.0.0+2.0"], check=True)
    (repo / "README.md").write_text("my change\n")
    subprocess.run([*git, "commit", "-qam", "my change"], check=True)
    mine = subprocess.run([*git, "rev-parse", "mine"], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run([*run, "--keep-existing"], check=True, capture_output=True, timeout=120)
    assert subprocess.run([*git, "rev-parse", "mine"], capture_output=True, text=True,
                          check=True).stdout.strip() == mine
    subprocess.run([*git, "tag", "-f", "-a", "-m", "moved", "2.0.0+2.0", "mine"], check=True,
                   capture_output=True)
    subprocess.run([*run, "--keep-existing"], check=True, capture_output=True, timeout=120)
    assert subprocess.run([*git, "rev-parse", "--verify", "-q", "mine"],
                          capture_output=True, text=True).returncode != 0, "not rebuilt"
