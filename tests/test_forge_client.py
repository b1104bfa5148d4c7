"""The forge API client and the PR-head fetch, against the Gitea stand-in over loopback."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FORGE_BOT, FORGE_ENV, FORGE_OWNER
from pydantic import SecretStr
from recipe_commits import GIT, make_commit

from ccci_tasks.errors import ConfigError, ForgeError, InvalidInput, PlatformError
from ccci_tasks.forge.client import ForgeClient
from ccci_tasks.platform.recipes import RecipeRepo

TOKEN = FORGE_ENV["CCCI_FORGE_TOKEN"]


def _git(*args: str) -> str:
    return subprocess.run([*GIT, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


def _source_repo(path: Path) -> Path:
    """A one-commit recipe-like repository on main, tagged 1.0.0+1.0."""
    path.mkdir(parents=True)
    _git("init", "-q", "-b", "main", str(path))
    (path / "compose.yml").write_text("greeting: hello from main\n")
    _git("-C", str(path), "add", "compose.yml")
    _git("-C", str(path), "commit", "-qm", "first")
    _git("-C", str(path), "tag", "1.0.0+1.0")
    return path


@pytest.fixture
def forge(fake_forge: Any) -> Iterator[Any]:
    """The session forge stand-in, listening."""
    fake_forge.start()
    yield fake_forge
    fake_forge.start()


@pytest.fixture
def pr(forge: Any, tmp_path: Path) -> dict[str, Any]:
    """A fresh repository of the owner with PR 7 from a contributor's fork."""
    name = f"r-{uuid.uuid4().hex[:8]}"
    source = _source_repo(tmp_path / "source")
    forge.add_repo(FORGE_OWNER, name, source)
    forge.add_repo("contributor", name, source)
    sha = make_commit(forge.bare_path("contributor", name), "1.0.0+1.0",
                      {"compose.yml": ("hello from main", "hello from the PR")}, "feature")
    forge.add_pull(FORGE_OWNER, name, 7, "feature", head_repo=("contributor", name))
    forge.add_issue(FORGE_OWNER, name, 8)
    return {"name": name, "sha": sha, "source": source}


@pytest.fixture
def client(forge: Any) -> Iterator[ForgeClient]:
    with ForgeClient(forge.url, SecretStr(TOKEN), timeout_s=5) as api:
        yield api


def test_pull_request_head(client: ForgeClient, forge: Any, pr: dict[str, Any]) -> None:
    """The client reads a PR's state, head sha, branch and the fork's clone URL."""
    pull = client.pull(FORGE_OWNER, pr["name"], 7)
    assert (pull.number, pull.state, pull.head_ref, pull.head_sha) == (7, "open", "feature",
                                                                       pr["sha"])
    assert pull.clone_url == forge.clone_url("contributor", pr["name"])
    with pytest.raises(ForgeError, match="answered 404") as info:
        client.pull(FORGE_OWNER, pr["name"], 8)  # an issue, not a PR
    assert info.value.status == 404


@pytest.mark.parametrize(("granted", "write"), [
    ("write", True), ("admin", True), ("read", False), (None, False)])
def test_write_access(client: ForgeClient, forge: Any, pr: dict[str, Any], granted: str | None,
                      write: bool) -> None:
    """write and admin are write access; read, or a user the forge does not know, is not."""
    user = f"u{uuid.uuid4().hex[:6]}"
    if granted is not None:
        forge.set_permission(FORGE_OWNER, pr["name"], user, granted)
    assert client.has_write(FORGE_OWNER, pr["name"], user) is write


def test_status_and_comment_reach_the_forge(client: ForgeClient, forge: Any,
                                            pr: dict[str, Any]) -> None:
    """A posted status and comment are what the forge holds, with the bot as their author."""
    client.post_status(FORGE_OWNER, pr["name"], pr["sha"], "pending", "ccci/quick", "queued")
    client.post_status(FORGE_OWNER, pr["name"], pr["sha"], "success", "ccci/quick", "passed",
                       target_url="http://127.0.0.1:5555/task/x")
    client.post_comment(FORGE_OWNER, pr["name"], 7, "Queued a quick run")
    statuses = forge.statuses(FORGE_OWNER, pr["name"], pr["sha"])
    assert [(s["status"], s["context"], s["description"]) for s in statuses] == [
        ("pending", "ccci/quick", "queued"), ("success", "ccci/quick", "passed")]
    assert statuses[1]["target_url"] == "http://127.0.0.1:5555/task/x"
    assert {s["creator"]["login"] for s in statuses} == {FORGE_BOT}
    [comment] = forge.comments(FORGE_OWNER, pr["name"], 7)
    assert comment["body"] == "Queued a quick run" and comment["user"]["login"] == FORGE_BOT


def test_wrong_token_is_refused_and_never_shown(forge: Any, pr: dict[str, Any]) -> None:
    """A token the forge does not know is a 401 ForgeError; no message or repr shows it."""
    secret = "tok-hunter2-" + uuid.uuid4().hex
    with ForgeClient(forge.url, SecretStr(secret)) as api:
        with pytest.raises(ForgeError, match="answered 401") as info:
            api.pull(FORGE_OWNER, pr["name"], 7)
        assert info.value.status == 401
        assert "CCCI_FORGE_TOKEN" in str(info.value)
        for text in (str(info.value), repr(info.value), repr(api)):
            assert secret not in text


