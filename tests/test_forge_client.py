"""The forge API client, the PR-head fetch and the trigger acting on them, against the Gitea
stand-in over loopback: PRs of every shape Gitea knows, private repositories, a token that
cannot see a repository."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import FORGE_BOT, FORGE_ENV, FORGE_OWNER
from fake_forge import FakeForge
from forge_prs import SHAPES, open_pr, source_repo
from forge_prs import git as _git
from pydantic import SecretStr
from recipe_commits import make_commit

from ccci_tasks import constants as c
from ccci_tasks import proc
from ccci_tasks.config import Settings
from ccci_tasks.errors import (
    CommandFailed,
    ConfigError,
    ForgeAccessError,
    ForgeError,
    InvalidInput,
    PlatformError,
)
from ccci_tasks.forge import outbox
from ccci_tasks.forge.client import ForgeClient
from ccci_tasks.forge.trigger import ACCESS_ALERT, TriggerRequest, act
from ccci_tasks.naming import Recipe
from ccci_tasks.platform import recipes
from ccci_tasks.platform.recipes import HttpToken, RecipeRepo
from ccci_tasks.state import alerts

TOKEN = FORGE_ENV["CCCI_FORGE_TOKEN"]
OUTSIDER = "outsider"
MAINTAINER = "maintainer"


@pytest.fixture
def forge(fake_forge: FakeForge) -> Iterator[FakeForge]:
    """The session forge stand-in, listening."""
    fake_forge.start()
    yield fake_forge
    fake_forge.start()


@pytest.fixture
def pr(forge: FakeForge, tmp_path: Path) -> dict[str, Any]:
    """A fresh repository of the owner with PR 7 from a contributor's fork."""
    name = f"r-{uuid.uuid4().hex[:8]}"
    source = source_repo(tmp_path / "source")
    forge.add_repo(FORGE_OWNER, name, source)
    forge.add_repo("contributor", name, source)
    sha = make_commit(forge.bare_path("contributor", name), "1.0.0+1.0",
                      {"compose.yml": ("hello from main", "hello from the PR")}, "feature")
    forge.add_pull(FORGE_OWNER, name, 7, "feature", head_repo=("contributor", name))
    forge.add_issue(FORGE_OWNER, name, 8)
    return {"name": name, "sha": sha, "source": source}


@pytest.fixture
def client(forge: FakeForge) -> Iterator[ForgeClient]:
    with ForgeClient(forge.url, SecretStr(TOKEN), timeout_s=5) as api:
        yield api


def test_pull_request_head(client: ForgeClient, forge: FakeForge, pr: dict[str, Any]) -> None:
    """The client reads a PR's state, head sha and branch, and the base's clone URL."""
    pull = client.pull(FORGE_OWNER, pr["name"], 7)
    assert (pull.number, pull.state, pull.head_ref, pull.head_sha) == (7, "open", "feature",
                                                                       pr["sha"])
    assert pull.base_clone_url == forge.clone_url(FORGE_OWNER, pr["name"])
    assert pull.head_clone_url == forge.clone_url("contributor", pr["name"])
    assert pull.head_git_ref == "refs/pull/7/head"
    with pytest.raises(ForgeError, match="answered 404") as info:
        client.pull(FORGE_OWNER, pr["name"], 8)  # an issue, not a PR
    assert info.value.status == 404


@pytest.mark.parametrize(("granted", "write"), [
    ("write", True), ("admin", True), ("read", False), (None, False)])
def test_write_access(client: ForgeClient, forge: FakeForge, pr: dict[str, Any],
                      granted: str | None, write: bool) -> None:
    """write and admin are write access; read, or a user the forge does not know, is not."""
    user = f"u{uuid.uuid4().hex[:6]}"
    if granted is not None:
        forge.set_permission(FORGE_OWNER, pr["name"], user, granted)
    assert client.has_write(FORGE_OWNER, pr["name"], user) is write


