"""The PR-comment trigger grammar of the Drone bridge."""

from __future__ import annotations

from typing import Literal

Trigger = Literal["cold", "quick"]

_TRIGGERS: dict[str, Trigger] = {"!testme": "cold", "!testme --quick": "quick"}


def parse_comment(text: str) -> Trigger | None:
    """``!testme`` → cold, ``!testme --quick`` → quick; any other text → None.

    Only a comment that is exactly a trigger (surrounding whitespace aside) counts, so
    ``!testmexyz``, ``!testme foo`` or a quote of the trigger inside prose never fire.
    """
    if not isinstance(text, str):
        return None
    return _TRIGGERS.get(" ".join(text.split()))
