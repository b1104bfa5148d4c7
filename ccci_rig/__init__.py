"""A rig of several swarm hosts on one machine, for tests, ``make up`` and benches.

``running(name, run_dir, relay_ports)`` starts a node (a second Docker engine in swarm mode in a
network namespace of its own, see ``ccci_rig.node``) and stops it after the block;
``scripts/node.sh start|stop|status|images|exec NAME`` does the same from a shell.
"""

from ccci_rig.errors import RigError, RigTimeout, RigUnavailable
from ccci_rig.images import recipe_images
from ccci_rig.node import Node, check_capabilities, running

__all__ = ["Node", "RigError", "RigTimeout", "RigUnavailable", "check_capabilities",
           "recipe_images", "running"]
