"""The ``Platform`` protocol: the only seam through which lanes touch Docker or abra.

Two implementations: ``swarm.SwarmPlatform`` (docker SDK + ``docker stack deploy``; the
default for development and the test suite) and ``abra.AbraPlatform`` (production).
Observed state comes back as plain frozen dataclasses, so decisions about it are pure code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from ccci_tasks.errors import InvalidInput, UncleanStop
from ccci_tasks.naming import Domain, Recipe, Ref, RunHex

Kind = Literal["cold", "warm", "infra"]

# Failed tasks since a service's deploy (counted by the start-order rule, platform.startorder)
# that make a crash loop: a deploy fails fast at this many, and the disk prune stops waiting.
CRASH_LOOP_FAILURES: Final = 3
# Container states the disk prune may remove (never running, paused or restarting).
STOPPED_STATES: Final = ("exited", "dead", "created")


@dataclass(frozen=True)
class TaskRef:
    """One running task of a service and the container it runs in."""

    task_id: str
    container_id: str | None = None


@dataclass(frozen=True)
class ServiceState:
    """One swarm service of a deployed app, as observed."""

    name: str
    desired: int
    running: int
    image: str
    update_state: str | None = None  # UpdateStatus.State, None when never updated
    last_error: str | None = None  # error of the newest failed/rejected task, if any
    # Tasks failed or rejected since the current deploy that count toward a crash loop:
    # those that failed once every other service of the stack was up (platform.startorder).
    failed_tasks: int = 0
    tasks: tuple[TaskRef, ...] = ()  # the running tasks of the current spec
    start_failures: int = 0  # failed since the deploy while another service was starting
    # Tasks the orchestrator still wants up (desired state ``ready`` or ``running``, whatever
    # their current state); None when not observed. 0 while off the desired state means
    # nothing will start it (e.g. its task exited 0 under an on-failure restart policy).
    wanted: int | None = None

    @property
    def settled(self) -> bool:
        return self.update_state in (None, "", "completed", "rollback_completed")


@dataclass(frozen=True)
class DeployedState:
    """What is deployed for one app; ``services`` is empty when undeployed."""

    domain: Domain
    stack: str
    version: str | None = None  # coop-cloud.<stack>.version label
    chaos_version: str | None = None  # coop-cloud.<stack>.chaos-version label
    services: tuple[ServiceState, ...] = ()

    @property
    def is_deployed(self) -> bool:
        return bool(self.services)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (e.g. to carry the converged state from one step to a later one)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DeployedState:
        """The inverse of ``to_json``; ``InvalidInput`` names what is wrong."""
        try:
            services = tuple(
                ServiceState(
                    **{
                        **svc,
                        "tasks": tuple(TaskRef(**task) for task in svc.get("tasks") or ()),
                    }
                )
                for svc in data.get("services") or ()
            )
            return cls(**{**data, "services": services})
        except (AttributeError, TypeError) as exc:
            raise InvalidInput(
                f"not a DeployedState as DeployedState.to_json() writes it: {exc}; "
                f"got {str(data)[:200]!r}"
            ) from exc


@dataclass(frozen=True)
class ContainerStop:
    """How one container of an app ended when the app was undeployed."""

    service: str
    container_id: str
    grace_s: float  # the service's stop grace period
    exit_code: int | None  # None: its end was not seen
    killed: str | None = None  # why it did not exit by itself (None: it did)
    volumes: tuple[str, ...] = ()  # the named volumes it had mounted

    def describe(self) -> str:
        what = f"service {self.service} (container {self.container_id[:12]})"
        if self.killed is None:
            return f"{what} exited by itself with code {self.exit_code}"
        return (f"{what} did not stop by itself within its stop grace period of "
                f"{self.grace_s:g} s: {self.killed}")


@dataclass(frozen=True)
class StopReport:
    """What an undeploy saw of its containers' ends. A graceful undeploy watches each
    container that ran: did it exit by itself, or did it have to be killed (R12.3)? Only a
    killed container that had a volume mounted makes the data unfit for a snapshot."""

    graceful: bool
    stops: tuple[ContainerStop, ...] = ()
    watched: bool = False  # the engine's events were read for the whole stop

    @property
    def unclean(self) -> tuple[ContainerStop, ...]:
        return tuple(s for s in self.stops if s.killed is not None and s.volumes)

    def require_clean(self, domain: Domain, doing: str) -> None:
        """Raise ``UncleanStop`` unless every container exited by itself (its data is then
        consistent); ``doing`` says what needs that (e.g. "take a snapshot")."""
        if not self.graceful or not self.watched:
            raise UncleanStop(
                f"cannot {doing} of {domain}: its stop was not watched (graceful "
                f"{self.graceful}, engine events read {self.watched}), so nothing says every "
                "container exited by itself")
        if not self.stops:
            raise UncleanStop(
                f"cannot {doing} of {domain}: no container of it was running when it was "
                "stopped, so nothing says how its data was left (a stop cut off and retried?)")
        bad = self.unclean
        if bad:
            raise UncleanStop(
                f"refusing to {doing} of {domain}: "
                + "; ".join(s.describe() for s in bad)
                + "; its data may be inconsistent (as after a crash). Make the service stop "
                "within its stop_grace_period (a database needs its fast-shutdown signal, "
                "e.g. stop_signal: SIGINT for PostgreSQL) or give it a longer one",
                killed=True)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    mountpoint: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AppInfo:
    """An app known to the platform by its ``ccci.*`` labels or its env file."""

    domain: Domain
    stack: str
    recipe: str  # as the labels or the env file name it: may be empty
    kind: Kind
    run: RunHex | None  # 6-hex run id for cold apps
    deployed: bool = False


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class ImageFact:
    id: str
    tags: tuple[str, ...]
    created: datetime
    used: bool  # some container (any state) runs or ran it

    @property
    def dangling(self) -> bool:
        return not self.tags


@dataclass(frozen=True)
class ContainerFact:
    id: str
    state: str  # created | running | paused | restarting | removing | exited | dead
    created: datetime
    finished_at: datetime | None  # None: never finished (or never started)
    image: str  # image id


@dataclass(frozen=True)
class BuildCacheFact:
    id: str
    kind: str  # the record type: regular, internal, frontend, source.local, ...
    created: datetime
    last_used: datetime | None
    size_bytes: int
    in_use: bool
    shared: bool  # its data is shared with an image: removing it frees nothing


@dataclass(frozen=True)
class EngineObjects:
    """Everything on the engine the disk prune (R9.2) decides on."""

    services: tuple[ServiceState, ...]
    images: tuple[ImageFact, ...]
    containers: tuple[ContainerFact, ...]
    build_cache: tuple[BuildCacheFact, ...]
    build_cache_unsupported: str | None  # why this engine cannot prune build cache by age
    service_changed: dict[str, datetime]  # service name -> newest change of its spec or tasks


# --------------------------------------------------------------------------- the protocol


class Platform(Protocol):
    """Operations on apps. ``domain`` is always validated by the caller (naming.py)."""

    def new_app(
        self, recipe: Recipe, domain: Domain, version: str | None = None, *, kind: Kind,
        run: RunHex | None,
    ) -> AppInfo:
        """Create the app's env file (allocating its loopback port). Idempotent."""
        ...

    def deploy(
        self, domain: Domain, version: str | None = None, chaos_ref: Ref | None = None
    ) -> DeployedState:
        """Deploy ``version`` (None: latest tag) or, with ``chaos_ref``, that commit as it is.

        Returns once the deploy was submitted; use ``wait_converged`` to wait for it.
        """
        ...

    def undeploy(self, domain: Domain, *, graceful: bool = True) -> StopReport:
        """Remove the app's services and wait until services and containers are gone.

        Keeps volumes. ``graceful``: every container gets its stop signal and its stop grace
        period, as on any stop (before a snapshot, an in-place upgrade, a reconcile), and the
        report says whether each exited by itself or had to be killed (``require_clean``
        before a snapshot). Not graceful: the containers are killed at once (SIGKILL), for
        data that is thrown away or restored from a snapshot right after.
        """
        ...

    def remove(self, domain: Domain) -> None:
        """Undeploy without a graceful stop, then delete volumes, secrets and the env file."""
        ...

    def volumes(self, domain: Domain) -> list[VolumeInfo]:
        """The app's named volumes (they survive undeploy)."""
        ...

    def has_config(self, domain: Domain) -> bool:
        """Whether the app's env file exists (``new_app`` made it and nothing removed it).

        An app that runs without it (e.g. its state root was wiped) can be neither probed nor
        redeployed as it was.
        """
        ...

    def deployed(self, domain: Domain) -> DeployedState:
        """Observe what is deployed now."""
        ...

    def live_apps(self) -> list[AppInfo]:
        """Every app carrying ccci labels (services or volumes) or having an env file."""
        ...

    def wait_converged(self, domain: Domain, timeout_s: float) -> DeployedState:
        """Wait until every service runs its desired replicas, its update settled, and the app
        is up (swarm platform: its loopback port accepts connections).

        Raises ``DeployFailed`` early when a task is rejected for a missing image or a
        service keeps failing, and ``WaitTimeout`` (naming the last state seen) otherwise.
        The returned state names the running tasks, for ``still_running``.
        """
        ...

    def still_running(self, domain: Domain, since: DeployedState) -> None:
        """Raise ``DeployFailed`` when a task running in ``since`` has died or been replaced.

        ``since`` is what ``wait_converged`` returned. Cheap (one observation); call it right
        before a run is declared green, so an app that died after it started is named (the
        service, its task error and its last log lines) instead of passing.
        """
        ...

    def base_url(self, domain: Domain) -> str:
        """Where HTTP probes go for this app (loopback on the swarm platform)."""
        ...

    def service_logs(self, domain: Domain, tail: int) -> dict[str, str]:
        """The last ``tail`` log lines of every service of the app: ``{service: text}``,
        oldest line first; ``{}`` when nothing is deployed. Reads only."""
        ...

    def secret_values(self, domain: Domain) -> list[str]:
        """The values of the app's generated secrets, so that they can be redacted from
        everything people read (reports, step output, pages); ``[]`` when it has none or
        the platform cannot tell. Never log them."""
        ...

    # --- the engine as a whole: the disk prune (R9.2) --------------------------------

    def engine_objects(self) -> EngineObjects:
        """Every service, image, container and build cache record on the engine the apps
        run on: engine-wide, not one app's (the disk is the host's). Reads only."""
        ...

    def remove_stopped_container(self, container_id: str) -> str | None:
        """Remove a stopped container, never with ``force`` and never its volumes; why it
        was left (gone already, started again since it was observed), or None."""
        ...

    def remove_dangling_image(self, image_id: str) -> str | None:
        """Remove an image only if it is still untagged and no container uses it (checked
        again right before), without ``force`` and without its untagged parents; why it was
        left, or None."""
        ...

    def prune_build_cache(self, min_age_h: float) -> tuple[int, str | None]:
        """Let the engine prune build cache unused for ``min_age_h`` (never ``--all``): the
        bytes it reclaimed, and why nothing was pruned when it cannot."""
        ...

    def close(self) -> None:
        """Let go of the engine connection, if one was opened (the next call reconnects)."""
        ...
