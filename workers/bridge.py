"""The bridge: the forge webhook endpoint (``POST /hooks/forge``), not a Celery worker.

``python -m workers.bridge [--listen HOST:PORT]`` (default ``CCCI_BRIDGE_LISTEN``). It
refuses to start, with the reason and exit code 2, without ``CCCI_WEBHOOK_SECRET`` or the
forge settings. What it enqueues runs on the alerts worker.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ccci_tasks.constants import EXIT_OK, EXIT_USAGE
from ccci_tasks.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.bridge", description=__doc__)
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="address to listen on (default: CCCI_BRIDGE_LISTEN)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ccci_tasks.config import get_settings
    from ccci_tasks.forge import serve

    try:
        serve(get_settings(), args.listen)
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
