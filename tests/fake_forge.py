"""A Gitea/Forgejo stand-in: the API endpoints ccci uses, real git remotes, real webhooks.

API (under ``/api/v1``, ``Authorization: token <t>`` required, else 401), as Gitea answers
(checked against Gitea's source, see docs/decisions.md "The forge stand-in follows Gitea"):

* A repository the caller may not read (a private one, unless the caller is a site admin,
  its owner or a collaborator) is 404 ``The target couldn't be found.`` on every route, as
  Gitea's ``repoAssignment`` answers; ``GET /repos/{o}/{r}`` is the repository itself.
* ``GET  /repos/{o}/{r}/pulls/{n}`` — shaped as Gitea's ``convert.ToAPIPullRequest``: ``base``
  ``{label, ref, sha, repo}``; ``head.ref`` is ``refs/pull/<n>/head`` unless the head branch
  still exists in a head repository that still exists (then the branch name); ``head.repo``
  is null when the fork is gone, the base repository for an AGit PR (whose ``label`` is
  empty); ``head.sha`` is the branch's, else that of ``refs/pull/<n>/head``. The base
  repository keeps every PR's head as ``refs/pull/<n>/head``, updated from the head branch
  whenever the forge looks (Gitea does it on every push), kept when the fork is deleted.
* ``GET  /repos/{o}/{r}/collaborators/{user}/permission`` — ``{permission, role_name, user}``;
  404 for an unknown user, 403 unless the caller is a repo admin or asks about itself.
* ``POST /repos/{o}/{r}/statuses/{sha}`` ``{state, context, description, target_url?}`` → 201;
  ``GET`` lists them, newest first (``?sort=oldest`` for oldest first).
* ``POST /repos/{o}/{r}/issues/{n}/comments`` ``{body}`` → 201, and the forge fires an
  ``issue_comment`` webhook (signed, ``X-Gitea-*`` or ``X-Forgejo-*`` headers) at the
  configured hook URL, like a real forge; ``GET`` lists the comments, oldest first.
* ``GET  /version`` (no token).

Git: ``<url>/<owner>/<repo>.git`` serves the bare repository ``<git_root>/<owner>/<repo>.git``
over git's smart (and dumb) HTTP protocol, a private one only to a token that may read it
(``tests/fake_forge_git.py``). Git requests are recorded in ``git_requests``.

Webhooks carry Gitea's headers (``X-Gitea-*``, ``X-Gogs-*``, ``X-Hub-Signature[-256]``; Forgejo
also ``X-Forgejo-*``), and either content type: ``json`` (the body is the payload) or
``form`` (``payload=<json>``, form-encoded); the signature is always the HMAC of the JSON
payload, as Gitea's ``services/webhook/deliver.go`` computes it.

Everything received is recorded in order (``requests``); ``stop()`` closes the socket (the
forge is down: connections are refused) and ``start()`` listens again on the same port with
the same data. ``fail_next(n)`` answers the next n API writes with 503.

Run as a program (``python tests/fake_forge.py --help``) it serves the local demo of
``make up``: the recipes of the catalogue as repositories, each with an open PR #1.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import fake_forge_git as githttp

T = TypeVar("T")

GIT_TIMEOUT_S = 30
HOOK_TIMEOUT_S = 10
_API = re.compile(r"/api/v1(/.*)")
_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
ROUTES = [
    ("GET", re.compile(_REPO), "get_repo"),
    ("GET", re.compile(_REPO + r"/pulls/(?P<n>\d+)"), "get_pull"),
    ("GET", re.compile(_REPO + r"/collaborators/(?P<user>[^/]+)/permission"), "get_permission"),
    ("POST", re.compile(_REPO + r"/statuses/(?P<sha>[0-9a-f]{40})"), "post_status"),
    ("GET", re.compile(_REPO + r"/statuses/(?P<sha>[0-9a-f]{40})"), "get_statuses"),
    ("POST", re.compile(_REPO + r"/issues/(?P<n>\d+)/comments"), "post_comment"),
    ("GET", re.compile(_REPO + r"/issues/(?P<n>\d+)/comments"), "get_comments"),
]
STATES = ("pending", "success", "error", "failure", "warning")
NOT_FOUND = "The target couldn't be found."


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          timeout=GIT_TIMEOUT_S).stdout.strip()


def _ref_sha(bare: Path, ref: str) -> str:
    """The commit ``ref`` names in ``bare``, or "" when there is no such ref."""
    proc = subprocess.run(["git", "-C", str(bare), "rev-parse", "--verify", "--quiet",
                           f"{ref}^{{commit}}"], capture_output=True, text=True,
                          timeout=GIT_TIMEOUT_S, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Issue:
    number: int
    title: str
    is_pull: bool
    state: str = "open"
    head_ref: str | None = None  # the head branch (an AGit PR: its topic)
    head_repo: tuple[str, str] | None = None  # (owner, repo) that held the head branch
    flow: str = "github"  # or "agit": pushed to refs/for/<base>/<topic>, no branch


@dataclass
class Repo:
    owner: str
    name: str
    private: bool = False
    issues: dict[int, Issue] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Received:
    method: str
    path: str
    user: str | None
    status: int
    body: Any


@dataclass
class Delivery:
    delivery: str
    event: str
    body: bytes
    status: int
    text: str


class FakeForge:
    received_type = Received

    def __init__(
        self,
        port: int,
        *,
        tokens: dict[str, str],
        git_root: Path,
        site_admins: tuple[str, ...] = (),
        hook_url: str | None = None,
        hook_secret: str | None = None,
        flavor: str = "gitea",
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self.tokens = dict(tokens)  # token -> user
        self.users = set(tokens.values())
        self.site_admins = set(site_admins)
        self.git_root = Path(git_root)
        self.hook_url = hook_url
        self.hook_secret = hook_secret
        self.flavor = flavor
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Received] = []
        self.git_requests: list[Received] = []
        self.deliveries: list[Delivery] = []
        self._ids = 0
        self._fail_writes = 0
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    # --- setting up -------------------------------------------------------------------

    def add_user(self, user: str, token: str | None = None) -> None:
        with self._lock:
            self.users.add(user)
            if token:
                self.tokens[token] = user

    def bare_path(self, owner: str, name: str) -> Path:
        return self.git_root / owner / f"{name}.git"

    def clone_url(self, owner: str, name: str) -> str:
        return f"{self.url}/{owner}/{name}.git"

    def add_repo(self, owner: str, name: str, source: Path | None = None, *,
                 private: bool = False) -> Repo:
        """A repository; with ``source``, its bare git repository is cloned from there."""
        bare = self.bare_path(owner, name)
        if source is not None and not bare.exists():
            bare.parent.mkdir(parents=True, exist_ok=True)
            _git("clone", "-q", "--bare", str(source), str(bare))
        with self._lock:
            return self.repos.setdefault((owner, name), Repo(owner, name, private))

    def delete_repo(self, owner: str, name: str) -> None:
        """The repository (a contributor's fork, say) is deleted with its git data."""
        with self._lock:
            self.repos.pop((owner, name), None)
        shutil.rmtree(self.bare_path(owner, name), ignore_errors=True)

    def can_read(self, repo: Repo, user: str | None) -> bool:
        """Gitea's read access: public, or a site admin, the owner, a collaborator."""
        if not repo.private:
            return True
        return user is not None and (user in self.site_admins or user == repo.owner
                                     or repo.permissions.get(user, "none") != "none")

    def set_permission(self, owner: str, name: str, user: str, permission: str) -> None:
        with self._lock:
            self.users.add(user)
            self.repos[(owner, name)].permissions[user] = permission

    def add_pull(self, owner: str, name: str, number: int, head_ref: str,
                 head_repo: tuple[str, str] | None = None, state: str = "open") -> None:
        """PR ``number`` from branch ``head_ref`` of ``head_repo`` (default: the base)."""
        with self._lock:
            issue = Issue(number, f"PR {number}", True, state, head_ref,
                          head_repo or (owner, name))
            self.repos[(owner, name)].issues[number] = issue
        self._sync_pull_ref(owner, name, issue)

    def agit_pull(self, owner: str, name: str, number: int, topic: str, pushed: str) -> None:
        """An AGit-flow PR: the commit at branch ``pushed`` of the base repository is what
        ``git push origin HEAD:refs/for/main/<topic>`` sent; as on the forge it becomes
        ``refs/pull/<n>/head`` and no branch is left."""
        bare = str(self.bare_path(owner, name))
        sha = _git("-C", bare, "rev-parse", f"refs/heads/{pushed}^{{commit}}")
        _git("-C", bare, "update-ref", f"refs/pull/{number}/head", sha)
        _git("-C", bare, "update-ref", "-d", f"refs/heads/{pushed}")
        with self._lock:
            self.repos[(owner, name)].issues[number] = Issue(
                number, f"PR {number}", True, "open", topic, (owner, name), "agit")

    def _sync_pull_ref(self, owner: str, name: str, issue: Issue) -> None:
        """The base's ``refs/pull/<n>/head`` follows the head branch while both exist."""
        if issue.flow != "github" or issue.head_ref is None or issue.head_repo is None:
            return
        head_bare = self.bare_path(*issue.head_repo)
        if issue.head_repo not in self.repos or not head_bare.is_dir():
            return  # the fork is gone: the ref keeps the last head
        branch = f"refs/heads/{issue.head_ref}"
        if not _ref_sha(head_bare, branch):
            return  # the branch is gone: likewise
        _git("-C", str(self.bare_path(owner, name)), "fetch", "-q", "--no-tags", "--",
             str(head_bare), f"+{branch}:refs/pull/{issue.number}/head")

    def sync_pull_refs(self, owner: str, name: str) -> None:
        with self._lock:
            repo = self.repos.get((owner, name))
            issues = [i for i in repo.issues.values() if i.is_pull] if repo else []
        for issue in issues:
            self._sync_pull_ref(owner, name, issue)

    def add_issue(self, owner: str, name: str, number: int) -> None:
        with self._lock:
            self.repos[(owner, name)].issues[number] = Issue(number, f"issue {number}", False)

    def fail_next(self, writes: int) -> None:
        """Answer the next ``writes`` API POSTs with 503 (the forge refuses)."""
        with self._lock:
            self._fail_writes = writes

    # --- what it holds ----------------------------------------------------------------

    def statuses(self, owner: str, name: str, sha: str) -> list[dict[str, Any]]:
        """Statuses of ``sha``, oldest first."""
        with self._lock:
            return list(self.repos[(owner, name)].statuses.get(sha, []))

    def comments(self, owner: str, name: str, number: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.repos[(owner, name)].comments.get(number, []))

    def received(self, method: str | None = None, contains: str = "") -> list[Received]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and contains in r.path]

    def wait_for(self, check: Callable[[], T | Literal[False] | None], what: str,
                 timeout_s: float = 60.0) -> T:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                             f"forge received {[(r.method, r.path) for r in self.requests]}")

    def head_sha(self, owner: str, name: str, branch: str) -> str:
        return _git("-C", str(self.bare_path(owner, name)), "rev-parse",
                    f"refs/heads/{branch}^{{commit}}")

    def pull_head(self, owner: str, name: str, number: int) -> str:
        """The head of PR ``number`` as the base repository keeps it (refs/pull/<n>/head)."""
        self.sync_pull_refs(owner, name)
        return _ref_sha(self.bare_path(owner, name), f"refs/pull/{number}/head")

    # --- webhooks ---------------------------------------------------------------------

    def _user_json(self, user: str) -> dict[str, Any]:
        uid = int(hashlib.sha256(user.encode()).hexdigest()[:6], 16)
        return {"id": uid, "login": user, "username": user, "full_name": user}

    @staticmethod
    def _repo_id(owner: str, name: str) -> int:
        return int(hashlib.sha256(f"{owner}/{name}".encode()).hexdigest()[:6], 16)

    def _repo_json(self, owner: str, name: str) -> dict[str, Any]:
        repo = self.repos.get((owner, name))
        return {"id": self._repo_id(owner, name), "name": name, "full_name": f"{owner}/{name}",
                "owner": self._user_json(owner), "private": bool(repo and repo.private),
                "html_url": f"{self.url}/{owner}/{name}",
                "clone_url": self.clone_url(owner, name), "default_branch": "main"}

    def _pull_json(self, repo: Repo, issue: Issue) -> dict[str, Any]:
        """As Gitea's ``convert.ToAPIPullRequest`` builds it (see the module doc)."""
        self._sync_pull_ref(repo.owner, repo.name, issue)
        base_bare = self.bare_path(repo.owner, repo.name)
        pull_ref = f"refs/pull/{issue.number}/head"
        base_json = self._repo_json(repo.owner, repo.name)
        head: dict[str, Any] = {"label": issue.head_ref or "", "ref": pull_ref, "sha": "",
                                "repo_id": -1, "repo": None}
        if issue.flow == "agit":
            head.update(label="", sha=_ref_sha(base_bare, pull_ref),
                        repo_id=base_json["id"], repo=base_json)
        elif issue.head_repo is not None and issue.head_repo in self.repos:
            head_bare = self.bare_path(*issue.head_repo)
            head.update(repo_id=self._repo_id(*issue.head_repo),
                        repo=self._repo_json(*issue.head_repo))
            branch_sha = _ref_sha(head_bare, f"refs/heads/{issue.head_ref}")
            if branch_sha:
                head.update(ref=issue.head_ref, sha=branch_sha)
            else:
                head["sha"] = _ref_sha(head_bare, pull_ref)
        if not head["sha"]:
            head["sha"] = _ref_sha(base_bare, pull_ref)
        return {
            "id": issue.number, "number": issue.number, "title": issue.title,
            "state": issue.state, "merged": False,
            "head": head,
            "base": {"label": "main", "ref": "main", "sha": _ref_sha(base_bare, "refs/heads/main"),
                     "repo_id": base_json["id"], "repo": base_json},
        }

    def comment_payload(self, owner: str, name: str, number: int, user: str, body: str,
                        action: str = "created") -> bytes:
        """The ``issue_comment`` payload Gitea sends for a comment."""
        with self._lock:
            repo = self.repos[(owner, name)]
            issue = repo.issues.get(number) or Issue(number, f"issue {number}", False)
        payload: dict[str, Any] = {
            "action": action,
            "issue": {"id": number, "number": number, "title": issue.title,
                      "state": issue.state, "user": self._user_json(user),
                      "pull_request": ({"merged": False, "merged_at": None}
                                       if issue.is_pull else None)},
            "comment": {"id": self._next_id(), "body": body, "user": self._user_json(user),
                        "created_at": _now()},
            "repository": self._repo_json(owner, name),
            "sender": self._user_json(user),
            "is_pull": issue.is_pull,
        }
        if issue.is_pull:
            payload["pull_request"] = self._pull_json(repo, issue)
        return json.dumps(payload).encode()

    def send_hook(self, body: bytes, *, event: str = "issue_comment",
                  delivery: str | None = None, secret: str | None = None,
                  signature: str | None = None, flavor: str | None = None,
                  url: str | None = None, content_type: str = "json") -> Delivery:
        """POST a webhook as the forge does; ``signature`` overrides the computed one.

        ``body`` is the JSON payload; with ``content_type="form"`` it is sent form-encoded as
        ``payload=<json>``. Either way the signature is the HMAC of the JSON payload.
        """
        delivery = delivery or str(uuid.uuid4())
        prefixes = ["X-Gitea", "X-Gogs"]
        if (flavor or self.flavor) == "forgejo":
            prefixes.insert(0, "X-Forgejo")
        secret = self.hook_secret if secret is None else secret
        kind = "pull_request_comment" if event == "issue_comment" else event
        sig = signature if signature is not None else (sign(secret, body) if secret else None)
        headers = {"Content-Type": "application/json", "X-GitHub-Delivery": delivery,
                   "X-GitHub-Event": event, "X-GitHub-Event-Type": kind}
        for prefix in prefixes:
            headers.update({f"{prefix}-Delivery": delivery, f"{prefix}-Event": event,
                            f"{prefix}-Event-Type": kind})
            if sig is not None:
                headers[f"{prefix}-Signature"] = sig
        if sig is not None and signature is None:
            headers["X-Hub-Signature-256"] = "sha256=" + sig
        data = body
        if content_type == "form":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            data = urlencode({"payload": body.decode()}).encode()
        target = url or self.hook_url
        assert target, "no hook URL configured"
        request = urllib.request.Request(target, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=HOOK_TIMEOUT_S) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        except OSError as exc:
            status, text = 0, f"delivery failed: {exc}"
        result = Delivery(delivery, event, body, status, text.strip())
        with self._lock:
            self.deliveries.append(result)
        return result

    def comment(self, owner: str, name: str, number: int, user: str, body: str) -> Delivery:
        """A user comments in the web UI: stored, then the webhook is delivered (sync)."""
        self._store_comment(owner, name, number, user, body)
        return self.send_hook(self.comment_payload(owner, name, number, user, body))

    def _store_comment(self, owner: str, name: str, number: int, user: str,
                       body: str) -> dict[str, Any]:
        comment = {"id": self._next_id(), "body": body, "user": self._user_json(user),
                   "created_at": _now(),
                   "html_url": f"{self.url}/{owner}/{name}/pulls/{number}"}
        with self._lock:
            self.repos[(owner, name)].comments.setdefault(number, []).append(comment)
        return comment

    # --- HTTP ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: Any = None, raw: bytes | None = None,
                      ctype: str = "application/json") -> None:
                data = raw if raw is not None else (
                    b"" if body is None else json.dumps(body).encode())
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _user(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                scheme, _, token = auth.partition(" ")
                if scheme.lower() not in ("token", "bearer"):
                    return None
                return forge.tokens.get(token.strip())

            def _raw_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else b""
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            def _body(self) -> Any:
                raw = self._raw_body()
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode(errors="replace")

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                api = _API.fullmatch(parts.path)
                if api is None:
                    raw = self._raw_body() if method == "POST" else b""
                    served = githttp.serve(forge, method, parts.path, parse_qs(parts.query),
                                           dict(self.headers.items()), raw)
                    self.send_response(served.status)
                    for name, value in served.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Type", served.ctype)
                    self.send_header("Content-Length", str(len(served.body)))
                    self.end_headers()
                    self.wfile.write(served.body)
                    return
                body = self._body() if method == "POST" else None
                path = api.group(1)
                user = self._user()
                status, answer = 0, None
                try:
                    status, answer = forge._api(method, path, parse_qs(parts.query), user, body)
                finally:
                    with forge._lock:
                        forge.requests.append(Received(method, path, user, status, body))
                self._send(status, answer)

        return Handler

    def _api(self, method: str, path: str, query: dict[str, list[str]], user: str | None,
             body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/version":
            return 200, {"version": "1.22.0+ccci-fake"}
        if user is None:
            return 401, {"message": "token is required", "url": self.url + "/api/swagger"}
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if match is None or route_method != method:
                continue
            args = match.groupdict()
            with self._lock:
                repo = self.repos.get((args["owner"], args["repo"]))
                if repo is None or not self.can_read(repo, user):
                    return 404, {"errors": [], "message": NOT_FOUND,
                                 "url": self.url + "/api/swagger"}
                if method == "POST" and self._fail_writes > 0:
                    self._fail_writes -= 1
                    return 503, {"message": "service unavailable"}
            handler = getattr(self, "_" + name)
            result: tuple[int, Any] = handler(repo, user, args, query, body)
            return result
        return 404, {"message": "not found"}

    def _get_repo(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                  body: Any) -> tuple[int, Any]:
        return 200, self._repo_json(repo.owner, repo.name)

    def _get_pull(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                  body: Any) -> tuple[int, Any]:
        issue = repo.issues.get(int(args["n"]))
        if issue is None or not issue.is_pull:
            return 404, {"message": "pull request does not exist"}
        return 200, self._pull_json(repo, issue)

    def _permission_of(self, repo: Repo, user: str) -> str:
        if user in self.site_admins or user == repo.owner:
            return "owner" if user == repo.owner else "admin"
        return repo.permissions.get(user, "none" if repo.private else "read")

    def _get_permission(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                        body: Any) -> tuple[int, Any]:
        who = args["user"]
        caller = self._permission_of(repo, user)
        if caller not in ("admin", "owner") and user.lower() != who.lower():
            return 403, {"message": "Only admins can query all permissions, repo admins can "
                                    "query all repo permissions, collaborators can query only "
                                    "their own"}
        if who not in self.users:
            return 404, {"message": f"user redirect does not exist [name: {who}]"}
        permission = self._permission_of(repo, who)
        return 200, {"permission": permission, "role_name": permission,
                     "user": self._user_json(who)}

    def _post_status(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                     body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("state") not in STATES:
            return 422, {"message": f"invalid state; one of {STATES}"}
        status = {"id": self._next_id(), "status": body["state"],
                  "context": body.get("context", ""), "description": body.get("description", ""),
                  "target_url": body.get("target_url", ""), "creator": self._user_json(user),
                  "created_at": _now(), "updated_at": _now()}
        with self._lock:
            repo.statuses.setdefault(args["sha"], []).append(status)
        return 201, status

    def _get_statuses(self, repo: Repo, user: str, args: dict[str, str],
                      query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            found = list(repo.statuses.get(args["sha"], []))
        return 200, found if query.get("sort") == ["oldest"] else found[::-1]

    def _post_comment(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                      body: Any) -> tuple[int, Any]:
        number = int(args["n"])
        if number not in repo.issues:
            return 404, {"message": "issue does not exist"}
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return 422, {"message": "body is required"}
        comment = self._store_comment(repo.owner, repo.name, number, user, body["body"])
        if self.hook_url:
            payload = self.comment_payload(repo.owner, repo.name, number, user, body["body"])
            threading.Thread(target=self.send_hook, args=(payload,), daemon=True).start()
        return 201, comment

    def _get_comments(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                      body: Any) -> tuple[int, Any]:
        return 200, self.comments(repo.owner, repo.name, int(args["n"]))

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The forge goes down: new connections are refused until ``start``."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None


def main(argv: list[str] | None = None) -> int:
    """Serve the local demo forge until interrupted (used by ``make up``)."""
    parser = argparse.ArgumentParser(description="Gitea stand-in for the local ccci demo. "
                                     "Tokens and the webhook secret come from the environment.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--git-root", type=Path, required=True)
    parser.add_argument("--recipes-dir", type=Path, required=True)
    parser.add_argument("--hook-url", required=True)
    parser.add_argument("--recipe", action="append", default=[])
    args = parser.parse_args(argv)
    owner = os.environ["CCCI_FORGE_OWNER"]
    bot = "ccci-bot"
    tokens = {os.environ["CCCI_FORGE_TOKEN"]: bot}
    # FAKE_FORGE_USERS: "name:token:permission ..." (maintainers of the demo).
    users = [entry.split(":", 2) for entry in os.environ.get("FAKE_FORGE_USERS", "").split()]
    tokens.update({token: name for name, token, _ in users})
    forge = FakeForge(args.port, tokens=tokens, git_root=args.git_root, site_admins=(bot,),
                      hook_url=args.hook_url, hook_secret=os.environ["CCCI_WEBHOOK_SECRET"])
    for recipe in args.recipe:
        source = args.recipes_dir / recipe
        forge.add_repo(owner, recipe, source)
        bare = forge.bare_path(owner, recipe)
        tags = _git("-C", str(bare), "tag", "--sort=-creatordate").split()
        base = tags[0] if tags else "HEAD"
        _git("-C", str(bare), "update-ref", "refs/heads/demo-pr", f"{base}^{{commit}}")
        forge.add_pull(owner, recipe, 1, "demo-pr")
        for name, _, permission in users:
            forge.set_permission(owner, recipe, name, permission)
    forge.start()
    print(f"fake forge: {forge.url} (owner {owner}, recipes {args.recipe})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        forge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
