"""``RecipeRepo`` against a real git repository made in a temp directory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ccci_tasks.errors import AppNotFound, CommandFailed, InvalidInput, PlatformError, WaitTimeout
from ccci_tasks.naming import Recipe
from ccci_tasks.platform.recipes import RecipeRepo

DEMO = Recipe("demo")
BAD_REFS = ["--upload-pack=x", "$(id)", "a..b", "-x", "a b", "main;id", "`id`"]


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as a throwaway identity; return stdout."""
    proc = subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "-c",
            "tag.gpgSign=false",
            "-c",
            "commit.gpgSign=false",
            *args,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return proc.stdout


def commit_files(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe repo: four version tags (one annotated), a junk tag, notes in 3 places."""
    path = tmp_path_factory.mktemp("recipes") / "demo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit_files(path, {"compose.yml": "v1\n", "release/1.0.0+1.0": "first notes\n"}, "v1")
    git(path, "tag", "1.0.0+1.0")
    commit_files(path, {"compose.yml": "v2\n", "releaseNotes/1.2.0+1.2.md": "ATTENTION: x\n"}, "v2")
    git(path, "tag", "-a", "-m", "annotated", "1.2.0+1.2")
    commit_files(path, {"compose.yml": "v10\n", "release/1.10.0+2.0.md": "md notes\n"}, "v10")
    git(path, "tag", "1.10.0+2.0")
    git(path, "tag", "not-a-version")
    git(path, "tag", "v9.9.9")
    commit_files(path, {"compose.yml": "v3\n", "release/1.0.0+1.0": "rewritten later\n"}, "v3")
    git(path, "tag", "1.3.0+1.3")
    commit_files(path, {"release/next": "upcoming\n", "sub/dir/file.txt": "deep\n"}, "next")
    return path


@pytest.fixture
def recipe(repo: Path) -> RecipeRepo:
    return RecipeRepo(repo, DEMO)


def test_versions_sorted_and_filtered(recipe: RecipeRepo) -> None:
    """versions() lists only version tags, ordered numerically (1.10 after 1.3)."""
    assert recipe.versions() == ["1.0.0+1.0", "1.2.0+1.2", "1.3.0+1.3", "1.10.0+2.0"]
    assert recipe.latest() == "1.10.0+2.0"


def test_latest_none_without_tags(tmp_path: Path) -> None:
    """A recipe with no version tags has no latest."""
    git(tmp_path, "init", "-q", "-b", "main")
    commit_files(tmp_path, {"compose.yml": "x\n"}, "init")
    assert RecipeRepo(tmp_path, Recipe("empty")).versions() == []
    assert RecipeRepo(tmp_path, Recipe("empty")).latest() is None


def test_release_notes_in_all_locations(recipe: RecipeRepo) -> None:
    """Notes are found in release/<v>, release/<v>.md and releaseNotes/<v>.md."""
    assert recipe.release_notes("1.0.0+1.0") == "first notes\n"
    assert recipe.release_notes("1.10.0+2.0") == "md notes\n"
    assert recipe.release_notes("1.2.0+1.2") == "ATTENTION: x\n"


def test_release_notes_read_at_the_tag(recipe: RecipeRepo, repo: Path) -> None:
    """Notes come from the version's tag, not from HEAD or the working tree."""
    assert (repo / "release" / "1.0.0+1.0").read_text() == "rewritten later\n"
    assert recipe.release_notes("1.0.0+1.0") == "first notes\n"


def test_release_notes_next_and_missing(recipe: RecipeRepo) -> None:
    """'next' reads release/next at HEAD; a version without notes gives None."""
    assert recipe.release_notes("next") == "upcoming\n"
    assert recipe.release_notes("1.3.0+1.3") is None


def test_release_notes_unknown_or_bad_version(recipe: RecipeRepo) -> None:
    """An unknown version is AppNotFound; a malformed one is InvalidInput."""
    with pytest.raises(AppNotFound, match=r"'9\.9\.9\+1'"):
        recipe.release_notes("9.9.9+1")
    with pytest.raises(InvalidInput, match="'main'"):
        recipe.release_notes("main")


def test_commit_and_short_sha(recipe: RecipeRepo, repo: Path) -> None:
    """commit() gives the full sha (annotated tags peeled); short_sha its first 8, as abra."""
    for ref in ("1.2.0+1.2", "1.0.0+1.0", "main", "HEAD"):
        rev = ("refs/tags/" + ref) if "+" in ref else ref
        full = git(repo, "rev-parse", rev + "^{commit}").strip()
        assert recipe.commit(ref) == full
        assert recipe.short_sha(ref) == full[:8]
    head = recipe.commit("HEAD")
    assert recipe.commit(head[:7]) == head
    assert recipe.short_sha(head) == head[:8]


def test_unknown_ref(recipe: RecipeRepo) -> None:
    """A ref that names no commit is AppNotFound naming the ref."""
    with pytest.raises(AppNotFound, match="'no-such-branch'"):
        recipe.commit("no-such-branch")
    with pytest.raises(AppNotFound):
        recipe.short_sha("0000000")


def test_file_at(recipe: RecipeRepo) -> None:
    """file_at reads a file as of a ref; missing files and directories give None."""
    assert recipe.file_at("1.0.0+1.0", "compose.yml") == "v1\n"
    assert recipe.file_at("1.10.0+2.0", "compose.yml") == "v10\n"
    assert recipe.file_at("main", "sub/dir/file.txt") == "deep\n"
    assert recipe.file_at("1.0.0+1.0", "sub/dir/file.txt") is None
    assert recipe.file_at("main", "sub") is None
    assert recipe.file_at("main", "nope.yml") is None


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "-x", "a/../b", "./a", "a//b", "", "a b"])
def test_file_at_bad_path(recipe: RecipeRepo, path: str) -> None:
    """Paths that are absolute, escaping or option-like are InvalidInput."""
    with pytest.raises(InvalidInput, match="repository path"):
        recipe.file_at("main", path)


