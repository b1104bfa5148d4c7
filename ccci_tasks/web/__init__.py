"""Run pages and metrics (R14), served by the bridge's HTTP server (``ccci bridge serve``).

``handlers(settings, executor)`` gives the tornado routes: ``/runs``, ``/runs/<id>``,
``/runs/<id>.json``, ``/runs/<id>/steps/<n>.txt`` and ``/metrics``.
"""

from __future__ import annotations

from ccci_tasks.web.pages import handlers

__all__ = ["handlers"]
