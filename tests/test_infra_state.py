"""The live-warm app state <state>/infra/<app>.json: round trip, validation, listing, layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccci_tasks.errors import InvalidInput, RegistryError
from ccci_tasks.naming import Recipe
from ccci_tasks.state.canonical import list_registries
from ccci_tasks.state.infra import (
    InfraState,
    infra_dir,
    infra_path,
    list_infra,
    read_infra,
    write_infra,
)

DOMAIN = "warm-keycloak.ci.localhost"
KEYCLOAK = Recipe("keycloak")
TRAEFIK = Recipe("traefik")


def _state(**changes: object) -> InfraState:
    fields: dict[str, object] = {"app": "keycloak", "domain": DOMAIN, "current": "1.0.1+26.0.1",
                                 "last_good": "1.0.1+26.0.1", "status": "ok"}
    fields.update(changes)
    return InfraState(**fields)  # type: ignore[arg-type]


def test_round_trip_and_layout(tmp_path: Path) -> None:
    """A written state reads back equal at <state>/infra/<app>.json with exactly its keys."""
    state = _state(status="held")
    path = write_infra(tmp_path, state)
    assert path == infra_path(tmp_path, KEYCLOAK) == tmp_path / "infra" / "keycloak.json"
    assert read_infra(tmp_path, KEYCLOAK) == state
    raw = json.loads(path.read_text())
    assert set(raw) == {"app", "domain", "current", "last_good", "status", "ts"}
    assert raw["ts"].endswith("Z")
    assert not list(path.parent.glob(".*tmp-*"))
    assert infra_dir(tmp_path, KEYCLOAK) == tmp_path / "infra" / "keycloak"


def test_last_good_may_be_unknown(tmp_path: Path) -> None:
    """last_good is None until a version passed the health gate; it round-trips as null."""
    write_infra(tmp_path, _state(last_good=None, status="rolled-back"))
    state = read_infra(tmp_path, KEYCLOAK)
    assert state is not None and state.last_good is None
    assert json.loads(infra_path(tmp_path, KEYCLOAK).read_text())["last_good"] is None


def test_missing_state_is_none(tmp_path: Path) -> None:
    """No state file means the app was never reconciled, not an error."""
    assert read_infra(tmp_path, TRAEFIK) is None
    assert list_infra(tmp_path) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"app": "Key Cloak"}, "recipe name"),
        ({"domain": "keycloak.ci.localhost"}, "expected 'warm-keycloak.<base-domain>'"),
        ({"domain": "warm-traefik.ci.localhost"}, "expected 'warm-keycloak.<base-domain>'"),
        ({"domain": "warm-keycloak"}, "domain"),
        ({"current": "latest"}, "version 'latest'"),
        ({"current": None}, "version None"),
        ({"last_good": "1.0"}, "version '1.0'"),
        ({"status": "known-good"}, "status 'known-good'"),
        ({"ts": "yesterday"}, "ts 'yesterday'"),
        ({"ts": "2026-01-01T00:00:00"}, "ts"),
    ],
)
def test_write_validates_before_writing(tmp_path: Path, changes: dict[str, object],
                                        expected: str) -> None:
    """A bad field is InvalidInput naming it, and nothing is written."""
    with pytest.raises(InvalidInput, match=expected):
        write_infra(tmp_path, _state(**changes))
    assert not (tmp_path / "infra").exists() or not list((tmp_path / "infra").iterdir())


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"app": "keycloak"}',
     json.dumps({"app": "keycloak", "domain": DOMAIN, "current": "1.0.0+26.0.0",
                 "last_good": None, "status": "broken", "ts": "2026-01-01T00:00:00Z"}),
     json.dumps({"app": "keycloak", "domain": DOMAIN, "current": "not-a-version",
                 "last_good": None, "status": "ok", "ts": "2026-01-01T00:00:00Z"}),
     json.dumps({"app": "traefik", "domain": "warm-traefik.ci.localhost",
                 "current": "3.0.0+v3.1.0", "last_good": None, "status": "ok",
                 "ts": "2026-01-01T00:00:00Z"})],
)
def test_garbage_file_is_registry_error_naming_it(tmp_path: Path, content: str) -> None:
    """An unusable state file raises RegistryError naming the file."""
    path = infra_path(tmp_path, KEYCLOAK)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(RegistryError, match=str(path)):
        read_infra(tmp_path, KEYCLOAK)


def test_bad_app_name_refused_before_any_read(tmp_path: Path) -> None:
    """An app name that could escape the state root is refused (the functions take a parsed
    ``Recipe``)."""
    for name in ("../etc", "a/b", ""):
        with pytest.raises(InvalidInput):
            read_infra(tmp_path, Recipe(name))
        with pytest.raises(InvalidInput):
            infra_dir(tmp_path, Recipe(name))


def test_list_infra_sorted_and_not_canonicals(tmp_path: Path) -> None:
    """list_infra returns every app's state by name; none of it counts as a canonical."""
    write_infra(tmp_path, _state(app="traefik", domain="warm-traefik.ci.localhost",
                                 current="3.0.1+v3.1.1", last_good="3.0.0+v3.1.0",
                                 status="rolled-back"))
    write_infra(tmp_path, _state())
    infra_dir(tmp_path, KEYCLOAK).mkdir()  # the snapshot folder beside the file
    (tmp_path / "infra" / "Not An App.json").write_text("{}")
    assert [s.app for s in list_infra(tmp_path)] == ["keycloak", "traefik"]
    assert list_registries(tmp_path) == []
