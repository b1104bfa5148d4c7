"""A small Gitea/Forgejo API client: pull requests, permissions, commit statuses, comments.

Requests go to ``<CCCI_FORGE_URL>/api/v1`` with ``Authorization: token <CCCI_FORGE_TOKEN>``,
each bounded by a timeout (connect 5 s, the whole request ``timeout_s``). The httpx transport
is injectable, like the Keycloak client's. Every failure (no answer, a non-2xx status, a body
that is not what the API documents) is a ``ForgeError`` that names the method, the API path
and what the forge said, never the token; ``status`` carries the HTTP status when there
was one. Owners, repositories, users and shas are validated before they become URL paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr

from ccci_tasks.config import Settings
from ccci_tasks.errors import ConfigError, ForgeAccessError, ForgeError, InvalidInput

__all__ = ["DEFAULT_TIMEOUT_S", "STATUS_STATES", "ForgeClient", "PullRequest", "forge_configured"]

DEFAULT_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5.0
WRITE_PERMISSIONS: Final = frozenset({"write", "admin", "owner"})
STATUS_STATES: Final = ("pending", "success", "error", "failure", "warning")
StatusState = Literal["pending", "success", "error", "failure", "warning"]
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_SHA_RE: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SNIPPET_CHARS: Final = 200


def forge_configured(settings: Settings) -> bool:
    """True when CCCI_FORGE_URL, CCCI_FORGE_TOKEN and CCCI_FORGE_OWNER are all set."""
    token = settings.forge_token.get_secret_value() if settings.forge_token else ""
    return bool(settings.forge_url and token and settings.forge_owner)


def validate_name(what: str, value: object) -> str:
    """An owner, repository or user name as Gitea allows it; ``InvalidInput`` otherwise."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidInput(
            f"forge {what} {value!r} is invalid: expected letters, digits, '_', '-' and '.' "
            "(at most 100 characters, not starting with '-' or '.')"
        )
    return value


def validate_sha(value: object) -> str:
    """A full lowercase commit sha (40 or 64 hex digits)."""
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise InvalidInput(
            f"commit sha {value!r} is invalid: expected the full lowercase sha "
            "(40 or 64 hex digits)"
        )
    return value


def validate_forge_url(url: object) -> str:
    """``http(s)://host[:port][/path]`` without credentials, query or fragment."""
    ok = isinstance(url, str) and len(url) <= 1000
    if ok:
        assert isinstance(url, str)
        parts = urlsplit(url)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
              and parts.username is None and not parts.query and not parts.fragment)
    if not ok:
        raise ConfigError(
            f"CCCI_FORGE_URL {url!r} is invalid: expected the forge's base URL such as "
            "'https://git.example.org' (no credentials; the API lives under /api/v1)"
        )
    assert isinstance(url, str)
    return url.rstrip("/")


@dataclass(frozen=True)
class PullRequest:
    """What the bridge needs of ``GET /repos/{owner}/{repo}/pulls/{n}``.

    The head is fetched from the base repository: Gitea and Forgejo keep every PR's head
    there as ``refs/pull/<n>/head`` (same-repository branch, fork, deleted fork, AGit flow).
    ``head_ref`` is informative only: the head branch, or ``refs/pull/<n>/head`` itself for an
    AGit PR or one whose branch is gone. ``head_clone_url`` is None when the fork is gone.
    """

    number: int
    state: str  # "open" or "closed"
    head_sha: str
    head_ref: str
    base_clone_url: str  # the base repository's http(s) clone URL: where the head is fetched
    head_clone_url: str | None = None

    @property
    def head_git_ref(self) -> str:
        """Where the base repository keeps this PR's head."""
        return f"refs/pull/{self.number}/head"


