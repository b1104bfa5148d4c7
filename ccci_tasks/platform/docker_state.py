"""``DockerState``: the view of deployed stacks that both backends read through the docker SDK.

The swarm and the abra backends deploy differently but leave the same objects on the engine,
so both hold one ``DockerState`` and read, wait and clean up through it. Each method is one
function of the modules that do the work, bound to the client:

* ``platform.stacks``: what is deployed, its services' tasks, its volumes, the labelled apps;
* ``platform.convergence``: waiting for convergence (fail fast, no fixed window) and
  ``still_running``;
* ``platform.teardown``: waiting for an undeploy, stopping or killing what swarm leaves,
  deleting volumes and secrets.
"""

from __future__ import annotations

from collections.abc import Mapping

import docker

import ccci_tasks.platform.convergence as convergence
import ccci_tasks.platform.stacks as stacks
import ccci_tasks.platform.teardown as teardown
from ccci_tasks.naming import Domain
from ccci_tasks.platform.base import CRASH_LOOP_FAILURES, AppInfo, DeployedState, VolumeInfo
from ccci_tasks.platform.convergence import Readiness

__all__ = ["CRASH_LOOP_FAILURES", "DockerState"]


class DockerState:
    """Read-mostly view of the stacks on one Docker engine.

    ``hasten_stops``: while waiting for convergence, stop the containers of replaced tasks
    at once instead of after swarm's 2 s load-balancer delay (``platform.convergence``).
    """

    def __init__(self, client: docker.DockerClient, *, hasten_stops: bool = True) -> None:
        self.client = client
        self.hasten_stops = hasten_stops

    # --- observation ------------------------------------------------------------------

    def deployed(self, domain: Domain) -> DeployedState:
        """What is deployed for ``domain`` now (no services: not deployed)."""
        return stacks.observe(self.client, domain)[0]

    def volumes(self, domain: Domain) -> list[VolumeInfo]:
        """The named volumes of ``domain``'s stack (they survive undeploy)."""
        return stacks.volumes(self.client, domain)

    def labelled_apps(self) -> list[AppInfo]:
        """Apps whose services or volumes carry ``ccci.kind`` (sorted by domain)."""
        return stacks.labelled_apps(self.client)

    # --- waiting ----------------------------------------------------------------------

    def wait_converged(
        self, domain: Domain, timeout_s: float, *, ready: Readiness | None = None,
        probed: frozenset[str] = frozenset(),
        observe_every_s: float = convergence.OBSERVE_EVERY_S,
    ) -> DeployedState:
        """See ``convergence.wait_converged``."""
        return convergence.wait_converged(
            self.client, domain, timeout_s, ready=ready, probed=probed,
            observe_every_s=observe_every_s, hasten_stops=self.hasten_stops)

    def still_running(self, domain: Domain, since: DeployedState) -> None:
        """Raise ``DeployFailed`` when a task running in ``since`` died or was replaced."""
        convergence.still_running(self.client, domain, since)

    def wait_undeployed(self, domain: Domain, timeout_s: float,
                        poll_s: float = teardown.UNDEPLOY_POLL_S) -> None:
        """Wait until the stack's services and their containers are gone (volumes free)."""
        teardown.wait_undeployed(self.client, domain, timeout_s, poll_s)

    # --- removal ----------------------------------------------------------------------

    def stop_orphan_containers(self, domain: Domain, stop_timeout_s: int | None = None,
                               graces: Mapping[str, float] | None = None) -> list[str]:
        """See ``teardown.stop_orphan_containers``."""
        return teardown.stop_orphan_containers(self.client, domain, stop_timeout_s, graces)

    def stop_graces(self, domain: Domain) -> dict[str, float]:
        """The stop grace period of each service of the stack (full service names)."""
        return teardown.stop_graces(self.client, domain)

    def running_containers(self, domain: Domain) -> list[tuple[str, str, tuple[str, ...]]]:
        """(container id, full service name, named volumes mounted) of every running
        container of the stack."""
        return teardown.running_containers(self.client, domain)

    def kill_containers(self, domain: Domain) -> list[str]:
        """See ``teardown.kill_containers``."""
        return teardown.kill_containers(self.client, domain)

    def remove_volumes(self, domain: Domain,
                       timeout_s: float = teardown.REMOVE_VOLUME_TIMEOUT_S) -> list[str]:
        """Delete the stack's volumes (retrying while a dying container holds one)."""
        return teardown.remove_volumes(self.client, domain, timeout_s)

    def remove_secrets(self, domain: Domain) -> list[str]:
        """Delete the secrets of the stack (namespace label) or labelled for ``domain``."""
        return teardown.remove_secrets(self.client, domain)
