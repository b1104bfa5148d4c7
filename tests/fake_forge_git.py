"""Git over HTTP as Gitea serves it, for the forge stand-in (tests/fake_forge.py).

What Gitea does (routers/web/repo/githttp.go, services/auth/basic.go), and so this does:

* Smart HTTP: ``GET <repo>.git/info/refs?service=git-upload-pack`` answers the pkt-line
  ``# service=git-upload-pack``, a flush, then ``git upload-pack --stateless-rpc
  --advertise-refs``; ``POST <repo>.git/git-upload-pack`` (``Content-Type:
  application/x-git-upload-pack-request``, else 400; gzip bodies accepted) runs
  ``git upload-pack --stateless-rpc``. A safe ``Git-Protocol`` header becomes
  ``GIT_PROTOCOL`` (protocol v2). Dumb HTTP (``info/refs`` without a service, object files)
  is served too. Pushing is not offered (the stand-in's repositories change only through
  its Python API).
* Auth: a public repository is read anonymously. A private one asks for credentials (401
  with ``WWW-Authenticate: Basic realm="Gitea"``); HTTP Basic carries a token as the
  password, or as the user name with an empty or ``x-oauth-basic`` password. A signed-in
  user who may not read the repository gets 404 ``Repository not found``, like a missing
  repository. Credentials that name no token are 401.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # fake_forge imports this module
    from fake_forge import FakeForge

GIT_TIMEOUT_S: Final = 60
UPLOAD_PACK: Final = "git-upload-pack"
SAFE_PROTOCOL: Final = re.compile(r"^[0-9a-zA-Z]+=[0-9a-zA-Z]+(:[0-9a-zA-Z]+=[0-9a-zA-Z]+)*$")
REALM: Final = 'Basic realm="Gitea"'
PATH_RE: Final = re.compile(r"/([^/]+)/([^/]+?)(?:\.git)?/(info/refs|git-upload-pack|"
                            r"git-receive-pack|HEAD|objects/.+)")


@dataclass(frozen=True)
class GitAnswer:
    status: int
    body: bytes
    ctype: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def basic_token(authorization: str) -> str | None:
    """The token an ``Authorization: Basic`` header carries, as Gitea reads it; None if none."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user if password in ("", "x-oauth-basic") else password


def pkt_line(text: str) -> bytes:
    data = text.encode()
    return f"{len(data) + 4:04x}".encode() + data


def _git_env(protocol: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if protocol and SAFE_PROTOCOL.fullmatch(protocol):
        env["GIT_PROTOCOL"] = protocol
    return env


def info_refs(bare: Path, service: str | None, protocol: str | None) -> GitAnswer:
    """``info/refs``: smart when a service is asked for, else the dumb file."""
    if service is None:
        subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True,
                       timeout=GIT_TIMEOUT_S, capture_output=True)
        return GitAnswer(200, (bare / "info" / "refs").read_bytes())
    if service != UPLOAD_PACK:
        return GitAnswer(403, b"the stand-in serves git-upload-pack only\n")
    refs = subprocess.run(["git", "upload-pack", "--stateless-rpc", "--advertise-refs",
                           str(bare)], env=_git_env(protocol), check=True, capture_output=True,
                          timeout=GIT_TIMEOUT_S).stdout
    return GitAnswer(200, pkt_line(f"# service={service}\n") + b"0000" + refs,
                     f"application/x-{service}-advertisement",
                     (("Cache-Control", "no-cache, max-age=0, must-revalidate"),))


def upload_pack(bare: Path, body: bytes, ctype: str, encoding: str,
                protocol: str | None) -> GitAnswer:
    """``POST git-upload-pack``: the stateless-rpc exchange of a fetch."""
    if ctype != f"application/x-{UPLOAD_PACK}-request":
        return GitAnswer(400, b"")
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return GitAnswer(400, b"")
    proc = subprocess.run(["git", "upload-pack", "--stateless-rpc", str(bare)], input=body,
                          env=_git_env(protocol), capture_output=True, timeout=GIT_TIMEOUT_S,
                          check=False)
    return GitAnswer(200, proc.stdout, f"application/x-{UPLOAD_PACK}-result")


def dumb_file(bare: Path, rest: str) -> GitAnswer:
    target = (bare / rest).resolve()
    if not target.is_relative_to(bare.resolve()) or not target.is_file():
        return GitAnswer(404, b"not found\n")
    return GitAnswer(200, target.read_bytes(), "application/octet-stream")


def unauthorized() -> GitAnswer:
    return GitAnswer(401, b"Unauthorized\n", headers=(("WWW-Authenticate", REALM),))


def not_found() -> GitAnswer:
    return GitAnswer(404, b"Repository not found\n")


def serve(forge: FakeForge, method: str, path: str, query: dict[str, list[str]],
          headers: dict[str, str], body: bytes) -> GitAnswer:
    """One git HTTP request to the forge stand-in ``forge``, recorded in its
    ``git_requests`` with the user its credentials name."""
    lowered = {k.lower(): v for k, v in headers.items()}
    auth = lowered.get("authorization")
    user = None
    if auth is not None:
        token = basic_token(auth)
        user = forge.tokens.get(token) if token is not None else None
    answer = _answer(forge, method, path, query, lowered, body, auth, user)
    with forge._lock:
        forge.git_requests.append(forge.received_type(method, path, user, answer.status, None))
    return answer


def _answer(forge: FakeForge, method: str, path: str, query: dict[str, list[str]],
            headers: dict[str, str], body: bytes, auth: str | None,
            user: str | None) -> GitAnswer:
    match = PATH_RE.fullmatch(path)
    if match is None or ".." in path:
        return GitAnswer(404, b"not found\n")
    owner, name, rest = match.groups()
    with forge._lock:
        repo = forge.repos.get((owner, name))
    if auth is not None and user is None:
        return unauthorized()  # credentials that name no token
    bare = forge.bare_path(owner, name)
    if repo is None or not bare.is_dir():
        return not_found()
    if repo.private and user is None:
        return unauthorized()
    if not forge.can_read(repo, user):
        return not_found()
    protocol = headers.get("git-protocol")
    if rest == "info/refs" and method == "GET":
        forge.sync_pull_refs(owner, name)  # what Gitea does on every push to a PR's head
        return info_refs(bare, query.get("service", [None])[0], protocol)
    if rest == "git-upload-pack" and method == "POST":
        return upload_pack(bare, body, headers.get("content-type", ""),
                           headers.get("content-encoding", ""), protocol)
    if rest == "git-receive-pack":
        return GitAnswer(403, b"the stand-in does not take pushes\n")
    if method == "GET":
        return dumb_file(bare, rest)
    return GitAnswer(405, b"method not allowed\n")
