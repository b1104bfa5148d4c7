"""Fencing: a step acts only while its run holds its lease with the step's token.

``Fence.check`` renews the lease (the run's fencing token must still be the current one)
before every platform mutation and raises ``LeaseLost`` otherwise, so a step that was stopped
past its lease (SIGSTOP, a long GC pause, a flushed broker) acts no more once it resumes: the
janitor owns the cleanup. ``FencedPlatform`` puts the check in front of every mutating
``Platform`` call. Every checked action is appended to the run's journal
(``<state>/runs/<run_id>.calls``: one JSON line per attempt, allowed or refused), so an
operator can see what a run did to the engine and when.

A check is not a guard on the act: a step can stop right after it. So a step also records
itself as the run's holder (``stonith``), and before anything hands a dead run's resources
to another run its processes are killed (``reap_stale``: the janitor each round, and a run
that ``take_over``s an intent record left by another). ``check`` is where the
``before-engine-change`` failpoint fires: right after it passed, right before the change.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ccci_tasks import failpoints, stonith
from ccci_tasks.errors import BrokerError, LeaseLost, StateError
from ccci_tasks.naming import Domain, Recipe, Ref, RunHex, RunId
from ccci_tasks.platform.base import (
    AppInfo,
    DeployedState,
    EngineObjects,
    Kind,
    Platform,
    StopReport,
    VolumeInfo,
)
from ccci_tasks.state import intents
from ccci_tasks.state.clock import iso, utc_now

if TYPE_CHECKING:
    from ccci_tasks.admission import Slots
    from ccci_tasks.config import Settings

log = logging.getLogger(__name__)


def journal_path(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / "runs" / f"{run_id}.calls"


class Fence:
    """The run's lease as seen by one step: ``renew``, ``check`` before acting."""

    def __init__(self, slots: Slots, run_id: RunId, token: int, journal: Path | None) -> None:
        self.slots = slots
        self.run_id = run_id
        self.token = token
        self._journal = journal
        self._lock = threading.Lock()

    def renew(self) -> bool:
        """True while the run holds its lease with this token (and extends it)."""
        try:
            return self.slots.renew(self.run_id, self.token)
        except BrokerError as exc:
            log.warning("run %s: cannot renew its lease: %s", self.run_id, exc)
            return False

    @property
    def owner(self) -> intents.Owner:
        """Who this step is, for the intent records it writes."""
        return intents.Owner(self.run_id, self.token)

    def check(self, doing: str) -> None:
        """Raise ``LeaseLost`` unless the run still holds its lease; journal the attempt.
        Every change to the engine, a volume, a snapshot, a registry or an intent record
        comes right after one of these."""
        allowed = self.renew()
        self._write(doing, allowed)
        if not allowed:
            raise LeaseLost(
                f"run {self.run_id} no longer holds its lease (token {self.token}): refusing "
                f"to {doing}; the janitor cleans up after it"
            )
        failpoints.fire("before-engine-change")

    def _write(self, doing: str, allowed: bool) -> None:
        if self._journal is None:
            return
        line = json.dumps({"ts": iso(utc_now()), "op": doing, "allowed": allowed})
        try:
            with self._lock, open(self._journal, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            log.warning("run %s: cannot write its journal: %s", self.run_id, exc)


def live_owners(slots: Slots) -> set[tuple[str, int]]:
    """(run id, token) of every run that holds a live lease now."""
    return {(lease.run_id, lease.spec.token) for lease in slots.occupying()
            if lease.state == "live" and lease.spec is not None}


def reap_stale(settings: Settings, slots: Slots) -> stonith.Killed:
    """Kill every process of this node that acts for a run without a live lease, and wait
    until they are gone (``stonith.kill_stale``)."""
    return stonith.kill_stale(settings.state_dir, settings.node, lambda: live_owners(slots))


def take_over(settings: Settings, slots: Slots, intent: intents.Intent) -> None:
    """A run that holds a resource finds an intent record another run left: that run must
    hold no live lease, and its processes on this node are killed first. Raises otherwise
    (``IntentOwned``, or ``StateError`` when a process will not die)."""
    if (intent.run_id, intent.token) in live_owners(slots):
        raise intents.IntentOwned(
            f"the intent record of {intent.resource} belongs to run {intent.run_id} (token "
            f"{intent.token}), which still holds its lease; refusing to take it over"
        )
    killed = reap_stale(settings, slots)
    if intent.run_id in killed.stuck_runs:
        raise StateError("; ".join(killed.problems))


class FencedPlatform:
    """A ``Platform`` whose mutations (new_app, deploy, undeploy, remove) check the fence."""

    def __init__(self, inner: Platform, fence: Fence) -> None:
        self.inner = inner
        self.fence = fence

    def new_app(
        self, recipe: Recipe, domain: Domain, version: str | None = None, *, kind: Kind,
        run: RunHex | None,
    ) -> AppInfo:
        self.fence.check(f"create app {domain}")
        return self.inner.new_app(recipe, domain, version, kind=kind, run=run)

    def deploy(
        self, domain: Domain, version: str | None = None, chaos_ref: Ref | None = None
    ) -> DeployedState:
        what = f"commit {chaos_ref}" if chaos_ref else f"version {version or 'latest'}"
        self.fence.check(f"deploy {what} of {domain}")
        return self.inner.deploy(domain, version, chaos_ref)

    def undeploy(self, domain: Domain, *, graceful: bool = True) -> StopReport:
        self.fence.check(f"undeploy {domain}" + ("" if graceful else " (no graceful stop)"))
        return self.inner.undeploy(domain, graceful=graceful)

    def remove(self, domain: Domain) -> None:
        self.fence.check(f"remove {domain} with its volumes")
        self.inner.remove(domain)

    def volumes(self, domain: Domain) -> list[VolumeInfo]:
        return self.inner.volumes(domain)

    def deployed(self, domain: Domain) -> DeployedState:
        return self.inner.deployed(domain)

    def has_config(self, domain: Domain) -> bool:
        return self.inner.has_config(domain)

    def live_apps(self) -> list[AppInfo]:
        return self.inner.live_apps()

    def wait_converged(self, domain: Domain, timeout_s: float) -> DeployedState:
        return self.inner.wait_converged(domain, timeout_s)

    def still_running(self, domain: Domain, since: DeployedState) -> None:
        self.inner.still_running(domain, since)

    def base_url(self, domain: Domain) -> str:
        return self.inner.base_url(domain)

    def service_logs(self, domain: Domain, tail: int) -> dict[str, str]:
        return self.inner.service_logs(domain, tail)

    def secret_values(self, domain: Domain) -> list[str]:
        return self.inner.secret_values(domain)

    def engine_objects(self) -> EngineObjects:
        return self.inner.engine_objects()

    def remove_stopped_container(self, container_id: str) -> str | None:
        self.fence.check(f"remove stopped container {container_id[:12]}")
        return self.inner.remove_stopped_container(container_id)

    def remove_dangling_image(self, image_id: str) -> str | None:
        self.fence.check(f"remove dangling image {image_id[:19]}")
        return self.inner.remove_dangling_image(image_id)

    def prune_build_cache(self, min_age_h: float) -> tuple[int, str | None]:
        self.fence.check(f"prune build cache unused for {min_age_h:g} h")
        return self.inner.prune_build_cache(min_age_h)

    def close(self) -> None:
        self.inner.close()
