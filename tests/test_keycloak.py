"""KeycloakAdmin against the Keycloak admin API stand-in: token, realms, refusals, failures."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_keycloak import REALMS_PATH, TOKEN_PATH, FakeKeycloak
from pydantic import SecretStr

from ccci_tasks import realms
from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput, KeycloakError
from ccci_tasks.keycloak import KeycloakAdmin

USER = "admin"
PASSWORD = "kc-pass-5f3a91"  # never to appear in a message or a repr
REALM = "ccci-1a2b3c"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKeycloak]:
    """One Keycloak stand-in for the module."""
    fake = FakeKeycloak(USER, PASSWORD).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: FakeKeycloak) -> FakeKeycloak:
    """The module's stand-in, reset: only master, fresh counts, default token life, up."""
    server.start()
    server.token_lifetime_s = 60.0
    server.advertised_lifetime_s = None
    server.revoke_tokens()
    for name in server.realm_names():
        if name != "master":
            server.realms.pop(name, None)
    server.reset_counts()
    return server


@pytest.fixture
def admin(fake: FakeKeycloak) -> Iterator[KeycloakAdmin]:
    """A client logged in (lazily) as the stand-in's admin."""
    with KeycloakAdmin(fake.url, USER, SecretStr(PASSWORD)) as client:
        yield client


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(**kwargs: Any) -> Settings:
    return Settings(**kwargs)


def test_list_realms_is_one_brief_get(fake: FakeKeycloak, admin: KeycloakAdmin) -> None:
    """list_realms names every realm from exactly one GET with briefRepresentation=true."""
    fake.add_realms(["ccci-000001", "operators"])
    fake.reset_counts()
    assert admin.list_realms() == ["master", "ccci-000001", "operators"]
    assert fake.count("GET", REALMS_PATH) == 1
    assert ("GET", REALMS_PATH, "briefRepresentation=true") in fake.queries
    assert fake.count("POST", TOKEN_PATH) == 1


def test_create_and_delete_are_idempotent(fake: FakeKeycloak, admin: KeycloakAdmin) -> None:
    """Create makes the realm once (then 409 is fine); delete removes it (then 404 is fine)."""
    assert admin.create_realm(REALM) is True
    assert fake.realms[REALM]["enabled"] is True
    assert admin.create_realm(REALM) is False
    assert fake.statuses[("POST", REALMS_PATH, 409)] == 1
    assert admin.delete_realm(REALM) is True
    assert REALM not in fake.realms
    assert admin.delete_realm(REALM) is False
    assert fake.statuses[("DELETE", f"{REALMS_PATH}/{REALM}", 404)] == 1
    assert fake.count("POST", TOKEN_PATH) == 1  # the token was cached


@pytest.mark.parametrize(
    "name",
    ["master", "operators", "ccci", "ccci-1A2B3C", "ccci-12345", "ccci-1234567", "ccci_1a2b3c",
     "../admin-1a2b3c", "ccci-1a2b3c/users", "", "x" * 101],
)
def test_refuses_non_per_run_realms_before_any_request(
    fake: FakeKeycloak, admin: KeycloakAdmin, name: str
) -> None:
    """master and every name not of the shape <parent>-<6hex> is refused; no request is made."""
    with pytest.raises(InvalidInput, match="realm"):
        admin.create_realm(name)
    with pytest.raises(InvalidInput, match="realm"):
        admin.delete_realm(name)
    with pytest.raises(InvalidInput, match="realm"):
        realms.delete_realm(_settings(keycloak_url=fake.url), name)
    assert sum(fake.requests.values()) == 0
    assert "master" in fake.realms


def test_token_renewed_before_it_expires(fake: FakeKeycloak) -> None:
    """With 60 s tokens the client logs in again 10 s before expiry, never hitting a 401."""
    clock = Clock()
    with KeycloakAdmin(fake.url, USER, SecretStr(PASSWORD), clock=clock) as admin:
        admin.list_realms()
        clock.now += 45
        admin.list_realms()
        assert fake.count("POST", TOKEN_PATH) == 1
        clock.now += 6  # 51 s after login: within the 10 s margin
        admin.list_realms()
        assert fake.count("POST", TOKEN_PATH) == 2
    assert not [key for key in fake.statuses if key[2] == 401]


