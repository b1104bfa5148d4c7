"""notes-pg overlay after an upgrade: every migration the version ships is applied, no row lost."""

import json
import os
import urllib.request
from typing import Any


def _state() -> dict[str, Any]:
    request = urllib.request.Request(
        os.environ["CCCI_BASE_URL"] + "/", headers={"Host": os.environ["CCCI_DOMAIN"]}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        state: dict[str, Any] = json.loads(response.read().decode())
        return state


def test_every_migration_is_applied() -> None:
    """The app reports no pending migration and at least the three of its releases."""
    state = _state()
    assert state["app"] == "notes-pg"
    assert state["pending"] == []
    assert [m["version"] for m in state["migrations"]][:3] == [1, 2, 3]


def test_no_note_was_lost() -> None:
    """The 5,000 notes, their tags and their authors are all there."""
    tables = _state()["tables"]
    assert tables["notes"] == 5000
    assert tables["note_tags"] == 6667
    assert tables["authors"] == 50
