"""Remove every app of this system's base domain from the engine (``make reset``).

Each app the platform finds (ccci-labelled services or volumes, or an env file) whose
domain is of ``CCCI_BASE_DOMAIN`` is removed without a graceful stop, with its volumes and
secrets. Settings come from the environment (``make reset`` loads run/ccci.env).
"""

from __future__ import annotations

import sys

from ccci_tasks.config import get_settings
from ccci_tasks.errors import CcciError
from ccci_tasks.platform import get_platform


def main() -> int:
    settings = get_settings()
    platform = get_platform(settings)
    suffix = "." + settings.base_domain
    try:
        apps = [a for a in platform.live_apps() if a.domain.endswith(suffix)]
        for app in apps:
            platform.remove(app.domain)
            print(f"reset: removed {app.domain} ({app.kind}) with its volumes and secrets")
    except CcciError as exc:
        print(f"reset: {exc}", file=sys.stderr)
        return 3
    if not apps:
        print(f"reset: no app of {settings.base_domain} on the engine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
