"""A local push target: an HTTP server in a thread that records POSTed JSON bodies.

Apprise's ``json://127.0.0.1:<port>/alerts`` URL posts ``{"version", "title", "message",
"type", ...}`` to ``http://127.0.0.1:<port>/alerts``. ``stop()`` closes the listening socket
(so a push is refused, as with a target that is down) and ``start()`` listens again on the
same port. Received bodies survive a restart.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PushReceiver:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"json://{self.host}:{self.port}/alerts"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.received.append({"path": self.path, "body": body})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def start(self) -> None:
        if self._server is not None:
            return
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [entry["body"] for entry in self.received]

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def matching(self, needle: str) -> list[dict[str, Any]]:
        """Received bodies whose title or message contains ``needle``."""
        return [
            body for body in self.bodies()
            if needle in str(body.get("title", "")) or needle in str(body.get("message", ""))
        ]

    def wait_for(self, needle: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Wait until a body containing ``needle`` arrived; return all that match."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.matching(needle)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"no push containing {needle!r} within {timeout_s} s; got {self.bodies()}"
        )