def test_status_and_comment_reach_the_forge(client: ForgeClient, forge: FakeForge,
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


def test_wrong_token_is_refused_and_never_shown(forge: FakeForge, pr: dict[str, Any]) -> None:
    """A token the forge does not know is a 401 ForgeError; no message or repr shows it."""
    secret = "tok-hunter2-" + uuid.uuid4().hex
    with ForgeClient(forge.url, SecretStr(secret)) as api:
        with pytest.raises(ForgeError, match="answered 401") as info:
            api.pull(FORGE_OWNER, pr["name"], 7)
        assert info.value.status == 401
        assert "CCCI_FORGE_TOKEN" in str(info.value)
        for text in (str(info.value), repr(info.value), repr(api)):
            assert secret not in text


def test_forge_down_is_a_forge_error(client: ForgeClient, forge: FakeForge,
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
def test_bad_names_never_reach_the_forge(forge: FakeForge, call: Any, needle: str) -> None:
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


def test_fetch_pr_head_into_the_catalogue(forge: FakeForge, pr: dict[str, Any],
                                          tmp_path: Path) -> None:
    """The PR head is fetched over HTTP from the base repository as refs/pull/7/head; HEAD,
    branches and tags stay."""
    repo = _catalogue(pr, tmp_path)
    before = _git("-C", str(repo.path), "show-ref", "--head")
    url, ref = forge.clone_url(FORGE_OWNER, pr["name"]), "refs/pull/7/head"
    assert repo.fetch(url, ref, ref, pr["sha"]) == pr["sha"]
    assert repo.commit("refs/pull/7/head") == pr["sha"]
    assert repo.file_at(pr["sha"], "compose.yml") == "greeting: hello from the PR\n"
    after = _git("-C", str(repo.path), "show-ref", "--head")
    assert set(after.splitlines()) == {*before.splitlines(), f"{pr['sha']} refs/pull/7/head"}
    assert repo.fetch(url, ref, ref, pr["sha"]) == pr["sha"]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_pr_shape_is_fetched_from_the_base(client: ForgeClient, forge: FakeForge,
                                                 pr: dict[str, Any], tmp_path: Path,
                                                 shape: str) -> None:
    """Whatever the PR's shape (fork, same-repository branch, AGit flow, deleted fork,
    deleted branch), the API reports head.ref/head.repo as Gitea does, and the head sha is
    fetched from the base repository's refs/pull/<n>/head."""
    expected = open_pr(forge, FORGE_OWNER, pr["name"], 11, shape)
    pull = client.pull(FORGE_OWNER, pr["name"], 11)
    assert (pull.head_sha, pull.head_ref, pull.head_clone_url) == (
        expected["sha"], expected["head_ref"], expected["head_clone_url"])
    assert pull.base_clone_url == forge.clone_url(FORGE_OWNER, pr["name"])
    repo = _catalogue(pr, tmp_path)
    got = repo.fetch(pull.base_clone_url, pull.head_git_ref, pull.head_git_ref, pull.head_sha)
    assert got == expected["sha"] == repo.commit("refs/pull/11/head")
    assert repo.file_at(got, "compose.yml") == "greeting: hello from the PR\n"


def test_a_head_pushed_after_the_pr_opened_is_fetched(client: ForgeClient, forge: FakeForge,
                                                      pr: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """A push to the fork's branch moves the PR head; the base's refs/pull/7/head follows."""
    newer = make_commit(forge.bare_path("contributor", pr["name"]), "origin/feature",
                        {"compose.yml": ("hello from the PR", "hello again")}, "feature")
    pull = client.pull(FORGE_OWNER, pr["name"], 7)
    assert pull.head_sha == newer != pr["sha"]
    repo = _catalogue(pr, tmp_path)
    assert repo.fetch(pull.base_clone_url, pull.head_git_ref, pull.head_git_ref,
                      newer) == newer


def test_fetch_refuses_a_head_that_moved(forge: FakeForge, pr: dict[str, Any],
                                         tmp_path: Path) -> None:
    """If the head is not at the sha the forge reported, nothing is written."""
    repo = _catalogue(pr, tmp_path)
    url, ref = forge.clone_url(FORGE_OWNER, pr["name"]), "refs/pull/7/head"
    with pytest.raises(PlatformError, match="branch moved"):
        repo.fetch(url, ref, ref, "f" * 40)
    refs = _git("-C", str(repo.path), "for-each-ref", "--format=%(refname)")
    assert "refs/pull/" not in refs and "refs/ccci-fetch/" not in refs


# --- private repositories ---------------------------------------------------------------


@pytest.fixture
def private(forge: FakeForge, tmp_path: Path) -> dict[str, Any]:
    """A private repository of the owner with a same-repository PR 7, and a user who is
    no collaborator (``outsider``, with a token of its own)."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    source = source_repo(tmp_path / "source")
    forge.add_repo(FORGE_OWNER, name, source, private=True)
    head = open_pr(forge, FORGE_OWNER, name, 7, "branch")
    outsider_token = "out-" + uuid.uuid4().hex
    forge.add_user(OUTSIDER, outsider_token)
    return {"name": name, "sha": head["sha"], "source": source, "outsider": outsider_token,
            "url": forge.clone_url(FORGE_OWNER, name)}


def test_private_repository_is_fetched_with_the_token_kept_out_of_argv(
    forge: FakeForge, private: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous git is refused (401); with the forge token the head is fetched, the token
    reaching git through its environment only (never its command line, which any local user
    can read), scoped to the forge's URL."""
    repo = _catalogue(private, tmp_path)
    ref = "refs/pull/7/head"
    asked = len(forge.git_requests)
    with pytest.raises(CommandFailed, match="could not read Username"):
        repo.fetch(private["url"], ref, ref, private["sha"])
    assert [(r.user, r.status) for r in forge.git_requests[asked:]] == [(None, 401)]
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run = proc.run  # what recipes runs commands with

    def spy(argv: Any, **kwargs: Any) -> Any:
        seen.append(([str(a) for a in argv], dict(kwargs.get("env") or {})))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(recipes, "run", spy)
    asked = len(forge.git_requests)
    token = HttpToken(forge.url, SecretStr(TOKEN))
    assert repo.fetch(private["url"], ref, ref, private["sha"], auth=token) == private["sha"]
    assert repo.commit(ref) == private["sha"]
    assert seen and not any(TOKEN in arg for argv, _ in seen for arg in argv)
    [fetch_env] = [env for argv, env in seen if "fetch" in argv]
    assert fetch_env["GIT_CONFIG_KEY_0"] == f"http.{forge.url}/.extraHeader"
    assert TOKEN not in repr(token)
    assert {r.user for r in forge.git_requests[asked:]} == {FORGE_BOT}


def test_the_token_goes_to_the_forge_only(forge: FakeForge, private: dict[str, Any],
                                          tmp_path: Path) -> None:
    """A token scoped to another URL is not sent: the private fetch is refused (401)."""
    repo = _catalogue(private, tmp_path)
    elsewhere = HttpToken(f"http://127.0.0.2:{forge.port}/", SecretStr(TOKEN))
    asked = len(forge.git_requests)
    with pytest.raises(CommandFailed):
        repo.fetch(private["url"], "refs/pull/7/head", "refs/pull/7/head", private["sha"],
                   auth=elsewhere)
    assert {(r.user, r.status) for r in forge.git_requests[asked:]} == {(None, 401)}


def test_a_token_that_may_not_read_is_refused_and_never_shown(forge: FakeForge,
                                                              private: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """A token whose user may not read the repository gets Gitea's 404; the error does not
    show the token."""
    repo = _catalogue(private, tmp_path)
    token = HttpToken(forge.url, SecretStr(private["outsider"]))
    with pytest.raises(CommandFailed) as info:
        repo.fetch(private["url"], "refs/pull/7/head", "refs/pull/7/head", private["sha"],
                   auth=token)
    assert private["outsider"] not in str(info.value)
    assert forge.git_requests[-1].status == 404


def test_permission_404_tells_an_unknown_user_from_an_unseen_repository(
    forge: FakeForge, private: dict[str, Any], client: ForgeClient
) -> None:
    """404 on the permission check: for a repository the token can see it is a user the
    forge does not know ('none'); for one it cannot see it is a ForgeAccessError saying what
    to fix, not a missing permission."""
    assert client.permission(FORGE_OWNER, private["name"], "nobody-" + uuid.uuid4().hex) == (
        "none")
    with ForgeClient(forge.url, SecretStr(private["outsider"])) as outsider:
        with pytest.raises(ForgeAccessError, match="cannot see") as info:
            outsider.has_write(FORGE_OWNER, private["name"], OUTSIDER)
        assert info.value.status == 404
        assert "CCCI_FORGE_TOKEN" in str(info.value)
        assert private["outsider"] not in str(info.value)


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
    repo = RecipeRepo(tmp_path / "nowhere", Recipe("custom-html"))  # no repo: git would fail first
    with pytest.raises(InvalidInput, match=needle):
        repo.fetch(url, source, dest, sha)


# --- acting on a '!testme' trigger (forge.trigger.act): what the alerts worker does ----------
# A PR of every shape runs at its head sha, fetched from the base repository (with the forge
# token when the repository is private); a token that cannot see the repository is an error
# with an alert, never the polite "no write access" refusal.


class Enqueued(list[tuple[str, str, str, str]]):
    """The enqueue seam: records (lane, recipe, sha, run_id) instead of publishing."""

    def __call__(self, lane: str, recipe: str, sha: str, run_id: str) -> None:
        self.append((lane, recipe, sha, run_id))


@pytest.fixture
def world(forge: FakeForge, tmp_path: Path, settings: Settings) -> Any:
    """Settings whose recipe catalogue is a fresh directory, and a maker of recipes that are
    both on the forge (owner's repository, the maintainer may write) and in the catalogue."""

    class World:
        settings_ = settings.model_copy(update={"recipes_dir": tmp_path / "recipes"})

        @staticmethod
        def recipe(private: bool = False) -> str:
            name = f"t-{uuid.uuid4().hex[:8]}"
            source = source_repo(tmp_path / "sources" / name)
            forge.add_repo(FORGE_OWNER, name, source, private=private)
            forge.set_permission(FORGE_OWNER, name, MAINTAINER, "write")
            _git("clone", "-q", str(source), str(tmp_path / "recipes" / name))
            return name

    return World


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        yield client


def _act(settings: Settings, broker: redis.Redis, name: str, number: int,
         token: str | None = None) -> tuple[Any, TriggerRequest, Enqueued]:
    if token is not None:
        settings = settings.model_copy(update={"forge_token": SecretStr(token)})
    request = TriggerRequest.new(FORGE_OWNER, name, number, "quick", MAINTAINER,
                                 f"d-{uuid.uuid4().hex}")
    enqueued = Enqueued()
    with ForgeClient.from_settings(settings) as api:
        result = act(settings, request, api, broker, enqueued)
    return result, request, enqueued


@pytest.mark.parametrize("shape", SHAPES)
def test_every_pr_shape_runs_at_its_head(world: Any, forge: FakeForge, broker: redis.Redis,
                                         shape: str) -> None:
    """Fork, same-repository branch, AGit flow, deleted fork, deleted branch: the run is
    enqueued at the full head sha, fetched into the catalogue as refs/pull/<n>/head from the
    base repository, and the reply names the run id and the sha."""
    name = world.recipe()
    head = open_pr(forge, FORGE_OWNER, name, 5, shape)
    result, request, enqueued = _act(world.settings_, broker, name, 5)
    assert (result.outcome, result.sha) == ("enqueued", head["sha"]), result.detail
    assert enqueued == [("quick", name, head["sha"], request.run_id)]
    repo = RecipeRepo(world.settings_.recipes_dir / name, name)
    assert repo.commit("refs/pull/5/head") == head["sha"]
    assert repo.file_at(head["sha"], "compose.yml") == "greeting: hello from the PR\n"
    [reply] = outbox.pending(world.settings_.state_dir, request.comment_stream)
    assert reply.key == f"{request.run_id}-queued"
    assert request.run_id in reply.payload["body"] and head["sha"] in reply.payload["body"]


def test_a_private_repository_is_fetched_with_the_forge_token(world: Any, forge: FakeForge,
                                                              broker: redis.Redis) -> None:
    """A private recipe repository: the head is fetched with CCCI_FORGE_TOKEN, as the bot."""
    name = world.recipe(private=True)
    head = open_pr(forge, FORGE_OWNER, name, 6, "agit")
    asked = len(forge.git_requests)
    result, request, enqueued = _act(world.settings_, broker, name, 6)
    assert (result.outcome, result.sha) == ("enqueued", head["sha"]), result.detail
    assert enqueued == [("quick", name, head["sha"], request.run_id)]
    assert {(r.user, r.status) for r in forge.git_requests[asked:]} == {(FORGE_BOT, 200)}


def test_a_token_that_cannot_see_the_repository_is_an_error_with_an_alert(
    world: Any, forge: FakeForge, broker: redis.Redis
) -> None:
    """The forge answers the permission check 404 because the token cannot see the private
    repository: the trigger ends 'error' with a forge-access alert naming what to fix;
    nothing is fetched or enqueued, and no "no write access" reply is queued."""
    name = world.recipe(private=True)
    open_pr(forge, FORGE_OWNER, name, 8, "branch")
    token = "blind-" + uuid.uuid4().hex
    forge.add_user("blind-bot", token)
    result, request, enqueued = _act(world.settings_, broker, name, 8, token=token)
    assert result.outcome == "error"
    assert "cannot see" in result.detail and "CCCI_FORGE_TOKEN" in result.detail
    assert enqueued == []
    assert not broker.exists(c.KEY_FORGE_ENQUEUED + request.run_id)
    assert outbox.pending(world.settings_.state_dir, request.comment_stream) == []
    [alert] = [a for a in alerts.pending(world.settings_.state_dir) if a.kind == ACCESS_ALERT]
    assert alert.app == name and f"{FORGE_OWNER}/{name}" in alert.summary
    assert token not in alert.summary + alert.detail_text()
    assert "refs/pull/8/head" not in _git("-C", str(world.settings_.recipes_dir / name),
                                          "for-each-ref")
