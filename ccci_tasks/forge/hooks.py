"""The run lifecycle hooks: commit statuses and the finish notification of every run.

``run_queued(settings, report)`` is called once when a run is queued, ``run_finished(settings,
report)`` once when its verdict is set. They only write messages into the durable outbox
(``forge.outbox``) and ask the alerts queue to deliver them; the relay does the network.
They never raise: a problem is logged and the run goes on.

* Commit statuses: only when the forge is configured (CCCI_FORGE_URL, _TOKEN, _OWNER), for a
  run of a lane that reports to pull requests (``Lane.pull_requests``: quick, cold) whose
  ref resolves to a commit of its recipe's catalogue repository (a branch is resolved to its
  sha once, when queued). ``pending`` when queued, then one of ``success``/``failure``/
  ``error`` on ``<owner>/<recipe>`` at that sha, under the context the lane declares
  (``ccci/<lane>``).
  Every status carries ``target_url``, the run's page (``<CCCI_PUBLIC_URL>/runs/<run_id>``).
* The verdict comment: a run started from a PR (``remember_pull``, by the trigger) that ends
  ``fail`` or ``error`` leaves one comment on that PR: verdict, failing step, the last 40
  lines of its output, the link (outbox key ``<run_id>-verdict``, so exactly once).
* The finish notification: only when CCCI_NOTIFY_URLS is set, for every finished run.

Both hooks are idempotent (outbox keys ``<run_id>-pending``, ``-final``, ``-verdict``,
``-notify``), so
calling them again is harmless. A queued run is remembered in ``<state>/forge/watch/`` until
its final status is written: ``sweep_watched`` (beat) calls ``run_finished`` for a watched
run that has a verdict, should the hook call itself have been lost with a worker.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BeforeValidator

import ccci_tasks.forge.messages as messages
import ccci_tasks.forge.outbox as outbox
from ccci_tasks import redact
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError, StateError
from ccci_tasks.forge.client import forge_configured, validate_name
from ccci_tasks.forge.outbox import forge_dir
from ccci_tasks.forge.relay import FORGE
from ccci_tasks.lanes.registry import status_context
from ccci_tasks.naming import Recipe, RunId
from ccci_tasks.outbox import publish
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.state import outputs, records, reports
from ccci_tasks.state.reports import RunReport, failing_step

log = logging.getLogger(__name__)

WATCH_DIR: Final = "watch"
PULLS_DIR: Final = "pulls"
RED_VERDICTS: Final = ("fail", "error")
WATCH_MAX_AGE_S: Final = 14 * 24 * 3600  # a watched run without a report this old is dropped


class StatusTarget(records.Record):
    """Where a run's statuses go: ``<owner>/<repo>`` at ``sha``, under ``context``."""

    owner: str
    repo: str
    sha: str
    context: str

    @property
    def stream(self) -> str:
        return f"status:{self.owner}/{self.repo}@{self.sha}"


class Watched(records.Record):
    """``forge/watch/<run_id>.json``: a queued run whose verdict is still to be told."""

    run_id: RunId
    target: StatusTarget | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)  # no target: no key


class PullRef(records.Record):
    """``forge/pulls/<run_id>.json``: the pull request a run was started from."""

    owner: Annotated[str, BeforeValidator(partial(validate_name, "owner"))]
    repo: Annotated[str, BeforeValidator(partial(validate_name, "repository"))]
    number: int

    @property
    def stream(self) -> str:
        return f"comment:{self.owner}/{self.repo}#{self.number}"


def catalogue_repo(settings: Settings, recipe: Recipe) -> RecipeRepo | None:
    """The recipe's repository in CCCI_RECIPES_DIR, or None when there is none."""
    path = settings.recipes_dir / recipe
    if not (path / ".git").exists():
        return None
    return RecipeRepo(path, recipe)


def status_target(settings: Settings, report: RunReport) -> StatusTarget | None:
    """Where ``report``'s statuses go, or None when it gets none (see the module doc)."""
    if not forge_configured(settings) or status_context(report.lane) is None:
        return None
    if report.recipe is None or report.ref is None:
        return None
    watched = _watch_read(settings.state_dir, report.run_id)
    if watched is not None and watched.target is not None:
        return watched.target.model_copy(update={"context": messages.context(report.lane)})
    repo = catalogue_repo(settings, report.recipe)
    if repo is None:
        return None
    try:
        sha = repo.commit(report.ref)
    except CcciError as exc:
        log.info("run %s gets no commit status: %s", report.run_id, exc)
        return None
    assert settings.forge_owner is not None
    return StatusTarget(owner=settings.forge_owner, repo=report.recipe, sha=sha,
                        context=messages.context(report.lane))


# --- the watch list -------------------------------------------------------------------


def _watch_dir(state_dir: Path) -> Path:
    return forge_dir(state_dir) / WATCH_DIR


def _watch_path(state_dir: Path, run_id: RunId) -> Path:
    return _watch_dir(state_dir) / f"{run_id}.json"


def _watch_read(state_dir: Path, run_id: RunId) -> Watched | None:
    try:
        return records.read(_watch_path(state_dir, run_id), Watched, what="watched run")
    except StateError:
        return None


