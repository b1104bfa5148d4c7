"""Probes: reconverged and version_moved on DeployedState values; serving against a local server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from ccci_tasks.errors import InvalidInput, WaitTimeout
from ccci_tasks.naming import Domain
from ccci_tasks.platform.base import DeployedState, ServiceState
from ccci_tasks.probes import reconverged, serving, version_moved, wait_serving

DOMAIN = Domain("cust-0a1b2c.ci.localhost")
STACK = "cust-0a1b2c_ci_localhost"


def state(*services: ServiceState, version: str | None = "1.0.0+1.0",
          chaos: str | None = None) -> DeployedState:
    return DeployedState(DOMAIN, STACK, version=version, chaos_version=chaos, services=services)


def svc(name: str = "app", desired: int = 1, running: int = 1, update: str | None = None,
        failed: int = 0, error: str | None = None) -> ServiceState:
    return ServiceState(f"{STACK}_{name}", desired, running, "ccci/custom-html:1.0",
                        update_state=update, last_error=error, failed_tasks=failed)


# --------------------------------------------------------------------------- reconverged


@pytest.mark.parametrize("update", [None, "", "completed", "rollback_completed"])
def test_reconverged_when_all_running_and_settled(update: str | None) -> None:
    """Every service at desired replicas with a settled update is reconverged."""
    ok, why = reconverged(state(svc(update=update), svc("db", desired=2, running=2)))
    assert ok, why
    assert "reconverged" in why


def test_not_reconverged_when_undeployed() -> None:
    """An app without services has not reconverged."""
    ok, why = reconverged(state(version=None))
    assert not ok
    assert "not deployed" in why


def test_not_reconverged_when_replicas_missing() -> None:
    """A service below its desired replicas is named with running/desired."""
    ok, why = reconverged(state(svc(), svc("db", desired=2, running=1)))
    assert not ok
    assert f"{STACK}_db runs 1/2" in why


@pytest.mark.parametrize("update", ["updating", "paused", "rollback_started", "rollback_paused"])
def test_not_reconverged_when_update_unsettled(update: str) -> None:
    """An update that is not completed (or rolled back) is not settled."""
    ok, why = reconverged(state(svc(update=update)))
    assert not ok
    assert update in why


def test_not_reconverged_after_failed_tasks() -> None:
    """A failed task since the deploy spoils convergence even when replicas run now."""
    ok, why = reconverged(state(svc(failed=1, error="task: non-zero exit (1)")))
    assert not ok
    assert "non-zero exit (1)" in why


# --------------------------------------------------------------------------- version_moved


def test_moved_by_chaos_label() -> None:
    """A chaos-version label equal to the ref's short sha is a move."""
    before = state(svc())
    after = state(svc(), chaos="abc1234")
    ok, why = version_moved(before, after, "abc1234", None)
    assert ok, why


def test_moved_by_chaos_label_prefix_of_longer_sha() -> None:
    """A longer sha given by the caller still matches the 7-character label."""
    ok, _ = version_moved(state(svc()), state(svc(), chaos="abc1234"), "abc1234def", None)
    assert ok


def test_moved_by_version_change_to_target() -> None:
    """The version label changing to the target version is a move."""
    before = state(svc(), version="1.0.0+1.0")
    after = state(svc(), version="1.1.0+1.1")
    assert version_moved(before, after, None, "1.1.0+1.1")[0]
    assert version_moved(before, after, None, None)[0]


def test_version_change_to_other_than_target_did_not_move() -> None:
    """A version change to something other than the target is no move."""
    before = state(svc(), version="1.0.0+1.0")
    after = state(svc(), version="1.1.0+1.1")
    ok, why = version_moved(before, after, None, "2.0.0+2.0")
    assert not ok
    assert "did not move" in why


def test_unchanged_did_not_move() -> None:
    """Same labels before and after: "did not move", naming the expected sha."""
    before = state(svc(), chaos="1111111")
    after = state(svc(), chaos="1111111")
    ok, why = version_moved(before, after, "abc1234", None)
    assert not ok
    assert "did not move" in why
    assert "abc1234" in why


def test_stale_chaos_label_did_not_move() -> None:
    """A chaos label of another commit is no move."""
    ok, why = version_moved(state(svc()), state(svc(), chaos="9999999"), "abc1234", None)
    assert not ok
    assert "9999999" in why


# --------------------------------------------------------------------------- serving


class _Handler(BaseHTTPRequestHandler):
    statuses: ClassVar[dict[str, list[int]]] = {}
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        queue = self.statuses.get(self.path, [404])
        code = queue.pop(0) if len(queue) > 1 else queue[0]
        body = f"status {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    """A tiny HTTP server on a free loopback port; its handler class holds the statuses."""
    handler = type("Handler", (_Handler,), {"statuses": {}, "hosts": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_serving_200(server: tuple[str, type[_Handler]]) -> None:
    """A 200 on the path is serving, and the Host header is the app's domain."""
    url, handler = server
    handler.statuses["/health"] = [200]
    assert serving(url, DOMAIN, [200], 5, path="/health") == 200
    assert handler.hosts[-1] == DOMAIN


def test_serving_retries_until_ok(server: tuple[str, type[_Handler]]) -> None:
    """503s then a 302 are retried until the accepted status arrives."""
    url, handler = server
    handler.statuses["/"] = [503, 503, 302]
    assert wait_serving(url, DOMAIN, [200, 302], 10) == 302


def test_serving_404_never_ok(server: tuple[str, type[_Handler]]) -> None:
    """404 never counts, even when listed, and the timeout names it as the last status."""
    url, handler = server
    handler.statuses["/"] = [404]
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        serving(url, DOMAIN, [200, 404], 1.5)
    assert time.monotonic() - started < 15  # the 1.5 s timeout, ten times over
    assert info.value.timeout_s == 1.5
    assert "HTTP 404" in str(info.value)
    assert info.value.last_seen.startswith("HTTP 404")


def test_serving_timeout_names_last_status(server: tuple[str, type[_Handler]]) -> None:
    """A steady 500 times out with the 500 named."""
    url, handler = server
    handler.statuses["/"] = [500]
    with pytest.raises(WaitTimeout, match="HTTP 500"):
        serving(url, DOMAIN, [200], 1.0)


def test_serving_connection_refused_names_error() -> None:
    """Nothing listening: the timeout names the connection error."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WaitTimeout, match="ConnectError"):
        serving(f"http://127.0.0.1:{port}", DOMAIN, [200], 1.0)


def test_serving_rejects_non_http_url() -> None:
    """A URL without http(s) scheme is bad input."""
    with pytest.raises(InvalidInput):
        serving("127.0.0.1:80", DOMAIN, [200], 1.0)
