"""The lane model (DESIGN §6): a lane is declared once, as data.

A ``Lane`` says everything that is particular to it: how a request is checked and turned into
a run (``prepare``, at submission, and ``plan``, at admission), the resources the run holds,
its steps in order, its undo (the steps that run after a failure, durably), how a failure maps
to a verdict, and how the janitor cleans up after a run that died (``recover``). The shared
machinery (``runner``: submit, admission, steps, ending; ``janitor``; the Celery tasks; the
CLI; the forge) reads the one registry in ``ccci_tasks.lanes.registry`` and never asks which
lane it has. From outside, a lane is reached through its ``Entry`` (the Celery entry task and,
optionally, its ``ccci`` command) and, when it reports to pull requests, its ``PullRequests``
(the trigger comment and the commit status context). The janitor cleans up what a cut-off
run left on a resource through the lanes' ``orphans``.

A step is a plain function ``(env, ctx) -> str | Outcome``. It raises ``RunFailed`` when the
app under test fails a check and lets other errors through; the lane's ``failure`` turns the
exception into the run's verdict and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ccci_tasks import naming
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Domain, Parsed, Recipe, Ref, RunHex, RunId
from ccci_tasks.state.outputs import StepOutput

if TYPE_CHECKING:
    from ccci_tasks.admission import Resource, RunSpec
    from ccci_tasks.config import Settings
    from ccci_tasks.lanes.fence import Fence
    from ccci_tasks.platform.base import Platform
    from ccci_tasks.platform.recipes import RecipeRepo
    from ccci_tasks.state.meta import RecipeMeta
    from ccci_tasks.state.reports import RunReport

Verdict = Literal["pass", "fail", "error"]
P = TypeVar("P", bound=Parsed)


@dataclass(frozen=True)
class Failure:
    """Why a run failed: the step, the verdict it gets and the reason."""

    step: str
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class RunCtx:
    """Everything a step knows about its run; passed to every step task as a JSON dict."""

    run_id: RunId
    lane: str
    recipe: Recipe  # the recipe under test, or the live-warm app of a reconcile
    ref: Ref | None
    domain: Domain | None  # the app the run works on (cold per-run domain, canonical, ...)
    token: int  # fencing token of the run's lease
    deps: tuple[Recipe, ...] = ()
    plan: Mapping[str, Any] = field(default_factory=dict)  # the lane's own decisions
    failure: Failure | None = None  # set for the undo steps
    parent: RunId | None = None

    def __post_init__(self) -> None:
        # A context read back from a step task's JSON argument is parsed here, once; values
        # that are already typed pass as they are.
        set_ = object.__setattr__
        set_(self, "run_id", RunId(self.run_id))
        set_(self, "recipe", Recipe(self.recipe))
        set_(self, "ref", _maybe(Ref, self.ref))
        set_(self, "domain", _maybe(Domain, self.domain))
        set_(self, "parent", _maybe(RunId, self.parent))
        set_(self, "deps", tuple(Recipe(d) for d in self.deps))

    @property
    def run_hex(self) -> RunHex:
        """The 6-hex id of the run (cold domains, realms)."""
        return self.run_id.hex

    @property
    def realm(self) -> str | None:
        """The per-run Keycloak realm, when the recipe depends on keycloak."""
        if "keycloak" not in self.deps:
            return None
        return naming.realm_name(self.recipe, self.run_hex)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["deps"] = list(self.deps)
        data["plan"] = dict(self.plan)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCtx:
        """A context from a step task's JSON argument (its names are parsed on construction)."""
        try:
            failure = data.get("failure")
            return cls(**{
                **data,
                "deps": tuple(data.get("deps", ())),
                "plan": dict(data.get("plan") or {}),
                "failure": Failure(**failure) if failure else None,
            })
        except TypeError as exc:
            raise InvalidInput(f"run context {dict(data)!r:.300} is invalid: {exc}") from exc

    def with_failure(self, failure: Failure) -> RunCtx:
        return RunCtx(**{**self.__dict__, "failure": failure})


def run_hex(run_id: str) -> RunHex:
    """The 6-hex id of a run, taken from its Celery task id (a uuid; a ``RunId`` as it is,
    a task id as Celery gives it is parsed)."""
    return RunId(run_id).hex


def _maybe(kind: type[P], value: object) -> P | None:
    return None if value is None else kind(value)


@dataclass(frozen=True)
class Outcome:
    """What a step may return instead of a plain detail: the run's verdict, when it is the
    run's last step and the verdict is not simply ``pass``."""

    detail: str
    verdict: Verdict = "pass"
    reason: str | None = None


@dataclass(frozen=True)
class Park:
    """What a step returns when its run must wait for its child runs: the run gives up its
    lease and resources and is continued (re-admitted, its remaining steps planned again)
    once its lane says it is ``ready``."""

    detail: str


class RunSkipped(Exception):
    """Raised by a lane's ``prepare``: the run is not needed (e.g. a sweep already in
    flight); it ends at once, verdict ``pass``, reason ``skipped: ...``."""


@dataclass(frozen=True)
class Submitted:
    """What ``submit`` says: queued (``verdict`` None), or ended at the door (refused or
    skipped, with its verdict and reason)."""

    run_id: str
    lane: str
    verdict: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        state = "refused" if self.verdict else "queued"
        return {"run_id": self.run_id, "lane": self.lane, "state": state,
                "verdict": self.verdict, "reason": self.reason}


