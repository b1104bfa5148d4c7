"""A client of the Keycloak admin REST API: admin token, list, create and delete realms.

Keycloak (17+, no ``/auth`` prefix) hands out admin tokens by the password grant of the
``admin-cli`` client in the ``master`` realm::

    POST /realms/master/protocol/openid-connect/token
         grant_type=password&client_id=admin-cli&username=...&password=...
    GET    /admin/realms?briefRepresentation=true       [{"id", "realm"}, ...]
    POST   /admin/realms  {"realm": ..., "enabled": true}  201 (409: exists)
    DELETE /admin/realms/{realm}                           204 (404: missing)

The token is cached and renewed shortly before its ``expires_in`` runs out (Keycloak's default
lifetime is 60 s); a call answered 401 renews it once and is retried once.

Only per-run realms ``<parent>-<6hex>`` (``naming.parse_realm``) can be created or deleted
from here, and never ``master``: any other name is ``InvalidInput`` before a request is made.

Errors: every transport error and unexpected status is a ``KeycloakError`` naming the URL
path and the status; the password and tokens never appear in a message or a repr. I/O goes
through an injectable ``httpx`` transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from ccci_tasks import naming
from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput, KeycloakError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_TOKEN_LIFETIME_S",
    "MASTER_REALM",
    "KeycloakAdmin",
    "per_run_realm",
]

DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_TOKEN_LIFETIME_S: Final = 60.0  # Keycloak's default access token lifespan
RENEW_MARGIN_S: Final = 10.0  # renew this long before expiry (at most a quarter of the life)
MASTER_REALM: Final = "master"
TOKEN_PATH: Final = "/realms/master/protocol/openid-connect/token"  # noqa: S105 (a path)
REALMS_PATH: Final = "/admin/realms"
ADMIN_CLIENT_ID: Final = "admin-cli"
DEFAULT_ADMIN_USER: Final = "admin"


def per_run_realm(name: str) -> str:
    """Return ``name`` if it is a per-run realm ``<parent>-<6hex>``, else ``InvalidInput``.

    ``master`` is refused by name as well as by shape.
    """
    naming.validate_realm(name)
    if name == MASTER_REALM:
        raise InvalidInput("realm 'master' is Keycloak's admin realm; it is never touched")
    if naming.parse_realm(name) is None:
        raise InvalidInput(
            f"realm {name!r} is not a per-run realm '<parent>-<6hex>' (e.g. 'ccci-1a2b3c'); "
            "refusing: only realms made for a run are created or deleted by ccci"
        )
    return name


class KeycloakAdmin:
    """The admin API of one Keycloak at ``base_url``, logged in as ``user``.

    Thread-safe: the token is shared under a lock. Use as a context manager or ``close()``.
    """

    def __init__(
        self,
        base_url: str,
        user: str,
        password: SecretStr,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise KeycloakError(
                "keycloak URL must not carry credentials, a query or a fragment; give the "
                "admin user and password in CCCI_KEYCLOAK_ADMIN_USER/_PASSWORD"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KeycloakError(
                f"keycloak URL {base_url!r} is invalid: expected http(s)://host[:port], "
                "e.g. https://warm-keycloak.ci.example.org; check CCCI_KEYCLOAK_URL"
            )
        if not isinstance(password, SecretStr):
            raise TypeError("password must be a pydantic SecretStr")
        if timeout_s <= 0:
            raise InvalidInput(f"timeout_s {timeout_s!r} is invalid: expected a positive number")
        self.base_url = base_url.rstrip("/")
        self.user = user
        self._password = password
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: SecretStr | None = None
        self._renew_at = 0.0
        self._client = httpx.Client(
            base_url=self.base_url, transport=transport, timeout=timeout_s, trust_env=False,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> KeycloakAdmin:
        """A client of the warm keycloak configured by ``CCCI_KEYCLOAK_*``."""
        if not settings.keycloak_url:
            raise KeycloakError(
                "CCCI_KEYCLOAK_URL is not set: the warm keycloak's admin API is needed for "
                "per-run realms; set it (and CCCI_KEYCLOAK_ADMIN_USER/_PASSWORD)"
            )
        if settings.keycloak_admin_password is None:
            raise KeycloakError(
                "CCCI_KEYCLOAK_ADMIN_PASSWORD is not set: the warm keycloak's admin password "
                "is needed to log in to its admin API"
            )
        return cls(
            settings.keycloak_url,
            settings.keycloak_admin_user or DEFAULT_ADMIN_USER,
            settings.keycloak_admin_password,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"KeycloakAdmin({self.base_url!r}, user={self.user!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KeycloakAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` with the password and the current token blanked out."""
        for secret in (self._password, self._token):
            value = secret.get_secret_value() if secret is not None else ""
            if value:
                text = text.replace(value, "***")
        return text

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; transport errors become ``KeycloakError`` naming the path."""
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            raise KeycloakError(
                f"keycloak did not answer {method} {path} at {self.base_url} ({detail}); "
                "check that the warm keycloak is up and CCCI_KEYCLOAK_URL"
            ) from exc

    def _unexpected(self, response: httpx.Response, what: str, expected: str) -> KeycloakError:
        body = self._scrub(response.text[:200].replace("\n", " "))
        return KeycloakError(
            f"{what}: {response.request.method} {response.request.url.path} answered "
            f"{response.status_code}, expected {expected}" + (f"; body: {body}" if body else "")
        )

    def _login(self) -> SecretStr:
        """A fresh admin token (the password grant of admin-cli in the master realm)."""
        started = self._clock()
        response = self._send(
            "POST",
            TOKEN_PATH,
            data={
                "grant_type": "password",
                "client_id": ADMIN_CLIENT_ID,
                "username": self.user,
                "password": self._password.get_secret_value(),
            },
        )
        if response.status_code in (400, 401):
            raise KeycloakError(
                f"keycloak refused the admin login: POST {TOKEN_PATH} answered "
                f"{response.status_code} for user {self.user!r}; check "
                "CCCI_KEYCLOAK_ADMIN_USER and CCCI_KEYCLOAK_ADMIN_PASSWORD"
            )
        if response.status_code != 200:
            raise self._unexpected(response, "admin login", "200")
        try:
            raw = response.json()
            token = raw["access_token"]
            lifetime_s = float(raw.get("expires_in", DEFAULT_TOKEN_LIFETIME_S))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeycloakError(
                f"admin login: POST {TOKEN_PATH} answered 200 without a usable access_token "
                "and expires_in; is CCCI_KEYCLOAK_URL a Keycloak?"
            ) from exc
        if not isinstance(token, str) or not token:
            raise KeycloakError(f"admin login: POST {TOKEN_PATH} gave an empty access_token")
        margin_s = min(RENEW_MARGIN_S, max(lifetime_s, 0.0) / 4)
        self._token = SecretStr(token)
        self._renew_at = started + lifetime_s - margin_s
        return self._token

    def _bearer(self, *, renew: bool = False) -> dict[str, str]:
        with self._lock:
            token = self._token
            if renew or token is None or self._clock() >= self._renew_at:
                token = self._login()
            return {"Authorization": f"Bearer {token.get_secret_value()}"}

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authorised request; a 401 renews the token once and retries once."""
        response = self._send(method, path, headers=self._bearer(), **kwargs)
        if response.status_code == 401:
            response = self._send(method, path, headers=self._bearer(renew=True), **kwargs)
            if response.status_code == 401:
                raise KeycloakError(
                    f"{method} {path} answered 401 twice, with a fresh admin token too; the "
                    f"user {self.user!r} may lack the admin role of the master realm"
                )
        return response

    # --- realms -------------------------------------------------------------------------

    def list_realms(self) -> list[str]:
        """The names of every realm, from one ``GET /admin/realms?briefRepresentation=true``."""
        response = self._call("GET", REALMS_PATH, params={"briefRepresentation": "true"})
        if response.status_code != 200:
            raise self._unexpected(response, "listing realms", "200")
        try:
            raw = response.json()
        except ValueError as exc:
            raise KeycloakError(f"listing realms: GET {REALMS_PATH} answered no JSON") from exc
        if not isinstance(raw, list) or not all(
            isinstance(item, dict) and isinstance(item.get("realm"), str) for item in raw
        ):
            raise KeycloakError(
                f"listing realms: GET {REALMS_PATH} answered something other than a list of "
                '{"realm": ...} objects'
            )
        return [item["realm"] for item in raw]

    def create_realm(self, name: str) -> bool:
        """Create per-run realm ``name`` (enabled). True if made, False if it existed (409)."""
        per_run_realm(name)
        response = self._call("POST", REALMS_PATH, json={"realm": name, "enabled": True})
        if response.status_code == 201:
            return True
        if response.status_code == 409:
            return False
        raise self._unexpected(response, f"creating realm {name}", "201 or 409")

    def delete_realm(self, name: str) -> bool:
        """Delete per-run realm ``name``. True if deleted, False if it was not there (404)."""
        per_run_realm(name)
        path = f"{REALMS_PATH}/{name}"
        response = self._call("DELETE", path)
        if response.status_code == 204:
            return True
        if response.status_code == 404:
            return False
        raise self._unexpected(response, f"deleting realm {name}", "204 or 404")
