"""The PR-comment trigger grammar of the Drone bridge: each lane that reports to pull
requests declares its trigger (``Lane.pull_requests``)."""

from __future__ import annotations

from ccci_tasks.lanes.registry import by_trigger

Trigger = str  # the name of a lane that reports to pull requests


def parse_comment(text: str) -> Trigger | None:
    """The lane whose trigger the comment is (``!testme`` → cold, ``!testme --quick`` →
    quick); any other text → None.

    Only a comment that is exactly a trigger (surrounding whitespace aside) counts, so
    ``!testmexyz``, ``!testme foo`` or a quote of the trigger inside prose never fire.
    """
    if not isinstance(text, str):
        return None
    lane = by_trigger(" ".join(text.split()))
    return lane.name if lane is not None else None
