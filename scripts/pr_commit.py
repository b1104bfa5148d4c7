"""Make a PR-like commit in a recipe repository of the local system, for a quick run.

Usage: ``python scripts/pr_commit.py [RECIPE] [--greeting TEXT] [--base TAG] [--bad]``
(``make pr-commit RECIPE=custom-html``). On top of the recipe's newest tag (or ``--base``)
it commits a change on a new branch ``pr/<n>`` and prints the commit's full sha; then
``ccci quick RECIPE <sha> --wait`` tests it. The change depends on the recipe:

* a recipe with migrations (a ``migrations.sql`` of ``-- migration <n>: <name>`` sections,
  shipped as a Docker config, like the example notes-pg and kanban-pg): a new migration
  that changes the first table the migrations create, and the config's version variable in
  ``abra.sh`` bumped (configs are immutable). ``--bad``: a migration that deletes half of
  that table's rows, committed, and then fails;
* a recipe whose compose file has a ``GREETING`` default (the example custom-html): the
  served greeting;
* any other recipe: a line added to its README.

The repository's tags and checked-out tree are left alone (a temporary clone is used).
Reads CCCI_RECIPES_DIR from the environment, else from the checkout's run/ccci.env.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=ccci demo", "-c", "user.email=demo@ccci.invalid",
       "-c", "advice.detachedHead=false", "-c", "commit.gpgsign=false"]
MIGRATIONS = "migrations.sql"
_GREETING = re.compile(r"(GREETING=\$\{GREETING:-)([^}]*)(\})")
_MIGRATION = re.compile(r"^-- migration (\d+): ", re.MULTILINE)
_FIRST_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)", re.IGNORECASE)
_VERSION_VAR = re.compile(r"\$\{([A-Z0-9_]+_VERSION)\}")


def recipes_dir() -> Path:
    if os.environ.get("CCCI_RECIPES_DIR"):
        return Path(os.environ["CCCI_RECIPES_DIR"])
    env = ROOT / "run" / "ccci.env"
    if env.is_file():
        for line in env.read_text(encoding="utf-8").splitlines():
            if line.startswith("CCCI_RECIPES_DIR="):
                return Path(line.split("=", 1)[1])
    return ROOT / "recipes"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def migrations_config_var(tree: Path) -> str | None:
    """The version variable (in a config's name) of the config whose file is migrations.sql."""
    for compose in sorted(tree.glob("compose*.yml")):
        data = yaml.safe_load(compose.read_text(encoding="utf-8")) or {}
        for config in (data.get("configs") or {}).values():
            if (config or {}).get("file") == MIGRATIONS:
                found = _VERSION_VAR.search(str(config.get("name", "")))
                if found:
                    return found.group(1)
    return None


def add_migration(tree: Path, number: int, *, bad: bool = False) -> str:
    """Append a migration to ``tree``'s migrations.sql and bump its config version in abra.sh;
    what it did, for the commit message."""
    path = tree / MIGRATIONS
    text = path.read_text(encoding="utf-8")
    version = max((int(v) for v in _MIGRATION.findall(text)), default=0) + 1
    first = _FIRST_TABLE.search(text)
    if first is None:
        raise SystemExit(f"pr_commit: {path} creates no table to change")
    table = first.group(1)
    if bad:
        body = (f"-- migration {version}: prune old {table} (PR {number}, broken)\n"
                "-- no-transaction\n"
                f"DELETE FROM {table} WHERE id % 2 = 0;\n"
                f"ALTER TABLE {table} ADD COLUMN archived_at timestamp with time zoen;\n")
        what = f"migration {version} deletes half of {table}, then fails"
    else:
        body = (f"-- migration {version}: flag {table} (PR {number})\n"
                f"ALTER TABLE {table} ADD COLUMN pr_{number}_flag boolean NOT NULL "
                "DEFAULT false;\n"
                f"UPDATE {table} SET pr_{number}_flag = true WHERE id % 10 = 0;\n")
        what = f"migration {version} adds a column to {table}"
    path.write_text(text.rstrip("\n") + "\n\n" + body, encoding="utf-8")
    var = migrations_config_var(tree)
    abra_sh = tree / "abra.sh"
    if var is not None and abra_sh.is_file():
        pattern = re.compile(rf"^(export {var}=v)(\d+)[ \t]*$", re.MULTILINE)
        script = abra_sh.read_text(encoding="utf-8")
        if pattern.search(script) is None:
            raise SystemExit(f"pr_commit: {abra_sh} has no 'export {var}=v<n>' line to bump")
        abra_sh.write_text(pattern.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", script),
                           encoding="utf-8")
    return what


def change(tree: Path, number: int, greeting: str | None, bad: bool) -> str:
    """Make the PR's change in ``tree``; what it did."""
    if (tree / MIGRATIONS).is_file():
        return add_migration(tree, number, bad=bad)
    if bad:
        raise SystemExit("pr_commit: --bad needs a recipe with migrations (migrations.sql)")
    compose = tree / "compose.yml"
    text = compose.read_text(encoding="utf-8") if compose.is_file() else ""
    greeting = greeting or f"Hello from PR {number}"
    if _GREETING.search(text):
        compose.write_text(_GREETING.sub(lambda m: m.group(1) + greeting + m.group(3), text),
                           encoding="utf-8")
        return f"greeting {greeting!r}"
    with open(tree / "README.md", "a", encoding="utf-8") as readme:
        readme.write(f"\n{greeting}\n")
    return "a line in README.md"


def commit_pr(repo: Path, base: str, edit: Callable[[Path, int], str],
              branch_prefix: str = "pr/") -> tuple[str, str, str]:
    """Commit ``edit(tree, number)`` on ``base`` as branch ``<prefix><n>`` of ``repo``;
    (sha, branch, what)."""
    taken = {b.removeprefix(branch_prefix)
             for b in git("branch", "--list", f"{branch_prefix}*", "--format",
                          "%(refname:short)", cwd=repo).split()}
    number = next(n for n in range(1, 10_000) if str(n) not in taken)
    branch = f"{branch_prefix}{number}"
    with tempfile.TemporaryDirectory(prefix="ccci-pr-") as tmp:
        clone = Path(tmp) / "clone"
        git("clone", "-q", str(repo), str(clone), cwd=Path(tmp))
        git("checkout", "-q", base, cwd=clone)
        what = edit(clone, number)
        git("commit", "-qam", f"PR {number}: {what}", cwd=clone)
        sha = git("rev-parse", "HEAD", cwd=clone)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=clone)
    return sha, branch, what


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="custom-html")
    parser.add_argument("--greeting", default=None, help="the new greeting (custom-html)")
    parser.add_argument("--base", default=None, help="tag to start from (default: newest)")
    parser.add_argument("--bad", action="store_true",
                        help="a migration that deletes rows and then fails")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", args.recipe):
        parser.error(f"recipe {args.recipe!r} is not a recipe name")
    repo = recipes_dir() / args.recipe
    if not (repo / ".git").exists():
        print(f"pr_commit: no recipe repository at {repo}; run `make up` first",
              file=sys.stderr)
        return 2
    base = args.base or git("describe", "--tags", "--abbrev=0", "main", cwd=repo)
    sha, branch, what = commit_pr(
        repo, base, lambda tree, number: change(tree, number, args.greeting, args.bad))
    print(sha)
    print(f"pr_commit: {branch} of {args.recipe} on {base}: {what}; try "
          f"`.venv/bin/ccci quick {args.recipe} {sha} --wait`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