class ForgeClient:
    """The Gitea/Forgejo API at ``<base_url>/api/v1``, authenticated with ``token``."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = validate_forge_url(base_url) + "/api/v1"
        secret = token.get_secret_value() if isinstance(token, SecretStr) else ""
        if not secret:
            raise ConfigError("CCCI_FORGE_TOKEN is not set: the forge API needs a token")
        self._client = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"token {secret}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.BaseTransport | None = None
    ) -> ForgeClient:
        if not forge_configured(settings):
            raise ConfigError(
                "the forge is not configured: set CCCI_FORGE_URL, CCCI_FORGE_TOKEN and "
                "CCCI_FORGE_OWNER"
            )
        assert settings.forge_url is not None and settings.forge_token is not None
        return cls(settings.forge_url, settings.forge_token, transport=transport)

    def __repr__(self) -> str:
        return f"ForgeClient({self.api_url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ForgeClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- requests -----------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON body (None when empty)."""
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ForgeError(
                f"{method} {self.api_url}{path}: no answer from the forge "
                f"({type(exc).__name__}: {exc}); check CCCI_FORGE_URL and that the forge is up"
            ) from exc
        if not response.is_success:
            hint = ("; check CCCI_FORGE_TOKEN and its scopes" if response.status_code in (401, 403)
                    else "")
            raise ForgeError(
                f"{method} {self.api_url}{path}: the forge answered {response.status_code}: "
                f"{_said(response)}{hint}",
                status=response.status_code,
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ForgeError(
                f"{method} {self.api_url}{path}: expected JSON, got {_said(response)!r}",
                status=response.status_code,
            ) from exc

    @staticmethod
    def _repo_path(owner: str, repo: str) -> str:
        return (f"/repos/{quote(validate_name('owner', owner), safe='')}/"
                f"{quote(validate_name('repository', repo), safe='')}")

    # --- API ----------------------------------------------------------------------------

    def pull(self, owner: str, repo: str, number: int) -> PullRequest:
        """The pull request ``number`` of ``owner/repo``: state, head sha, base clone URL."""
        path = f"{self._repo_path(owner, repo)}/pulls/{_number(number)}"
        data = self._request("GET", path)
        try:
            head, base = data["head"], data["base"]
            head_repo = head.get("repo")
            head_url = head_repo.get("clone_url") if isinstance(head_repo, dict) else None
            return PullRequest(
                number=int(data["number"]),
                state=str(data["state"]),
                head_sha=str(head["sha"]),
                head_ref=str(head.get("ref") or ""),
                base_clone_url=str(base["repo"]["clone_url"]),
                head_clone_url=str(head_url) if head_url else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ForgeError(
                f"GET {self.api_url}{path}: the pull request has no state, head sha or base "
                f"repository clone URL ({type(exc).__name__}: {exc}); is this a "
                "Gitea/Forgejo API?"
            ) from exc

    def repo_visible(self, owner: str, repo: str) -> bool:
        """True when the token can read ``owner/repo`` (Gitea answers 404 when it cannot)."""
        try:
            self._request("GET", self._repo_path(owner, repo))
        except ForgeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def permission(self, owner: str, repo: str, user: str) -> str:
        """The user's permission on ``owner/repo`` (``none`` for a user the forge does not know).

        Gitea answers this endpoint 404 both for an unknown user and for a repository the
        token cannot see; a second request tells them apart. The latter is a
        ``ForgeAccessError``: the token is misconfigured, which no polite refusal should hide.
        """
        path = (f"{self._repo_path(owner, repo)}/collaborators/"
                f"{quote(validate_name('user', user), safe='')}/permission")
        try:
            data = self._request("GET", path)
        except ForgeError as exc:
            if exc.status != 404:
                raise
            if not self.repo_visible(owner, repo):
                raise ForgeAccessError(
                    f"GET {self.api_url}{path}: the forge answered 404 and the token cannot "
                    f"see {owner}/{repo}: give the user of CCCI_FORGE_TOKEN read access to the "
                    f"repository (or the organisation), or check CCCI_FORGE_OWNER",
                    status=404,
                ) from exc
            return "none"  # the repository is visible: the user does not exist
        permission = data.get("permission") if isinstance(data, dict) else None
        if not isinstance(permission, str):
            raise ForgeError(f"GET {self.api_url}{path}: no 'permission' in the answer")
        return permission

    def has_write(self, owner: str, repo: str, user: str) -> bool:
        """Write access: the collaborator permission is ``write`` or ``admin``."""
        return self.permission(owner, repo, user) in WRITE_PERMISSIONS

    def post_status(
        self,
        owner: str,
        repo: str,
        sha: str,
        state: str,
        context: str,
        description: str,
        target_url: str | None = None,
    ) -> None:
        """Create a commit status on ``sha``."""
        if state not in STATUS_STATES:
            raise InvalidInput(f"status state {state!r} is invalid: one of {STATUS_STATES}")
        body: dict[str, Any] = {"state": state, "context": context, "description": description}
        if target_url:
            body["target_url"] = target_url
        self._request("POST", f"{self._repo_path(owner, repo)}/statuses/{validate_sha(sha)}",
                      body)

    def post_comment(self, owner: str, repo: str, number: int, body: str) -> None:
        """Comment on issue or pull request ``number``."""
        self._request("POST", f"{self._repo_path(owner, repo)}/issues/{_number(number)}/comments",
                      {"body": body})


def _number(number: object) -> int:
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidInput(f"issue/pull request number {number!r} is invalid: a positive integer")
    return number


def _said(response: httpx.Response) -> str:
    """What the forge said: its JSON ``message`` or the start of the body, one line."""
    text = response.text
    try:
        data = response.json()
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            text = data["message"]
    except ValueError:
        pass
    return " ".join(text.split())[:_SNIPPET_CHARS] or "(empty body)"
