"""State records: one style for every JSON file under the state root (``state.records``)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ccci_tasks.errors import InvalidInput, StateError
from ccci_tasks.naming import Domain, Recipe
from ccci_tasks.state import alerts, intents, records
from ccci_tasks.state.canonical import Canonical, read_registry, registry_path

RUN = str(uuid.uuid4())
RECIPE = Recipe("custom-html")


def test_a_bad_value_is_refused_where_it_is_made() -> None:
    """Every bad field is named with its value, in our validators' words, in one error."""
    with pytest.raises(InvalidInput) as caught:
        # raw text on purpose: the record itself names every bad field in one error
        Canonical(recipe="Custom HTML", domain="warm.ci.localhost",  # type: ignore[arg-type]
                  version="latest", commit="XYZ",
                  status="bogus", ts="yesterday")  # type: ignore[arg-type]
    text = str(caught.value)
    for part in ("recipe name 'Custom HTML'", "version 'latest'", "commit 'XYZ'",
                 "status 'bogus'", "ts 'yesterday'"):
        assert part in text, text


def test_records_are_frozen() -> None:
    """A record read or made is never changed in place."""
    made = Canonical(recipe=RECIPE, domain=Domain("warm-custom-html.ci.localhost"),
                     version="1.0.0+1.0", commit=None)
    with pytest.raises(ValueError, match="frozen"):
        made.version = "2.0.0+2.0"  # type: ignore[misc]


class Quarantine(records.Record):
    """A small record of the kind the state root holds."""

    recipe: Recipe
    reason: str


@pytest.mark.parametrize("content", ["", "{", "[1]", '{"reason": 3}'])
def test_an_unusable_file_names_itself(tmp_path: Path, content: str) -> None:
    """A file that holds no valid record is a StateError naming the file; no file is None."""
    path = tmp_path / "quarantine.json"
    assert records.read(path, Quarantine, what="mark") is None
    path.write_text(content)
    with pytest.raises(StateError, match=str(path)):
        records.read(path, Quarantine, what="mark")


def test_files_written_before_still_load(tmp_path: Path) -> None:
    """Keys a record does not know are ignored; an intent record from before fencing tokens
    (no token, detail null) loads with token 0 and an empty detail."""
    path = registry_path(tmp_path, RECIPE)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "recipe": "custom-html", "domain": "warm-custom-html.ci.localhost",
        "version": "1.0.0+1.0", "commit": None, "status": "known-good",
        "ts": "2026-01-01T00:00:00Z", "written_by": "a newer version"}))
    found = read_registry(tmp_path, RECIPE)
    assert found is not None and found.version == "1.0.0+1.0"
    old = intents.intent_path(tmp_path, "canon:custom-html")
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"resource": "canon:custom-html", "kind": "dirty", "run_id": RUN,
                               "domain": "warm-custom-html.ci.localhost", "detail": None,
                               "ts": "2026-01-01T00:00:00Z"}))
    intent = intents.read_intent(tmp_path, "canon:custom-html")
    assert intent is not None and (intent.token, intent.detail) == (0, {})


def test_an_intent_token_must_be_a_number(tmp_path: Path) -> None:
    """A token that is a boolean or a string is an unusable record (the resource counts as
    dirty), never token 1."""
    path = intents.intent_path(tmp_path, "canon:custom-html")
    path.parent.mkdir(parents=True)
    for token in (True, "5"):
        path.write_text(json.dumps({"resource": "canon:custom-html", "kind": "dirty",
                                    "run_id": RUN, "domain": "warm-custom-html.ci.localhost",
                                    "token": token}))
        with pytest.raises(StateError, match="token"):
            intents.read_intent(tmp_path, "canon:custom-html")


def test_an_alert_written_before_is_listed_as_it_was(tmp_path: Path) -> None:
    """An alert file as the code before wrote it (no notes key, detail an object) lists and
    round-trips byte for byte through to_json."""
    raw = {"id": "20260101T000000.000000Z-rolled-back-traefik", "kind": "rolled-back",
           "app": "traefik", "ts": "2026-01-01T00:00:00.000000Z", "summary": "rolled back",
           "detail": {"attempted": "3.1.0+v3.2.0", "last_good": None, "recovered": True}}
    folder = tmp_path / "alerts"
    folder.mkdir()
    (folder / f"{raw['id']}.json").write_text(json.dumps(raw))
    [alert] = alerts.pending(tmp_path)
    assert alert.to_json() == raw
