"""Per-run Keycloak realms ``<parent>-<6hex>`` on the warm keycloak (admin REST API).

A small client: an admin token from the master realm, then create or delete a realm.
Refuses any realm name that is not of the per-run shape, so ``master`` and operators' own
realms can never be touched from here.
"""

from __future__ import annotations

import httpx

from ccci_tasks import naming
from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput, KeycloakError

TIMEOUT_S = 30.0


def _per_run(realm: str) -> str:
    if naming.parse_realm(naming.validate_realm(realm)) is None:
        raise InvalidInput(f"realm {realm!r} is not a per-run realm <parent>-<6hex>; refusing")
    return realm


def _client(settings: Settings) -> httpx.Client:
    if not settings.keycloak_url:
        raise KeycloakError(
            "the recipe depends on keycloak but CCCI_KEYCLOAK_URL is not set; "
            "configure the warm keycloak's admin API"
        )
    return httpx.Client(base_url=settings.keycloak_url.rstrip("/"), timeout=TIMEOUT_S)


def _token(settings: Settings, client: httpx.Client) -> str:
    password = settings.keycloak_admin_password
    response = client.post(
        "/realms/master/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": "admin-cli",
              "username": settings.keycloak_admin_user or "admin",
              "password": password.get_secret_value() if password else ""},
    )
    if response.status_code != 200:
        raise KeycloakError(f"keycloak admin login answered {response.status_code}")
    token: str = response.json()["access_token"]
    return token


def create_realm(settings: Settings, realm: str) -> None:
    """Create the per-run realm (idempotent: an existing one is fine)."""
    _per_run(realm)
    try:
        with _client(settings) as client:
            auth = {"Authorization": f"Bearer {_token(settings, client)}"}
            response = client.post("/admin/realms", json={"realm": realm, "enabled": True},
                                   headers=auth)
    except httpx.HTTPError as exc:
        raise KeycloakError(f"keycloak unreachable creating realm {realm}: {exc}") from exc
    if response.status_code not in (201, 409):
        raise KeycloakError(f"creating realm {realm}: keycloak answered {response.status_code}")


def delete_realm(settings: Settings, realm: str) -> None:
    """Delete the per-run realm (idempotent: a missing one is fine)."""
    _per_run(realm)
    try:
        with _client(settings) as client:
            auth = {"Authorization": f"Bearer {_token(settings, client)}"}
            response = client.delete(f"/admin/realms/{realm}", headers=auth)
    except httpx.HTTPError as exc:
        raise KeycloakError(f"keycloak unreachable deleting realm {realm}: {exc}") from exc
    if response.status_code not in (204, 404):
        raise KeycloakError(f"deleting realm {realm}: keycloak answered {response.status_code}")
