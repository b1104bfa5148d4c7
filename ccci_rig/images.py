"""The images a recipe needs: every ``image:`` of its compose files, at every tag and HEAD."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from ccci_rig.errors import RigError

GIT_TIMEOUT_S = 60


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=GIT_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RigError(f"`git {' '.join(args)}` in {repo} failed: {proc.stderr.strip()}")
    return proc.stdout


def _images(text: str, where: str) -> set[str]:
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RigError(f"{where} is not YAML: {exc}") from exc
    services = doc.get("services") if isinstance(doc, dict) else None
    found = set()
    for service in (services or {}).values():
        image = service.get("image") if isinstance(service, dict) else None
        if isinstance(image, str) and "$" not in image:
            found.add(image)
    return found


def recipe_images(repo: Path) -> list[str]:
    """The images named by ``compose*.yml`` of the recipe repository ``repo``, at each of its
    tags and at HEAD (an upgrade deploys an older version first). Names holding a ``$`` are
    left out: they depend on an env file."""
    found: set[str] = set()
    refs = ["HEAD", *_git(repo, "tag", "--list").split()]
    for ref in refs:
        for name in _git(repo, "ls-tree", "--name-only", ref).split():
            if name.startswith("compose") and name.endswith((".yml", ".yaml")):
                found |= _images(_git(repo, "show", f"{ref}:{name}"), f"{repo}@{ref}:{name}")
    return sorted(found)