# (run_id, lane, request, parent run id) -> Submitted: queue a child run (a sweep's runs).
SubmitFn = Callable[[RunId, str, Mapping[str, Any], "RunId | None"], Submitted]


@dataclass(frozen=True)
class StepEnv:
    """What a step acts through. ``platform`` is fenced: every mutation checks the lease.
    ``output`` takes what the step wants kept as its output (e.g. an overlay's pytest run)."""

    settings: Settings
    platform: Platform
    fence: Fence
    meta: RecipeMeta
    repo: RecipeRepo | None
    output: StepOutput = field(default_factory=StepOutput)
    submit: SubmitFn | None = None  # the runner's submit, for steps that start child runs


StepFn = Callable[[StepEnv, RunCtx], "str | Outcome | Park"]


@dataclass(frozen=True)
class Submission:
    """A request checked at submission: what to queue. ``lane`` may differ from the one
    asked for (a quick run without a usable canonical falls back to a cold run)."""

    lane: str
    recipe: Recipe
    ref: Ref | None
    resources: tuple[Resource, ...]
    domain: Domain | None
    note: str | None = None
    pin: str | None = None  # the node it must run on (lanes/placement.py); None: any


def _checks_nothing(settings: Settings, request: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Argument:
    """One argument of a lane's ``ccci`` command: it fills the parameter ``param`` of the
    lane's ``Entry.request``; positional unless ``option`` (e.g. ``--ref``) is given."""

    param: str
    option: str | None = None
    metavar: str | None = None
    help: str | None = None


@dataclass(frozen=True)
class Command:
    """The lane's ``ccci <name> ... [--wait] [--timeout S] [--json]`` command. ``check``
    refuses a bad request before anything is enqueued (``InvalidInput``: exit 2)."""

    name: str
    help: str
    arguments: tuple[Argument, ...] = ()
    timeout_s: float = 3600.0
    check: Callable[[Settings, Mapping[str, Any]], None] = _checks_nothing


@dataclass(frozen=True)
class Entry:
    """How a run of the lane is asked for: the Celery entry task ``ccci.<queue>.<task>``.
    ``request`` is a plain function whose parameters are the task's (and whose docstring is
    its help); it turns them into the lane's request for ``prepare``. The task queues the
    run and returns at once; its AsyncResult id is the run id."""

    task: str
    queue: str
    request: Callable[..., Mapping[str, Any]]
    command: Command | None = None


@dataclass(frozen=True)
class PullRequests:
    """The lane reports to pull requests: the PR comment that starts it (exactly this text),
    the commit status context of its verdict, and the lane a run may become at submission
    (its statuses then go under that lane's context)."""

    trigger: str
    context: str
    falls_back_to: str | None = None


# The janitor's clean-up of a resource a cut-off run left (no run holds it any more): given
# the resource's name (a recipe, an app), returns what was done. Must be idempotent.
OrphanFn = Callable[["Settings", "Platform", Recipe], list[str]]


def _explains_nothing(settings: Settings, report: RunReport) -> bool:
    return False


def _always_ready(settings: Settings, run_id: RunId) -> bool:
    return True


def _ignore_child(settings: Settings, parent_id: RunId, child: RunReport) -> None:
    return None


@dataclass(frozen=True)
class Lane:
    """One lane, declared once. See the module docstring."""

    name: str
    queue: str
    # At submission: check the request (recipe, ref, ...) and say what to queue. Raises
    # InvalidInput/ConfigError/StateError (the run is refused, nothing is queued).
    prepare: Callable[[Settings, RunId, Mapping[str, Any]], Submission]
    # At admission: the run's plan from what is observed now.
    plan: Callable[[Settings, RunSpec], RunCtx]
    steps: Callable[[RunCtx], tuple[str, ...]]
    # After a failure: the undo steps, in order (each is attempted; none may be skipped).
    undo: Callable[[RunCtx, Failure], tuple[str, ...]]
    functions: Mapping[str, StepFn]
    # The verdict and reason of a failed step.
    failure: Callable[[RunCtx, str, BaseException], Failure]
    # The janitor, after the run died (lease expired) or was forgotten: clean up what it
    # left; returns what was done. Must be idempotent.
    recover: Callable[[Settings, Platform, RunSpec], list[str]]
    # True when something other than a lease, a queue entry or a live app keeps an
    # unfinished run alive (a sweep waiting for its runs).
    explains: Callable[[Settings, RunReport], bool] = _explains_nothing
    needs_repo: bool = True  # steps get the recipe's repository
    # A parked run (see ``Park``): may it go on now? And: one of its child runs ended.
    ready: Callable[[Settings, RunId], bool] = _always_ready
    on_child: Callable[[Settings, RunId, RunReport], None] = _ignore_child
    # The reason of a green run (default: the last step's detail).
    summary: Callable[[RunCtx, str], str] | None = None
    # How the lane is asked for from outside (none: only started by another run).
    entry: Entry | None = None
    # Whether, and how, the lane reports to pull requests.
    pull_requests: PullRequests | None = None
    # Per resource kind (``Resource.kind``): the janitor's clean-up of such a resource that a
    # run of this lane left when cut off (an intent record, a deployed canonical).
    orphans: Mapping[str, OrphanFn] = field(default_factory=dict)

    def function(self, step: str) -> StepFn:
        try:
            return self.functions[step]
        except KeyError:
            raise InvalidInput(f"lane {self.name} has no step {step!r}") from None
