"""A stand-in for the Keycloak admin REST API (the parts ccci uses), on 127.0.0.1 only.

It follows the real endpoints and answers (Keycloak 17+, no ``/auth`` prefix):

* ``POST /realms/master/protocol/openid-connect/token`` (form): the password grant of the
  ``admin-cli`` client. 200 ``{access_token, expires_in, token_type, ...}``; 401
  ``invalid_grant`` for bad credentials, 401 ``invalid_client`` for another client, 400
  ``unsupported_grant_type``. Tokens stop working ``token_lifetime_s`` after they were issued
  (``advertised_lifetime_s`` is what ``expires_in`` says, the same by default).
* ``GET /admin/realms[?briefRepresentation=true]``: every realm; brief = ``[{"id","realm"}]``.
* ``GET /admin/realms/{realm}``: one realm, 404 when missing.
* ``GET /realms/{realm}``: the realm's public information (no token needed), 404 when missing.
* ``POST /admin/realms`` (JSON ``{"realm", "enabled"}``): 201 with a ``Location`` header;
  409 for a duplicate; 400 for a body without a realm name.
* ``DELETE /admin/realms/{realm}``: 204; 404 when missing; 400 for ``master``.

Every ``/admin`` call needs ``Authorization: Bearer <token>`` of a live token, else 401.
It starts with the ``master`` realm, counts requests per ``(method, path)`` (path without the
query), can be pre-loaded with realms, and can be stopped and started again on the same port.

As a script (the local dev system runs it as its keycloak admin API)::

    python tests/fake_keycloak.py --port 8089 --user admin --password-file run/kc-password
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN_PATH = "/realms/master/protocol/openid-connect/token"
REALMS_PATH = "/admin/realms"
HOST = "127.0.0.1"


class FakeKeycloak:
    """The admin API of a Keycloak, in a thread. ``url`` is its base URL."""

    def __init__(
        self,
        user: str = "admin",
        password: str = "admin-secret",
        *,
        port: int = 0,
        token_lifetime_s: float = 60.0,
        advertised_lifetime_s: float | None = None,
        realms: Iterable[str] = (),
    ) -> None:
        self.user = user
        self.password = password
        self.port = port
        self.token_lifetime_s = token_lifetime_s
        self.advertised_lifetime_s = advertised_lifetime_s
        self.realms: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.requests: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[tuple[str, str, int]] = Counter()
        self.queries: list[tuple[str, str, str]] = []  # (method, path, query)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.add_realms(["master", *realms])

    # --- control ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeKeycloak:
        if self._server is None:
            server = ThreadingHTTPServer((HOST, self.port), self._handler())
            server.daemon_threads = True
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: requests are refused, as with a Keycloak that is down."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # kept-alive connections would still be served
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def add_realms(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self.realms.setdefault(name, self._realm(name))

    def realm_names(self) -> list[str]:
        with self._lock:
            return list(self.realms)

    def revoke_tokens(self) -> None:
        """Every issued token stops working (the next admin call answers 401)."""
        with self._lock:
            self.tokens.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.statuses.clear()
            self.queries.clear()

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.requests[(method, path)]

    @staticmethod
    def _realm(name: str) -> dict[str, Any]:
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"realm:{name}")), "realm": name,
                "enabled": True, "sslRequired": "external", "displayName": name}

    # --- protocol -----------------------------------------------------------------------

    def _issue(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = time.monotonic() + self.token_lifetime_s
        advertised = self.advertised_lifetime_s
        return {
            "access_token": token,
            "expires_in": int(self.token_lifetime_s if advertised is None else advertised),
            "refresh_expires_in": 1800,
            "refresh_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "not-before-policy": 0,
            "session_state": str(uuid.uuid4()),
            "scope": "profile email",
        }

    def _authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self.tokens.get(header[len("Bearer "):])
        return expiry is not None and time.monotonic() < expiry

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like Keycloak

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def _reply(self, status: int, body: Any = None,
                       headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                with fake._lock:
                    fake.statuses[(self.command, urlsplit(self.path).path, status)] += 1
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _route(self) -> None:
                parts = urlsplit(self.path)
                path = parts.path
                with fake._lock:
                    fake.requests[(self.command, path)] += 1
                    fake.queries.append((self.command, path, parts.query))
                body = self._body()
                if path == TOKEN_PATH:
                    self._token(body) if self.command == "POST" else self._reply(405)
                    return
                public = path.removeprefix("/realms/")
                if path.startswith("/realms/") and "/" not in public and self.command == "GET":
                    self._public(unquote(public))
                    return
                if path != REALMS_PATH and not path.startswith(REALMS_PATH + "/"):
                    self._reply(404, {"error": "RESTEASY003210: Could not find resource"})
                    return
                if not fake._authorised(self.headers.get("Authorization")):
                    self._reply(401, {"error": "HTTP 401 Unauthorized"})
                    return
                name = unquote(path[len(REALMS_PATH) + 1:]) if path != REALMS_PATH else None
                if name is None and self.command == "GET":
                    self._list(parse_qs(parts.query))
                elif name is None and self.command == "POST":
                    self._create(body)
                elif name and "/" not in name and self.command == "GET":
                    self._get(name)
                elif name and "/" not in name and self.command == "DELETE":
                    self._delete(name)
                else:
                    self._reply(405, {"error": "HTTP 405 Method Not Allowed"})

            def _token(self, body: bytes) -> None:
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if form.get("grant_type") != "password":
                    self._reply(400, {"error": "unsupported_grant_type",
                                      "error_description": "Unsupported grant_type"})
                elif form.get("client_id") != "admin-cli":
                    self._reply(401, {"error": "invalid_client",
                                      "error_description": "Invalid client or Invalid client "
                                                           "credentials"})
                elif (form.get("username"), form.get("password")) != (fake.user, fake.password):
                    self._reply(401, {"error": "invalid_grant",
                                      "error_description": "Invalid user credentials"})
                else:
                    self._reply(200, fake._issue())

            def _list(self, query: dict[str, list[str]]) -> None:
                brief = query.get("briefRepresentation", ["false"])[0].lower() == "true"
                with fake._lock:
                    realms = list(fake.realms.values())
                if brief:
                    self._reply(200, [{"id": r["id"], "realm": r["realm"]} for r in realms])
                else:
                    self._reply(200, realms)

            def _public(self, name: str) -> None:
                """A realm's public information, as Keycloak serves it to anyone."""
                with fake._lock:
                    realm = fake.realms.get(name)
                if realm is None:
                    self._reply(404, {"error": "Realm does not exist"})
                else:
                    self._reply(200, {"realm": name, "public_key": "stand-in",
                                      "token-service": f"{fake.url}/realms/{name}/protocol/"
                                                       "openid-connect"})

            def _get(self, name: str) -> None:
                with fake._lock:
                    realm = fake.realms.get(name)
                if realm is None:
                    self._reply(404, {"error": "Realm not found."})
                else:
                    self._reply(200, realm)

            def _create(self, body: bytes) -> None:
                try:
                    raw = json.loads(body or b"null")
                except ValueError:
                    raw = None
                name = raw.get("realm") if isinstance(raw, dict) else None
                if not isinstance(name, str) or not name:
                    self._reply(400, {"errorMessage": "Realm name cannot be empty"})
                    return
                with fake._lock:
                    exists = name in fake.realms
                    if not exists:
                        realm = fake._realm(name)
                        realm["enabled"] = bool(raw.get("enabled", False))
                        fake.realms[name] = realm
                if exists:
                    self._reply(409, {"errorMessage": f"Realm {name} already exists"})
                else:
                    self._reply(201, headers={"Location": f"{fake.url}{REALMS_PATH}/{name}"})

            def _delete(self, name: str) -> None:
                if name == "master":
                    self._reply(400, {"error": "Can't delete master realm"})
                    return
                with fake._lock:
                    found = fake.realms.pop(name, None)
                if found is None:
                    self._reply(404, {"error": "Realm not found."})
                else:
                    self._reply(204)

            do_GET = do_POST = do_DELETE = do_PUT = _route

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Keycloak admin API stand-in on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", type=Path, required=True,
                        help="file holding the admin password (first line)")
    parser.add_argument("--token-lifetime", type=float, default=60.0,
                        help="seconds an admin token lives (Keycloak's default: 60)")
    parser.add_argument("--realm", action="append", default=[],
                        help="a realm to start with besides master (repeatable)")
    args = parser.parse_args(argv)
    lines = args.password_file.read_text(encoding="utf-8").splitlines()
    password = lines[0] if lines else ""
    if not password:
        parser.error(f"{args.password_file} holds no password")
    fake = FakeKeycloak(args.user, password, port=args.port,
                        token_lifetime_s=args.token_lifetime, realms=args.realm).start()
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"fake keycloak admin API on {fake.url} (user {args.user})", flush=True)
    done.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
