"""The forge (R11): Gitea/Forgejo webhooks start runs; commit statuses report their verdicts.

Public surface:

* ``serve(settings, listen)`` — the webhook endpoint of ``ccci bridge serve``.
* ``run_queued(settings, report)`` / ``run_finished(settings, report)`` — the run lifecycle
  hooks: the ``pending`` status when a run is queued, the verdict status and the finish
  notification when it ends. Never raise.
* ``ForgeClient`` — the API client; ``PullRequest`` what it reads of a PR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ccci_tasks.forge.client import ForgeClient, PullRequest, forge_configured
from ccci_tasks.forge.hooks import run_finished, run_queued

if TYPE_CHECKING:
    from ccci_tasks.config import Settings

__all__ = ["ForgeClient", "PullRequest", "forge_configured", "run_finished", "run_queued",
           "serve"]


def serve(settings: Settings, listen: str | None = None, **kwargs: Any) -> None:
    """Serve ``POST /hooks/forge`` on ``listen`` (HOST:PORT, default CCCI_BRIDGE_LISTEN)."""
    from ccci_tasks.forge.webhook import serve as _serve

    _serve(settings, listen, **kwargs)
