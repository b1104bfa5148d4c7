"""Recipe repositories as they were when an older version was the newest: for reconcile tests.

``session_copy`` copies a recipe repository (e.g. one built by ``examples/make_recipes.py``)
so a test can change it freely; ``keep_tags_upto`` then deletes every version tag newer than
a given version and moves ``main`` (and the work tree) back to that version's commit. The
example keycloak stand-in's versions are ordered so that each reconcile scenario is "keep
the tags up to X": a patch bump, a broken patch (unhealthy or crash-looping), a minor bump
whose notes flag a manual migration, a major bump.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ccci_tasks.versions import is_version, parse_version

GIT = ["git", "-c", "user.name=ccci-test", "-c", "user.email=test@ccci.invalid",
       "-c", "advice.detachedHead=false"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def session_copy(src: Path, dest_dir: Path) -> Path:
    """A full copy of recipe repository ``src`` at ``dest_dir/<name of src>``; returns it."""
    dest = Path(dest_dir) / Path(src).name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    return dest


def version_tags(repo: Path) -> list[str]:
    """The repository's version tags, oldest first."""
    tags = [t for t in _git(repo, "tag", "--list").split() if is_version(t)]
    return sorted(tags, key=parse_version)


def keep_tags_upto(repo: Path, version: str) -> list[str]:
    """Delete the version tags newer than ``version``; ``main`` goes back to its commit.

    Returns the deleted tags. ``version`` must be a tag of the repository.
    """
    tags = version_tags(repo)
    if version not in tags:
        raise AssertionError(f"{repo} has no tag {version!r}; it has {tags}")
    newer = [t for t in tags if parse_version(t) > parse_version(version)]
    if newer:
        _git(repo, "tag", "-d", *newer)
    _git(repo, "checkout", "-q", "main")
    _git(repo, "reset", "-q", "--hard", f"refs/tags/{version}")
    return newer
