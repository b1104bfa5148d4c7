"""scripts/pr_commit.py (`make pr-commit`): a PR commit per recipe shape, tags left alone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pr_commit.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ccci_pr_commit", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ccci_pr_commit"] = module
    spec.loader.exec_module(module)
    return module


script = _load()


def pr_commit(repo: Path, *, bad: bool = False, base: str | None = None) -> str:
    """A PR commit on ``base`` (default: the newest tag) as ``make pr-commit`` makes it; its sha."""
    from ccci_tasks.naming import Recipe
    from ccci_tasks.platform.recipes import RecipeRepo

    base = base or RecipeRepo(repo, Recipe(repo.name)).latest()
    assert base is not None
    sha, _, _ = script.commit_pr(repo, base,
                                 lambda tree, number: script.change(tree, number, None, bad))
    return str(sha)


def _show(repo: Path, ref: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def _build(tmp_path: Path, recipe: str) -> Path:
    subprocess.run([sys.executable, str(REPO / "examples" / "make_recipes.py"),
                    "--recipes-dir", str(tmp_path), "--recipe", recipe, "--no-images"],
                   check=True, capture_output=True, timeout=120)
    return tmp_path / recipe


def test_a_migration_and_its_config_version(tmp_path: Path) -> None:
    """A recipe with migrations gets migration N+1 on its first table and the version of
    the config that ships migrations.sql bumped in abra.sh (kanban-pg: SCHEMA_VERSION);
    the tags stay where they were."""
    repo = _build(tmp_path, "kanban-pg")
    tags = subprocess.run(["git", "-C", str(repo), "show-ref", "--tags"], check=True,
                          capture_output=True, text=True).stdout
    good = pr_commit(repo)
    migrations = _show(repo, good, "migrations.sql")
    assert "-- migration 4: flag cards (PR 1)" in migrations
    assert "ALTER TABLE cards ADD COLUMN pr_1_flag" in migrations
    assert "export SCHEMA_VERSION=v4\n" in _show(repo, good, "abra.sh")
    assert "count_cards()" in _show(repo, good, "abra.sh")  # the rest of abra.sh kept
    bad = pr_commit(repo, bad=True)
    broken = _show(repo, bad, "migrations.sql")
    assert "-- migration 4: prune old cards (PR 2, broken)\n-- no-transaction\n" in broken
    assert "DELETE FROM cards WHERE id % 2 = 0;" in broken
    assert subprocess.run(["git", "-C", str(repo), "show-ref", "--tags"], check=True,
                          capture_output=True, text=True).stdout == tags


def test_a_greeting_otherwise(tmp_path: Path) -> None:
    """custom-html's PR changes the served greeting."""
    repo = _build(tmp_path, "custom-html")
    sha = pr_commit(repo)
    assert "GREETING=${GREETING:-Hello from PR 1}" in _show(repo, sha, "compose.yml")