@pytest.mark.slow
def test_short_lived_token_is_renewed_after_real_expiry(fake: FakeKeycloak) -> None:
    """A 1 s token is renewed on the next call after it ran out, without a 401."""
    import time

    fake.token_lifetime_s = 1.0
    with KeycloakAdmin(fake.url, USER, SecretStr(PASSWORD)) as admin:
        admin.create_realm(REALM)
        time.sleep(1.2)
        admin.delete_realm(REALM)
    assert fake.count("POST", TOKEN_PATH) == 2
    assert not [key for key in fake.statuses if key[2] == 401]
    assert REALM not in fake.realms


def test_401_renews_once_and_retries(fake: FakeKeycloak, admin: KeycloakAdmin) -> None:
    """A token Keycloak stopped honouring (401) is renewed once and the call retried once."""
    admin.list_realms()
    fake.revoke_tokens()
    assert admin.create_realm(REALM) is True
    assert fake.statuses[("POST", REALMS_PATH, 401)] == 1
    assert fake.statuses[("POST", REALMS_PATH, 201)] == 1
    assert fake.count("POST", TOKEN_PATH) == 2


def test_401_twice_is_an_error(fake: FakeKeycloak, admin: KeycloakAdmin) -> None:
    """A call refused with a fresh token too fails with KeycloakError, after one retry only."""
    fake.token_lifetime_s = 0.0
    fake.advertised_lifetime_s = 60.0  # Keycloak says 60 s but honours none
    with pytest.raises(KeycloakError, match=r"GET /admin/realms answered 401 twice") as info:
        admin.list_realms()
    assert fake.count("GET", REALMS_PATH) == 2
    assert fake.count("POST", TOKEN_PATH) == 2
    assert PASSWORD not in str(info.value)


def test_bad_credentials_name_the_user_not_the_password(fake: FakeKeycloak) -> None:
    """A refused login says which settings to check and never shows the password."""
    wrong = "wrong-" + PASSWORD
    with KeycloakAdmin(fake.url, USER, SecretStr(wrong)) as admin, \
            pytest.raises(KeycloakError) as info:
        admin.list_realms()
    message = str(info.value)
    assert f"POST {TOKEN_PATH} answered 401" in message
    assert "CCCI_KEYCLOAK_ADMIN_PASSWORD" in message and repr(USER) in message
    assert wrong not in message and PASSWORD not in message
    assert fake.count("GET", REALMS_PATH) == 0


def test_keycloak_down_is_keycloak_error(fake: FakeKeycloak) -> None:
    """A Keycloak that does not answer is a KeycloakError naming the path; back up, it works."""
    with KeycloakAdmin(fake.url, USER, SecretStr(PASSWORD), timeout_s=5) as admin:
        admin.list_realms()
        fake.stop()
        with pytest.raises(KeycloakError, match=r"did not answer POST /admin/realms") as info:
            admin.create_realm(REALM)
        assert PASSWORD not in str(info.value)
        with pytest.raises(KeycloakError, match="did not answer GET /admin/realms"):
            admin.list_realms()
        fake.start()
        assert admin.create_realm(REALM) is True
    with pytest.raises(KeycloakError, match="did not answer"):
        fake.stop()
        realms.create_realm(_settings(keycloak_url=fake.url,
                                      keycloak_admin_password=SecretStr(PASSWORD)), REALM)


def test_secrets_stay_out_of_reprs_and_messages(fake: FakeKeycloak, admin: KeycloakAdmin) -> None:
    """Neither the password nor the token shows in the client's repr or vars' reprs."""
    admin.list_realms()
    [token] = list(fake.tokens)
    for text in (repr(admin), str(admin), repr(vars(admin))):
        assert PASSWORD not in text and token not in text


