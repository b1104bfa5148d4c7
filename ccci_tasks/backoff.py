"""The one retry backoff: how long a task waits before it tries again.

2, 4, 8, ... seconds after the first, second, third failure, capped at ``cap_s`` and at a
quarter of the Redis visibility timeout: a countdown longer than that would be redelivered
while it waits, and run twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

BASE_S: Final = 2


def backoff_s(retries: int, settings: Settings, cap_s: int) -> int:
    """Seconds to wait before retry number ``retries + 1``."""
    cap = max(1, min(cap_s, settings.visibility_timeout_s // 4))
    return int(min(cap, BASE_S ** min(retries + 1, 20)))