def test_forge_down_is_a_forge_error(client: ForgeClient, forge: Any,
                                     pr: dict[str, Any]) -> None:
    """A forge that refuses connections is a ForgeError saying there was no answer."""
    forge.stop()
    with pytest.raises(ForgeError, match="no answer from the forge") as info:
        client.post_status(FORGE_OWNER, pr["name"], pr["sha"], "pending", "ccci/quick", "q")
    assert info.value.status is None


def test_timeouts_are_forge_errors() -> None:
    """A request that times out (through an injected transport) becomes a ForgeError."""
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    api = ForgeClient("http://127.0.0.1:9", SecretStr("t"), transport=httpx.MockTransport(hang))
    with api, pytest.raises(ForgeError, match="ReadTimeout"):
        api.permission(FORGE_OWNER, "custom-html", "alice")


@pytest.mark.parametrize(("call", "needle"), [
    (lambda api: api.pull("../etc", "r", 1), "owner '../etc'"),
    (lambda api: api.pull(FORGE_OWNER, "r", 0), "number 0"),
    (lambda api: api.permission(FORGE_OWNER, "r", "a/b"), "user 'a/b'"),
    (lambda api: api.post_status(FORGE_OWNER, "r", "abc", "pending", "c", "d"), "sha 'abc'"),
    (lambda api: api.post_status(FORGE_OWNER, "r", "a" * 40, "done", "c", "d"), "'done'"),
])
def test_bad_names_never_reach_the_forge(forge: Any, call: Any, needle: str) -> None:
    """Owners, users, numbers, shas and states are validated before any request."""
    before = len(forge.requests)
    with ForgeClient(forge.url, SecretStr(TOKEN)) as api, pytest.raises(InvalidInput,
                                                                        match=needle):
        call(api)
    assert len(forge.requests) == before


@pytest.mark.parametrize("url", ["ftp://x/y", "https://user:pw@git.example/x", "", "not a url"])
def test_bad_forge_url_is_a_config_error(url: str) -> None:
    """CCCI_FORGE_URL must be an http(s) base URL without credentials."""
    with pytest.raises(ConfigError, match="CCCI_FORGE_URL"):
        ForgeClient(url, SecretStr("t"))


# --- fetching a PR head into the catalogue ------------------------------------------------


def _catalogue(pr: dict[str, Any], tmp_path: Path) -> RecipeRepo:
    dest = tmp_path / "catalogue" / pr["name"]
    _git("clone", "-q", str(pr["source"]), str(dest))
    return RecipeRepo(dest, pr["name"])


def test_fetch_pr_head_into_the_catalogue(forge: Any, pr: dict[str, Any],
                                          tmp_path: Path) -> None:
    """The PR head is fetched over HTTP as refs/pull/7/head; HEAD, branches, tags stay."""
    repo = _catalogue(pr, tmp_path)
    before = _git("-C", str(repo.path), "show-ref", "--head")
    url = forge.clone_url("contributor", pr["name"])
    assert repo.fetch(url, "refs/heads/feature", "refs/pull/7/head", pr["sha"]) == pr["sha"]
    assert repo.commit("refs/pull/7/head") == pr["sha"]
    assert repo.file_at(pr["sha"], "compose.yml") == "greeting: hello from the PR\n"
    after = _git("-C", str(repo.path), "show-ref", "--head")
    assert set(after.splitlines()) == {*before.splitlines(), f"{pr['sha']} refs/pull/7/head"}
    assert repo.fetch(url, "refs/heads/feature", "refs/pull/7/head", pr["sha"]) == pr["sha"]


def test_fetch_refuses_a_head_that_moved(forge: Any, pr: dict[str, Any],
                                         tmp_path: Path) -> None:
    """If the branch is not at the sha the forge reported, nothing is written."""
    repo = _catalogue(pr, tmp_path)
    url = forge.clone_url("contributor", pr["name"])
    with pytest.raises(PlatformError, match="branch moved"):
        repo.fetch(url, "refs/heads/feature", "refs/pull/7/head", "f" * 40)
    refs = _git("-C", str(repo.path), "for-each-ref", "--format=%(refname)")
    assert "refs/pull/" not in refs and "refs/ccci-fetch/" not in refs


@pytest.mark.parametrize(("url", "source", "dest", "sha", "needle"), [
    ("file:///etc", "refs/heads/x", "refs/pull/1/head", "a" * 40, "http:// or https://"),
    ("ext::sh -c id", "refs/heads/x", "refs/pull/1/head", "a" * 40, "http:// or https://"),
    ("ssh://git@h/x.git", "refs/heads/x", "refs/pull/1/head", "a" * 40, "http:// or https://"),
    ("--upload-pack=id", "refs/heads/x", "refs/pull/1/head", "a" * 40, "http:// or https://"),
    ("http://u:p@127.0.0.1/x.git", "refs/heads/x", "refs/pull/1/head", "a" * 40,
     "without credentials"),
    ("http://127.0.0.1/x.git", "--force", "refs/pull/1/head", "a" * 40, "'--force'"),
    ("http://127.0.0.1/x.git", "refs/heads/x", "refs/heads/main", "a" * 40, "refs/pull/"),
    ("http://127.0.0.1/x.git", "refs/heads/x", "refs/pull/1/head", "abc1234", "full"),
])
def test_fetch_validates_before_git_runs(tmp_path: Path, url: str, source: str, dest: str,
                                         sha: str, needle: str) -> None:
    """Non-http(s) remotes, credentials, option-like refs and short shas are refused."""
    repo = RecipeRepo(tmp_path / "nowhere", "custom-html")  # no repo: git would fail first
    with pytest.raises(InvalidInput, match=needle):
        repo.fetch(url, source, dest, sha)