def watched(state_dir: Path) -> list[str]:
    """Run ids queued with a status or a notification still to come."""
    directory = _watch_dir(state_dir)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if not p.name.startswith("."))


# --- the pull request of a run ---------------------------------------------------------


def _pull_path(state_dir: Path, run_id: RunId) -> Path:
    return forge_dir(state_dir) / PULLS_DIR / f"{run_id}.json"


def remember_pull(state_dir: Path, run_id: RunId, owner: str, repo: str, number: int) -> None:
    """Record that run ``run_id`` runs for PR ``owner/repo#number`` (before it is enqueued)."""
    records.write(_pull_path(state_dir, run_id), PullRef(owner=owner, repo=repo, number=number))


def pull_of(state_dir: Path, run_id: RunId) -> PullRef | None:
    try:
        return records.read(_pull_path(state_dir, run_id), PullRef, what="pull request of a run")
    except StateError:
        return None


def verdict_comment_body(settings: Settings, report: RunReport) -> str:
    """The red run's comment: its failing step and the end of that step's kept output."""
    index = failing_step(report)
    step = report.steps[index] if index is not None else None
    tail = ""
    if step is not None:
        text = outputs.read(settings.state_dir, report.run_id, step) or step.detail
        tail = "\n".join(text.rstrip("\n").splitlines()[-messages.FAILURE_TAIL_LINES:])
    body = messages.verdict_comment(report, step.name if step else None, tail,
                                    settings.run_url(report.run_id))
    return redact.for_settings(settings).text(body)


# --- hooks ----------------------------------------------------------------------------


def _queued(settings: Settings, report: RunReport) -> list[str]:
    state = settings.state_dir
    final_key = f"{report.run_id}-final"
    if outbox.known(state, final_key):
        return []  # finished already: a late pending would overwrite the verdict
    target = status_target(settings, report)
    if target is None and not settings.notify_url_list():
        return []
    records.write(_watch_path(state, report.run_id), Watched(run_id=report.run_id, target=target))
    if target is None:
        return []
    outbox.put(state, f"{report.run_id}-pending", "status", target.stream, {
        **target.to_json(), "state": "pending",
        "description": messages.pending_description(report), "run_id": report.run_id,
        "target_url": settings.run_url(report.run_id),
    })
    return [target.stream]


def _finished(settings: Settings, report: RunReport) -> list[str]:
    if not report.finished:
        log.warning("run_finished called for run %s without a verdict; ignored", report.run_id)
        return []
    state = settings.state_dir
    streams: list[str] = []
    target = status_target(settings, report)
    secrets = redact.for_settings(settings)
    if target is not None:
        outbox.put(state, f"{report.run_id}-final", "status", target.stream, {
            **target.to_json(), "state": messages.final_state(report),
            "description": secrets.text(messages.final_description(report)),
            "run_id": report.run_id, "target_url": settings.run_url(report.run_id),
        })
        streams.append(target.stream)
    pull = pull_of(state, report.run_id)
    if pull is not None and report.verdict in RED_VERDICTS:
        outbox.put(state, f"{report.run_id}-verdict", "comment", pull.stream, {
            "owner": pull.owner, "repo": pull.repo, "number": pull.number,
            "body": verdict_comment_body(settings, report), "run_id": report.run_id,
        })
        streams.append(pull.stream)
    if settings.notify_url_list():
        title, body = messages.notification(report)
        stream = f"notify:{report.run_id}"
        outbox.put(state, f"{report.run_id}-notify", "notify", stream,
                   {"title": secrets.text(title), "body": secrets.text(body),
                    "run_id": report.run_id})
        streams.append(stream)
    _watch_path(state, report.run_id).unlink(missing_ok=True)
    _pull_path(state, report.run_id).unlink(missing_ok=True)
    return streams


def run_queued(settings: Settings, report: RunReport) -> None:
    """A run was queued: its commit gets ``pending``. Never raises."""
    try:
        publish(FORGE, _queued(settings, report))
    except Exception:
        log.exception("forge: could not record the queued status of run %s",
                      getattr(report, "run_id", "?"))


def run_finished(settings: Settings, report: RunReport) -> None:
    """A run has its verdict: its commit gets it, the targets are told. Never raises."""
    try:
        publish(FORGE, _finished(settings, report))
    except Exception:
        log.exception("forge: could not record the verdict of run %s",
                      getattr(report, "run_id", "?"))


def sweep_watched(settings: Settings) -> list[str]:
    """Call ``run_finished`` for every watched run that has a verdict; return their ids."""
    done: list[str] = []
    for name in watched(settings.state_dir):
        try:
            run_id = RunId(name)  # a file name
            report = reports.at(settings).load(run_id)
        except Exception as exc:
            log.warning("watched run %s: %s", name, exc)
            continue
        if report is None:
            path = _watch_path(settings.state_dir, run_id)
            if _older_than(path, WATCH_MAX_AGE_S):
                path.unlink(missing_ok=True)
            continue
        if report.finished:
            run_finished(settings, report)
            done.append(run_id)
    return done


def _older_than(path: Path, age_s: float) -> bool:
    try:
        return path.stat().st_mtime < time.time() - age_s
    except FileNotFoundError:
        return False
