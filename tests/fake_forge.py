"""A Gitea/Forgejo stand-in: the API endpoints ccci uses, real git remotes, real webhooks.

API (under ``/api/v1``, ``Authorization: token <t>`` required, else 401), as Gitea answers:

* ``GET  /repos/{o}/{r}/pulls/{n}`` — ``{number, state, head: {ref, sha, repo: {clone_url}}}``;
  the head sha is read from the head repository's branch on every request (a push moves it).
* ``GET  /repos/{o}/{r}/collaborators/{user}/permission`` — ``{permission, role_name, user}``;
  404 for an unknown user, 403 unless the caller is a repo admin or asks about itself.
* ``POST /repos/{o}/{r}/statuses/{sha}`` ``{state, context, description, target_url?}`` → 201;
  ``GET`` lists them, newest first (``?sort=oldest`` for oldest first).
* ``POST /repos/{o}/{r}/issues/{n}/comments`` ``{body}`` → 201, and the forge fires an
  ``issue_comment`` webhook (signed, ``X-Gitea-*`` or ``X-Forgejo-*`` headers) at the
  configured hook URL, like a real forge; ``GET`` lists the comments, oldest first.
* ``GET  /version`` (no token).

Git: ``<url>/<owner>/<repo>.git`` serves the bare repository ``<git_root>/<owner>/<repo>.git``
over git's dumb HTTP protocol (``git update-server-info`` is run before each ``info/refs``).

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
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

GIT_TIMEOUT_S = 30
HOOK_TIMEOUT_S = 10
_API = re.compile(r"/api/v1(/.*)")
_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
ROUTES = [
    ("GET", re.compile(_REPO + r"/pulls/(?P<n>\d+)"), "get_pull"),
    ("GET", re.compile(_REPO + r"/collaborators/(?P<user>[^/]+)/permission"), "get_permission"),
    ("POST", re.compile(_REPO + r"/statuses/(?P<sha>[0-9a-f]{40})"), "post_status"),
    ("GET", re.compile(_REPO + r"/statuses/(?P<sha>[0-9a-f]{40})"), "get_statuses"),
    ("POST", re.compile(_REPO + r"/issues/(?P<n>\d+)/comments"), "post_comment"),
    ("GET", re.compile(_REPO + r"/issues/(?P<n>\d+)/comments"), "get_comments"),
]
STATES = ("pending", "success", "error", "failure", "warning")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True,
                          timeout=GIT_TIMEOUT_S).stdout.strip()


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Issue:
    number: int
    title: str
    is_pull: bool
    state: str = "open"
    head_ref: str | None = None
    head_repo: tuple[str, str] | None = None  # (owner, repo) holding the head branch


@dataclass
class Repo:
    owner: str
    name: str
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

    def add_repo(self, owner: str, name: str, source: Path | None = None) -> Repo:
        """A repository; with ``source``, its bare git repository is cloned from there."""
        bare = self.bare_path(owner, name)
        if source is not None and not bare.exists():
            bare.parent.mkdir(parents=True, exist_ok=True)
            _git("clone", "-q", "--bare", str(source), str(bare))
        with self._lock:
            return self.repos.setdefault((owner, name), Repo(owner, name))

    def set_permission(self, owner: str, name: str, user: str, permission: str) -> None:
        with self._lock:
            self.users.add(user)
            self.repos[(owner, name)].permissions[user] = permission

    def add_pull(self, owner: str, name: str, number: int, head_ref: str,
                 head_repo: tuple[str, str] | None = None, state: str = "open") -> None:
        with self._lock:
            self.repos[(owner, name)].issues[number] = Issue(
                number, f"PR {number}", True, state, head_ref, head_repo or (owner, name))

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

    def wait_for(self, check: Any, what: str, timeout_s: float = 60.0) -> Any:
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

    # --- webhooks ---------------------------------------------------------------------

    def _user_json(self, user: str) -> dict[str, Any]:
        uid = int(hashlib.sha256(user.encode()).hexdigest()[:6], 16)
        return {"id": uid, "login": user, "username": user, "full_name": user}

    def _repo_json(self, owner: str, name: str) -> dict[str, Any]:
        return {"id": int(hashlib.sha256(f"{owner}/{name}".encode()).hexdigest()[:6], 16),
                "name": name, "full_name": f"{owner}/{name}", "owner": self._user_json(owner),
                "clone_url": self.clone_url(owner, name), "private": False}

    def _pull_json(self, repo: Repo, issue: Issue) -> dict[str, Any]:
        head_owner, head_name = issue.head_repo or (repo.owner, repo.name)
        assert issue.head_ref is not None
        sha = self.head_sha(head_owner, head_name, issue.head_ref)
        return {
            "id": issue.number, "number": issue.number, "title": issue.title,
            "state": issue.state, "merged": False,
            "head": {"label": issue.head_ref, "ref": issue.head_ref, "sha": sha,
                     "repo": self._repo_json(head_owner, head_name)},
            "base": {"label": "main", "ref": "main",
                     "repo": self._repo_json(repo.owner, repo.name)},
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
                  url: str | None = None) -> Delivery:
        """POST a webhook as the forge does; ``signature`` overrides the computed one."""
        delivery = delivery or str(uuid.uuid4())
        prefix = "X-Forgejo" if (flavor or self.flavor) == "forgejo" else "X-Gitea"
        secret = self.hook_secret if secret is None else secret
        headers = {"Content-Type": "application/json", f"{prefix}-Delivery": delivery,
                   f"{prefix}-Event": event,
                   f"{prefix}-Event-Type": "pull_request_comment" if event == "issue_comment"
                   else event}
        sig = signature if signature is not None else (sign(secret, body) if secret else None)
        if sig is not None:
            headers[f"{prefix}-Signature"] = sig
        target = url or self.hook_url
        assert target, "no hook URL configured"
        request = urllib.request.Request(target, data=body, headers=headers, method="POST")
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

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
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
                body = self._body() if method == "POST" else None
                if api is None:
                    if method == "GET":
                        self._git(parts.path)
                    else:
                        self._send(405, {"message": "method not allowed"})
                    return
                path = api.group(1)
                user = self._user()
                status, answer = 0, None
                try:
                    status, answer = forge._api(method, path, parse_qs(parts.query), user, body)
                finally:
                    with forge._lock:
                        forge.requests.append(Received(method, path, user, status, body))
                self._send(status, answer)

            def _git(self, path: str) -> None:
                match = re.fullmatch(r"/([^/]+)/([^/]+)\.git/(.+)", path)
                if match is None or ".." in path:
                    self._send(404, raw=b"not found", ctype="text/plain")
                    return
                bare = forge.bare_path(match.group(1), match.group(2))
                target = (bare / match.group(3)).resolve()
                if not bare.is_dir() or not target.is_relative_to(bare.resolve()):
                    self._send(404, raw=b"not found", ctype="text/plain")
                    return
                if match.group(3) == "info/refs":
                    _git("-C", str(bare), "update-server-info")
                if not target.is_file():
                    self._send(404, raw=b"not found", ctype="text/plain")
                    return
                self._send(200, raw=target.read_bytes(), ctype="application/octet-stream")

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
                if repo is None:
                    return 404, {"message": "repository does not exist"}
                if method == "POST" and self._fail_writes > 0:
                    self._fail_writes -= 1
                    return 503, {"message": "service unavailable"}
            handler = getattr(self, "_" + name)
            result: tuple[int, Any] = handler(repo, user, args, query, body)
            return result
        return 404, {"message": "not found"}

    def _get_pull(self, repo: Repo, user: str, args: dict[str, str], query: Any,
                  body: Any) -> tuple[int, Any]:
        issue = repo.issues.get(int(args["n"]))
        if issue is None or not issue.is_pull:
            return 404, {"message": "pull request does not exist"}
        return 200, self._pull_json(repo, issue)

    def _permission_of(self, repo: Repo, user: str) -> str:
        if user in self.site_admins or user == repo.owner:
            return "owner" if user == repo.owner else "admin"
        return repo.permissions.get(user, "read")

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
