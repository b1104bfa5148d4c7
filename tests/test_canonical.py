"""The canonical registry <state>/<recipe>/canonical.json: round trip, validation, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccci_tasks.errors import InvalidInput, RegistryError
from ccci_tasks.naming import Domain, Recipe
from ccci_tasks.state.canonical import (
    RESERVED_NAMES,
    Canonical,
    list_registries,
    read_registry,
    registry_path,
    write_registry,
)

RECIPE = Recipe("custom-html")


def _canonical(recipe: str = "custom-html", status: str = "known-good") -> Canonical:
    return Canonical(recipe=Recipe(recipe), domain=Domain(f"warm-{recipe}.ci.localhost"),
                     version="1.1.0+1.1", commit="0123abc", status=status)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    """A written registry reads back equal, with exactly the documented keys."""
    canonical = _canonical()
    path = write_registry(tmp_path, canonical)
    assert path == tmp_path / "custom-html" / "canonical.json"
    assert read_registry(tmp_path, RECIPE) == canonical
    raw = json.loads(path.read_text())
    assert set(raw) == {"recipe", "domain", "version", "commit", "status", "ts"}
    assert raw["ts"].endswith("Z")
    assert not list(path.parent.glob(".*tmp-*"))


def test_missing_registry_is_none(tmp_path: Path) -> None:
    """No registry file means no canonical, not an error."""
    assert read_registry(tmp_path, RECIPE) is None


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"recipe": "custom-html"}',
     '{"recipe": "custom-html", "domain": "warm-custom-html.ci.localhost", "version": "1.0.0+1",'
     ' "commit": null, "status": "broken", "ts": "2026-01-01T00:00:00Z"}',
     '{"recipe": "other", "domain": "warm-other.ci.localhost", "version": "1.0.0+1",'
     ' "commit": null, "status": "seeding", "ts": "2026-01-01T00:00:00Z"}'],
)
def test_bad_file_names_the_file(tmp_path: Path, content: str) -> None:
    """An unusable registry file raises RegistryError naming the file."""
    path = registry_path(tmp_path, RECIPE)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(RegistryError, match=str(path)):
        read_registry(tmp_path, RECIPE)


def test_write_validates_before_writing(tmp_path: Path) -> None:
    """A bad field is refused and nothing is written."""
    with pytest.raises(InvalidInput, match="version 'not a version'"):
        write_registry(tmp_path, Canonical(recipe=RECIPE,
                                           domain=Domain("warm-custom-html.ci.localhost"),
                                           version="not a version", commit=None))
    assert not (tmp_path / "custom-html").exists()
    with pytest.raises(InvalidInput):
        write_registry(tmp_path, _canonical(status="bogus"))


def test_reserved_names_are_never_recipes(tmp_path: Path) -> None:
    """The reserved top-level folders cannot hold a registry and are skipped by listing."""
    assert {"apps", "alerts", "runs", "infra", "beat", "abra", "intents", "holders",
            "failpoints"} <= set(RESERVED_NAMES)
    for name in RESERVED_NAMES:
        with pytest.raises(InvalidInput, match="reserved"):
            registry_path(tmp_path, Recipe(name))
        (tmp_path / name).mkdir()
        (tmp_path / name / "canonical.json").write_text("{garbage")
    assert list_registries(tmp_path) == []


def test_list_registries_sorted(tmp_path: Path) -> None:
    """Listing returns every recipe's registry sorted; folders without one are skipped."""
    for name in ("runs", "alerts"):
        (tmp_path / name).mkdir()
    (tmp_path / "no-registry").mkdir()
    write_registry(tmp_path, _canonical("zeta", "seeding"))
    write_registry(tmp_path, _canonical("alpha"))
    assert [c.recipe for c in list_registries(tmp_path)] == ["alpha", "zeta"]
    assert list_registries(tmp_path / "missing") == []
