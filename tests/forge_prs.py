"""Pull requests of every shape Gitea knows, opened on the forge stand-in.

* ``fork``: a branch of a contributor's fork (``head.ref`` is the branch, ``head.repo`` the fork);
* ``branch``: a branch of the base repository itself;
* ``agit``: pushed with ``git push origin HEAD:refs/for/main/<topic>`` (no branch anywhere;
  ``head.ref`` is ``refs/pull/<n>/head``, ``head.repo`` the base);
* ``fork-gone``: the contributor deleted the fork (``head.repo`` null, ``head.ref``
  ``refs/pull/<n>/head``);
* ``branch-gone``: the contributor deleted the branch from the fork (``head.ref``
  ``refs/pull/<n>/head``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe_commits import GIT, make_commit

if TYPE_CHECKING:
    from fake_forge import FakeForge

SHAPES = ("fork", "branch", "agit", "fork-gone", "branch-gone")
BASE_TAG = "1.0.0+1.0"
EDIT = {"compose.yml": ("hello from main", "hello from the PR")}
CONTRIBUTOR = "contributor"


def git(*args: str) -> str:
    return subprocess.run([*GIT, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


def source_repo(path: Path) -> Path:
    """A one-commit recipe-like repository on main, tagged 1.0.0+1.0."""
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", str(path))
    (path / "compose.yml").write_text("greeting: hello from main\n")
    git("-C", str(path), "add", "compose.yml")
    git("-C", str(path), "commit", "-qm", "first")
    git("-C", str(path), "tag", BASE_TAG)
    return path


def open_pr(forge: FakeForge, owner: str, name: str, number: int, shape: str) -> dict[str, Any]:
    """Open PR ``number`` of ``shape`` on ``owner/name`` (which must exist with its git data).

    Returns ``{sha, head_ref, head_clone_url}`` as the forge's API must report them.
    """
    pull_ref = f"refs/pull/{number}/head"
    if shape == "branch":
        sha = make_commit(forge.bare_path(owner, name), BASE_TAG, EDIT, f"same-{number}")
        forge.add_pull(owner, name, number, f"same-{number}")
        return {"sha": sha, "head_ref": f"same-{number}",
                "head_clone_url": forge.clone_url(owner, name)}
    if shape == "agit":
        sha = make_commit(forge.bare_path(owner, name), BASE_TAG, EDIT, f"agit-{number}")
        forge.agit_pull(owner, name, number, f"topic-{number}", f"agit-{number}")
        return {"sha": sha, "head_ref": pull_ref, "head_clone_url": forge.clone_url(owner, name)}
    if shape not in ("fork", "fork-gone", "branch-gone"):
        raise ValueError(f"unknown PR shape {shape!r}: one of {SHAPES}")
    forge.add_repo(CONTRIBUTOR, name, forge.bare_path(owner, name))
    fork = forge.bare_path(CONTRIBUTOR, name)
    sha = make_commit(fork, BASE_TAG, EDIT, f"feature-{number}")
    forge.add_pull(owner, name, number, f"feature-{number}", head_repo=(CONTRIBUTOR, name))
    if shape == "fork":
        return {"sha": sha, "head_ref": f"feature-{number}",
                "head_clone_url": forge.clone_url(CONTRIBUTOR, name)}
    if shape == "fork-gone":
        forge.delete_repo(CONTRIBUTOR, name)
        return {"sha": sha, "head_ref": pull_ref, "head_clone_url": None}
    git("-C", str(fork), "update-ref", "-d", f"refs/heads/feature-{number}")
    return {"sha": sha, "head_ref": pull_ref, "head_clone_url": forge.clone_url(CONTRIBUTOR, name)}
