"""Snapshots of an app's volumes (R5.3): the side that reads and writes the volumes.

``snapshot`` and ``restore`` (``snapshots.volumes``) are what the lanes call; the tars are
made and put back by ``snapshots.voltar`` (checked by ``snapshots.tarcheck``, restored
incrementally by ``snapshots.incremental``). The files they leave under the state root
(manifests, the current-snapshot link, restore stamps, member lists) are ``state.warmsnap``'s,
``state.volstamp``'s and ``state.tarmembers``'s.
"""

from __future__ import annotations

from ccci_tasks.snapshots.volumes import Guard, app_volumes, restore, snapshot

__all__ = ["Guard", "app_volumes", "restore", "snapshot"]