def _mock_admin(handler: Any) -> KeycloakAdmin:
    """A client whose Keycloak answers through ``handler`` (token requests succeed)."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            return httpx.Response(200, json={"access_token": "tok-77", "expires_in": 60})
        result: httpx.Response = handler(request)
        return result

    return KeycloakAdmin("http://127.0.0.1:9", USER, SecretStr(PASSWORD),
                         transport=httpx.MockTransport(route))


@pytest.mark.parametrize(
    ("call", "response", "expected"),
    [
        ("create", httpx.Response(500, text="boom tok-77"),
         r"creating realm ccci-1a2b3c: POST /admin/realms answered 500, expected 201 or 409"),
        ("delete", httpx.Response(403, json={"error": "forbidden"}),
         r"DELETE /admin/realms/ccci-1a2b3c answered 403, expected 204 or 404"),
        ("list", httpx.Response(200, text="<html>"), r"GET /admin/realms answered no JSON"),
        ("list", httpx.Response(200, json={"realm": "master"}), r"list of \{\"realm\""),
        ("list", httpx.Response(502), r"GET /admin/realms answered 502, expected 200"),
    ],
)
def test_unexpected_answers_name_path_and_status(call: str, response: httpx.Response,
                                                 expected: str) -> None:
    """Unexpected statuses or bodies are KeycloakError naming path and status, token blanked."""
    with _mock_admin(lambda request: response) as admin:
        action = {"create": lambda: admin.create_realm(REALM),
                  "delete": lambda: admin.delete_realm(REALM),
                  "list": admin.list_realms}[call]
        with pytest.raises(KeycloakError, match=expected) as info:
            action()
    assert "tok-77" not in str(info.value) and PASSWORD not in str(info.value)


def test_from_settings_names_missing_settings() -> None:
    """Without CCCI_KEYCLOAK_URL (or the password) the error names the missing setting."""
    with pytest.raises(KeycloakError, match="CCCI_KEYCLOAK_URL is not set"):
        KeycloakAdmin.from_settings(_settings())
    with pytest.raises(KeycloakError, match="CCCI_KEYCLOAK_URL is not set"):
        realms.create_realm(_settings(), REALM)
    with pytest.raises(KeycloakError, match="CCCI_KEYCLOAK_ADMIN_PASSWORD is not set"):
        KeycloakAdmin.from_settings(_settings(keycloak_url="http://127.0.0.1:9"))
    admin = KeycloakAdmin.from_settings(_settings(
        keycloak_url="http://127.0.0.1:9/", keycloak_admin_password=SecretStr(PASSWORD)))
    assert (admin.base_url, admin.user) == ("http://127.0.0.1:9", "admin")
    admin.close()


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1", "http://u:p@127.0.0.1",
                                 "http://127.0.0.1/?x=1", ""])
def test_bad_url_refused(url: str) -> None:
    """A URL that is not plain http(s)://host[:port] is refused, credentials never echoed."""
    with pytest.raises(KeycloakError, match="keycloak URL") as info:
        KeycloakAdmin(url, USER, SecretStr(PASSWORD))
    assert ":p@" not in str(info.value)


def test_lane_functions_create_and_delete_through_settings(fake: FakeKeycloak) -> None:
    """realms.create_realm/delete_realm(settings, realm) work as the lanes call them."""
    settings = _settings(keycloak_url=fake.url, keycloak_admin_user=USER,
                         keycloak_admin_password=SecretStr(PASSWORD))
    realms.create_realm(settings, REALM)
    realms.create_realm(settings, REALM)
    assert REALM in fake.realms
    realms.delete_realm(settings, REALM)
    realms.delete_realm(settings, REALM)
    assert REALM not in fake.realms


def test_fake_runs_as_a_script(tmp_path: Path) -> None:
    """`python tests/fake_keycloak.py` serves the admin API until SIGTERM, then exits 0."""
    secret = tmp_path / "kc-password"
    secret.write_text(PASSWORD + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(__file__).with_name("fake_keycloak.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--user", USER,
                             "--password-file", str(secret)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert f"127.0.0.1:{port}" in proc.stdout.readline()
        with KeycloakAdmin(f"http://127.0.0.1:{port}", USER, SecretStr(PASSWORD)) as admin:
            assert admin.create_realm(REALM) is True
            assert admin.list_realms() == ["master", REALM]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
