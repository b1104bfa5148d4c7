"""Make a PR-like commit in a recipe repository of the local system, for a quick run.

Usage: ``python scripts/pr_commit.py [RECIPE] [--greeting TEXT] [--base TAG]``
(``make pr-commit RECIPE=custom-html``). On top of the recipe's newest tag (or ``--base``)
it commits a change on a new branch ``pr/<n>`` and prints the commit's full sha; then
``ccci quick RECIPE <sha> --wait`` tests it. For a recipe whose compose file has a
``GREETING`` default (the example custom-html) the change is the served greeting, so the
quick run's upgrade really changes the app; for any other recipe a line is added to its
README. The repository's tags and checked-out tree are left alone (a temporary clone is used).
Reads CCCI_RECIPES_DIR from the environment, else from the checkout's run/ccci.env.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=ccci demo", "-c", "user.email=demo@ccci.invalid",
       "-c", "advice.detachedHead=false", "-c", "commit.gpgsign=false"]
_GREETING = re.compile(r"(GREETING=\$\{GREETING:-)([^}]*)(\})")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="custom-html")
    parser.add_argument("--greeting", default=None, help="the new greeting (custom-html)")
    parser.add_argument("--base", default=None, help="tag to start from (default: newest)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", args.recipe):
        parser.error(f"recipe {args.recipe!r} is not a recipe name")
    repo = recipes_dir() / args.recipe
    if not (repo / ".git").exists():
        print(f"pr_commit: no recipe repository at {repo}; run `make up` first",
              file=sys.stderr)
        return 2
    base = args.base or git("describe", "--tags", "--abbrev=0", "main", cwd=repo)
    taken = {b.removeprefix("pr/") for b in git("branch", "--list", "pr/*", "--format",
                                                  "%(refname:short)", cwd=repo).split()}
    number = next(n for n in range(1, 10_000) if str(n) not in taken)
    branch = f"pr/{number}"
    greeting = args.greeting or f"Hello from PR {number}"
    with tempfile.TemporaryDirectory(prefix="ccci-pr-") as tmp:
        clone = Path(tmp) / "clone"
        git("clone", "-q", str(repo), str(clone), cwd=Path(tmp))
        git("checkout", "-q", base, cwd=clone)
        compose = clone / "compose.yml"
        text = compose.read_text(encoding="utf-8") if compose.is_file() else ""
        if _GREETING.search(text):
            compose.write_text(_GREETING.sub(lambda m: m.group(1) + greeting + m.group(3), text),
                               encoding="utf-8")
            what = f"greeting {greeting!r}"
        else:
            with open(clone / "README.md", "a", encoding="utf-8") as readme:
                readme.write(f"\n{greeting}\n")
            what = "a line in README.md"
        git("commit", "-qam", f"PR {number}: {what}", cwd=clone)
        sha = git("rev-parse", "HEAD", cwd=clone)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=clone)
    print(sha)
    print(f"pr_commit: {branch} of {args.recipe} on {base}: {what}; try "
          f"`.venv/bin/ccci quick {args.recipe} {sha} --wait`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