def test_checkout_exports_tree(recipe: RecipeRepo, repo: Path, tmp_path: Path) -> None:
    """checkout writes the ref's tree into dest and leaves the shared repo untouched."""
    head_before = git(repo, "rev-parse", "HEAD")
    assert git(repo, "status", "--porcelain") == ""
    dest = recipe.checkout("1.0.0+1.0", tmp_path / "runs" / "abc" / "demo")
    assert (dest / "compose.yml").read_text() == "v1\n"
    assert (dest / "release" / "1.0.0+1.0").read_text() == "first notes\n"
    assert not (dest / ".git").exists()
    assert not (dest / "release" / "next").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD") == head_before
    assert (repo / "compose.yml").read_text() == "v3\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["demo"]  # no temp left over


def test_checkout_into_empty_dir_and_refuses_nonempty(recipe: RecipeRepo, tmp_path: Path) -> None:
    """checkout fills an empty directory and refuses one that holds files."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (recipe.checkout("main", empty) / "release" / "next").read_text() == "upcoming\n"
    with pytest.raises(PlatformError, match="not an empty directory"):
        recipe.checkout("main", empty)


def test_checkout_unknown_ref_leaves_nothing(recipe: RecipeRepo, tmp_path: Path) -> None:
    """A checkout of an unknown ref fails with AppNotFound and creates nothing."""
    with pytest.raises(AppNotFound):
        recipe.checkout("no-such-branch", tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []


def test_checkout_refuses_escaping_symlink(tmp_path: Path) -> None:
    """A tree with a link pointing outside dest is refused and leaves no partial tree."""
    repo = tmp_path / "evil"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "link").symlink_to("/etc/passwd")
    commit_files(repo, {"compose.yml": "x\n"}, "evil")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PlatformError, match="cannot export"):
        RecipeRepo(repo, Recipe("evil")).checkout("main", out / "dest")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("ref", BAD_REFS)
def test_bad_refs_rejected_before_git_runs(
    recipe: RecipeRepo, ref: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Option-like and shell-like refs are InvalidInput, and no git process is started."""

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a process was started: {args!r}")

    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    calls: list[Callable[[], object]] = [
        lambda: recipe.commit(ref),
        lambda: recipe.short_sha(ref),
        lambda: recipe.file_at(ref, "compose.yml"),
        lambda: recipe.checkout(ref, tmp_path / "dest"),
        lambda: recipe.release_notes(ref),
    ]
    for call in calls:
        with pytest.raises(InvalidInput) as info:
            call()
        assert repr(ref) in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_bad_recipe_name() -> None:
    """A RecipeRepo takes a parsed recipe name: a bad one is refused before it is made."""
    with pytest.raises(InvalidInput, match=r"'\.\./x'"):
        RecipeRepo(Path("/nonexistent"), Recipe("../x"))


def test_missing_repository(tmp_path: Path) -> None:
    """A missing directory or a directory that is no git repo is AppNotFound."""
    with pytest.raises(AppNotFound, match="no git repository"):
        RecipeRepo(tmp_path / "absent", DEMO).versions()
    with pytest.raises(AppNotFound, match="no git repository"):
        RecipeRepo(tmp_path, DEMO).versions()


class _GitStandIn:
    """Stands in for the git process (``subprocess.Popen``): exits 128, or never finishes."""

    hangs = False

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        self.args, self.pid, self.returncode = argv, 0, 128
        self._killed = False

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        if self.hangs and not self._killed:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return b"", b"fatal: boom\n"

    def kill(self) -> None:
        self._killed = True

    def __enter__(self) -> _GitStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_git_failure_is_command_failed(recipe: RecipeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """git exiting non-zero becomes CommandFailed carrying argv and stderr."""
    monkeypatch.setattr(subprocess, "Popen", _GitStandIn)
    with pytest.raises(CommandFailed, match="boom") as info:
        recipe.versions()
    assert info.value.argv[0] == "git" and info.value.returncode == 128


def test_git_timeout_is_a_wait_timeout(recipe: RecipeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """git running out of time becomes WaitTimeout naming the command and the timeout."""
    monkeypatch.setattr(_GitStandIn, "hangs", True)
    monkeypatch.setattr(subprocess, "Popen", _GitStandIn)
    with pytest.raises(WaitTimeout, match=r"timed out after 60 s waiting for `git -C .* tag"):
        recipe.versions()
