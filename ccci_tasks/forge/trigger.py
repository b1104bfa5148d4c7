"""Acting on a ``!testme`` trigger (the alerts worker runs this, not the webhook).

``act`` asks the forge whether the commenter has write access (no: a polite reply, nothing
runs), reads the PR head, fetches ``refs/pull/<n>/head`` of the base repository into the
recipe catalogue (with the forge token: the repository may be private), checks it is the
head sha the forge reported, enqueues the run at that full sha under the run id the webhook
chose, and replies with that run id. Replies go through the outbox, so they reach the PR even
after a forge outage. A token that cannot see the repository (the forge's 404) is an error
with an alert for the operator, not a refusal: nothing can be said on the PR then.

Redelivery-safe: the run is published only if ``KEY_FORGE_ENQUEUED + run_id`` was not set yet
(SET NX right before publishing), and the replies have fixed outbox keys. A crash between
that SET and the publish loses the run (the maintainer comments again); it never runs twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import redis

import ccci_tasks.forge.messages as messages
import ccci_tasks.forge.outbox as outbox
from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, BrokerError, ForgeAccessError, InvalidInput
from ccci_tasks.forge.client import ForgeClient, validate_name, validate_sha
from ccci_tasks.forge.hooks import catalogue_repo, remember_pull
from ccci_tasks.lanes.registry import LANES, status_context
from ccci_tasks.naming import Recipe, RunId
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform.recipes import HttpToken, validate_fetch_url

log = logging.getLogger(__name__)

ENQUEUED_TTL_S: Final = 30 * 24 * 3600
Outcome = Literal["enqueued", "refused", "closed", "failed", "error"]
ACCESS_ALERT: Final = "forge-access"
# (lane, recipe, sha, run_id) -> None: publish the run's entry task.
Enqueue = Callable[[str, str, str, str], None]


@dataclass(frozen=True)
class TriggerRequest:
    """What the webhook hands the alerts worker: a checked trigger and its run id."""

    run_id: RunId
    owner: str
    recipe: Recipe
    number: int
    lane: str  # a lane that reports to pull requests (``Lane.pull_requests``)
    user: str
    delivery: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", RunId(self.run_id))  # parsed from the JSON
        validate_name("owner", self.owner)
        object.__setattr__(self, "recipe", Recipe(self.recipe))
        validate_name("user", self.user)
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1:
            raise InvalidInput(f"pull request number {self.number!r} is invalid")
        if not isinstance(self.lane, str) or status_context(self.lane) is None:
            known = " or ".join(sorted(n for n in LANES if status_context(n) is not None))
            raise InvalidInput(f"lane {self.lane!r} is invalid: {known}")
        if not isinstance(self.delivery, str) or not 0 < len(self.delivery) <= 200:
            raise InvalidInput("delivery id must be a short string")

    @classmethod
    def new(cls, owner: str, recipe: str, number: int, lane: str,
            user: str, delivery: str) -> TriggerRequest:
        return cls(RunId(str(uuid.uuid4())), owner, Recipe(recipe), number, lane, user,
                   delivery)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TriggerRequest:
        if not isinstance(data, dict):
            raise InvalidInput(f"trigger request must be an object, got {type(data).__name__}")
        try:
            return cls(**{key: data[key] for key in cls.__dataclass_fields__})
        except KeyError as exc:
            raise InvalidInput(f"trigger request lacks {exc}") from exc

    @property
    def comment_stream(self) -> str:
        return f"comment:{self.owner}/{self.recipe}#{self.number}"


@dataclass(frozen=True)
class TriggerResult:
    outcome: Outcome
    detail: str
    sha: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reply(settings: Settings, request: TriggerRequest, what: str, body: str) -> str | None:
    """Queue a PR comment (key ``<run_id>-<what>``); return its stream, None if known."""
    item = outbox.put(settings.state_dir, f"{request.run_id}-{what}", "comment",
                      request.comment_stream, {"owner": request.owner, "repo": request.recipe,
                                               "number": request.number, "body": body})
    return item.stream if item else None


def _publish_once(client: redis.Redis, request: TriggerRequest, sha: str,
                  enqueue: Enqueue) -> bool:
    try:
        first = bool(client.set(c.KEY_FORGE_ENQUEUED + request.run_id, sha, nx=True,
                                ex=ENQUEUED_TTL_S))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot record the enqueue of run {request.run_id}: {exc}") from exc
    if first:
        enqueue(request.lane, request.recipe, sha, request.run_id)
    return first


def act(
    settings: Settings,
    request: TriggerRequest,
    forge: ForgeClient,
    client: redis.Redis,
    enqueue: Enqueue,
) -> TriggerResult:
    """Check, fetch, enqueue, reply. ``ForgeError``/``PlatformError`` are worth a retry."""
    try:
        may_write = forge.has_write(request.owner, request.recipe, request.user)
    except ForgeAccessError as exc:
        return no_access(settings, request, str(exc))
    if not may_write:
        reply(settings, request, "refused",
              messages.refused_comment(request.user, request.owner, request.recipe))
        return TriggerResult("refused", f"{request.user} has no write access")
    pull = forge.pull(request.owner, request.recipe, request.number)
    if pull.state != "open":
        reply(settings, request, "closed", messages.closed_comment(request.number))
        return TriggerResult("closed", f"pull request #{request.number} is {pull.state}")
    try:
        sha = validate_sha(pull.head_sha)
        url = validate_fetch_url(pull.base_clone_url)
        auth = fetch_token(settings)
    except InvalidInput as exc:
        return failed(settings, request, f"the forge reported an unusable PR head: {exc}")
    repo = catalogue_repo(settings, request.recipe)
    if repo is None:
        return failed(settings, request, f"recipe {request.recipe} left the recipe catalogue")
    try:
        repo.fetch(url, pull.head_git_ref, pull.head_git_ref, sha, auth=auth)
    except (InvalidInput, AppNotFound) as exc:
        return failed(settings, request, f"cannot fetch the PR head: {exc}")
    # PlatformError (git failed, timed out, the branch moved): the caller retries.
    remember_pull(settings.state_dir, request.run_id, request.owner, request.recipe,
                  request.number)  # before the run exists: its verdict comment needs it
    _publish_once(client, request, sha, enqueue)
    reply(settings, request, "queued",
          messages.queued_comment(request.lane, request.recipe, sha, request.run_id))
    log.info("PR %s/%s#%d: %s run %s queued at %s for %s", request.owner, request.recipe,
             request.number, request.lane, request.run_id, sha, request.user)
    return TriggerResult("enqueued", f"{request.lane} run {request.run_id}", sha)


def fetch_token(settings: Settings) -> HttpToken | None:
    """The forge token, for git URLs under CCCI_FORGE_URL only (None without one)."""
    if settings.forge_url is None or settings.forge_token is None:
        return None
    return HttpToken(settings.forge_url.rstrip("/") + "/", settings.forge_token)


def no_access(settings: Settings, request: TriggerRequest, why: str) -> TriggerResult:
    """The token cannot see the repository: an alert for the operator, no run, no reply
    (the PR cannot be reached with this token either)."""
    log.error("PR %s/%s#%d: %s run not started: %s", request.owner, request.recipe,
              request.number, request.lane, why)
    write_alert(settings.state_dir, ACCESS_ALERT, request.recipe,
                f"the forge token cannot see {request.owner}/{request.recipe}: '!testme' by "
                f"{request.user} on #{request.number} started nothing", why)
    return TriggerResult("error", why)


def failed(settings: Settings, request: TriggerRequest, why: str) -> TriggerResult:
    """Give up on a trigger: tell the PR why (through the outbox)."""
    log.warning("PR %s/%s#%d: %s run not started: %s", request.owner, request.recipe,
                request.number, request.lane, why)
    reply(settings, request, "failed", messages.failed_comment(request.lane, why))
    return TriggerResult("failed", why)


__all__ = ["Enqueue", "TriggerRequest", "TriggerResult", "act", "failed", "fetch_token",
           "no_access", "reply"]
