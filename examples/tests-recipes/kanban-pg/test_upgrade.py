"""kanban-pg overlay after an upgrade: the schema is migrated and every card is still there."""

import json
import os
import urllib.request


def test_migrated_and_no_card_lost() -> None:
    """No pending migration, 3,000 cards, each in a column and labelled."""
    request = urllib.request.Request(
        os.environ["CCCI_BASE_URL"] + "/", headers={"Host": os.environ["CCCI_DOMAIN"]}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        state = json.loads(response.read().decode())
    assert state["app"] == "kanban-pg"
    assert state["pending"] == []
    assert state["tables"]["cards"] == 3000
    assert state["tables"]["card_labels"] == 3000
    assert state["tables"]["board_columns"] == 4
