"""The rig's errors.

RigError
 +-- RigUnavailable   this machine cannot run a node (not root, no ``ip``/``nsenter``/``dockerd``)
 +-- RigTimeout       a wait ran out; the message names what was awaited and what was last seen
"""

from __future__ import annotations


class RigError(Exception):
    """A node could not be started, stopped or used; the message says what to do."""


class RigUnavailable(RigError):
    """A capability a node needs is missing on this machine."""


class RigTimeout(RigError):
    """A wait of the rig ran out."""
