"""Make PR-like commits in a test recipe repository without touching its tags or HEAD."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

GIT = ["git", "-c", "user.name=ccci-test", "-c", "user.email=test@ccci.invalid",
       "-c", "advice.detachedHead=false"]


def make_commit(repo: Path, base: str, edits: dict[str, tuple[str, str]], branch: str) -> str:
    """Commit ``edits`` ({path: (old, new)}) on top of ``base`` as ``refs/heads/<branch>``.

    Returns the full sha. The repository's checked-out tree and tags are left alone.
    """
    with tempfile.TemporaryDirectory(prefix="ccci-pr-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run([*GIT, "clone", "-q", str(repo), str(clone)], check=True)
        subprocess.run([*GIT, "-C", str(clone), "checkout", "-q", base], check=True)
        for path, (old, new) in edits.items():
            target = clone / path
            text = target.read_text()
            assert old in text, f"{old!r} not in {path} at {base}"
            target.write_text(text.replace(old, new))
        subprocess.run([*GIT, "-C", str(clone), "commit", "-qam", f"test change: {branch}"],
                       check=True)
        sha = subprocess.run([*GIT, "-C", str(clone), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
        subprocess.run([*GIT, "-C", str(clone), "push", "-q", "origin",
                        f"HEAD:refs/heads/{branch}"], check=True)
    return sha
