"""The forge end to end: a PR comment on the Gitea stand-in, the bridge process, real
workers, Redis and swarm, the run at the PR head, and its commit statuses on the forge.

The module seeds the custom-html canonical once (a cold run on latest), starts the bridge
(``python -m workers.bridge``), makes recipes/custom-html a private repository (the workers fetch
with the forge token) and opens PR 7 from a contributor's fork and PR 9 with the AGit flow
(no branch anywhere: its head lives only in the base repository's refs/pull/9/head), whose
heads change the served content. Until the run lifecycle calls ``run_finished``
itself, the tests fire ``forge_sweep`` (what beat does every 60 s) after a verdict.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import (
    BRIDGE_PORT,
    FORGE_BOT,
    FORGE_OWNER,
    TEST_ENV,
    Workers,
    flush_redis,
    remove_ccci_objects,
)
from fake_forge import FakeForge
from push_receiver import PushReceiver
from recipe_commits import make_commit
from web_support import bridge_process

from ccci_tasks.naming import Recipe
from ccci_tasks.state.reports import RunReport

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = Recipe("custom-html")
RUN_TIMEOUT_S = 300
WAIT_S = 90
MAINTAINER, VISITOR = "maintainer", "visitor"
ACCEPTED = re.compile(r"accepted: (quick|cold) run ([0-9a-f-]{36}) ")


def _state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


def _wait_run(run_id: str) -> Any:
    from ccci_tasks.runs import wait

    return wait(run_id, RUN_TIMEOUT_S)


def _drain_alerts_queue() -> None:
    """A barrier: the alerts worker (concurrency 1) answers after the tasks queued before."""
    from ccci_tasks.tasks.diag import ping_alerts

    ping_alerts.delay().get(timeout=WAIT_S)


def _sweep() -> dict[str, Any]:
    """What beat fires every 60 s: verdicts of watched runs, delivery of pending messages."""
    from ccci_tasks.tasks.forge import sweep

    result: dict[str, Any] = sweep.delay().get(timeout=WAIT_S)
    return result


def _reports() -> set[str]:
    return {p.name for p in (_state() / "runs").glob("*.json")}


@pytest.fixture(scope="module")
def seeded(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str
           ) -> Iterator[RunReport]:
    """A clean system, then the first cold run on latest (the canonical for quick runs)."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.tasks import cold_run

    get_settings.cache_clear()
    flush_redis(redis_server)
    remove_ccci_objects(swarm)
    shutil.rmtree(_state(), ignore_errors=True)
    _state().mkdir()
    report = _wait_run(cold_run.delay(RECIPE).id)
    assert report.verdict == "pass", report.reason
    yield report
    remove_ccci_objects(swarm)


@pytest.fixture(scope="module")
def bridge(redis_server: str) -> Iterator[str]:
    """The bridge process on BRIDGE_PORT, as `make up` and the systemd unit start it."""
    with bridge_process("forge", CCCI_BRIDGE_LISTEN=f"127.0.0.1:{BRIDGE_PORT}") as url:
        yield url


@pytest.fixture(scope="module")
def forge(fake_forge: FakeForge, example_recipes: Path) -> FakeForge:
    """recipes/custom-html (private) on the forge, PR 7 from contributor's fork, PR 9 pushed
    with the AGit flow, issue 8, and two users: one who may write, one who may only read."""
    fake_forge.start()
    fake_forge.add_repo(FORGE_OWNER, RECIPE, example_recipes / RECIPE, private=True)
    fake_forge.add_repo("contributor", RECIPE, example_recipes / RECIPE)
    make_commit(fake_forge.bare_path("contributor", RECIPE), "2.0.0+2.0",
                {"compose.yml": ("Hello from custom-html", "Hello from PR 7")}, "pr-7")
    make_commit(fake_forge.bare_path(FORGE_OWNER, RECIPE), "2.0.0+2.0",
                {"compose.yml": ("Hello from custom-html", "Hello from PR 9")}, "agit-9")
    fake_forge.add_pull(FORGE_OWNER, RECIPE, 7, "pr-7", head_repo=("contributor", RECIPE))
    fake_forge.agit_pull(FORGE_OWNER, RECIPE, 9, "topic-9", "agit-9")
    fake_forge.add_issue(FORGE_OWNER, RECIPE, 8)
    fake_forge.set_permission(FORGE_OWNER, RECIPE, MAINTAINER, "write")
    fake_forge.set_permission(FORGE_OWNER, RECIPE, VISITOR, "read")
    return fake_forge


@pytest.fixture
def up(forge: FakeForge, bridge: str, seeded: RunReport, push_receiver: PushReceiver) -> FakeForge:
    """Forge and push receiver listening, whatever the previous test did."""
    forge.start()
    push_receiver.start()
    return forge


def _head(forge: FakeForge, number: int = 7) -> str:
    sha: str = forge.pull_head(FORGE_OWNER, RECIPE, number)
    assert sha
    return sha


def _comment(forge: FakeForge, user: str, body: str, number: int = 7) -> Any:
    return forge.comment(FORGE_OWNER, RECIPE, number, user, body)


def _statuses(forge: FakeForge, sha: str) -> list[tuple[str, str]]:
    return [(s["status"], s["context"]) for s in forge.statuses(FORGE_OWNER, RECIPE, sha)]


def _bot_comments(forge: FakeForge, number: int = 7) -> list[str]:
    return [c["body"] for c in forge.comments(FORGE_OWNER, RECIPE, number)
            if c["user"]["login"] == FORGE_BOT]


def _triggered(forge: FakeForge, user: str, body: str, number: int = 7) -> tuple[str, str]:
    """Comment as ``user``; return (lane, run id) of the run the bridge accepted."""
    delivery = _comment(forge, user, body, number)
    match = ACCEPTED.match(delivery.text)
    assert delivery.status == 202 and match, (delivery.status, delivery.text)
    return match.group(1), match.group(2)


def _wait_status(forge: FakeForge, sha: str, state: str) -> None:
    forge.wait_for(lambda: any(s == state for s, _ in _statuses(forge, sha)),
                   f"status {state} on {sha[:8]}", WAIT_S)


def test_quick_testme_runs_the_pr_head_and_reports_its_verdict(up: FakeForge,
                                                               push_receiver: PushReceiver) -> None:
    """'!testme --quick' on PR 7 quick-runs the PR head (fetched from the private base
    repository with the forge token) once, even if the webhook is redelivered: the head gets
    pending then success, the PR a comment naming the run id, and the notification target the
    finish notification."""
    from ccci_tasks.platform.recipes import RecipeRepo

    forge, sha = up, _head(up)
    before = _reports()
    delivery = _comment(forge, MAINTAINER, "!testme --quick")
    accepted = ACCEPTED.match(delivery.text)
    assert accepted is not None, delivery.text
    lane, run_id = accepted.groups()
    redelivered = forge.send_hook(delivery.body, delivery=delivery.delivery)
    assert (redelivered.status, redelivered.text.split(":")[0]) == (200, "duplicate")
    assert lane == "quick"
    forge.wait_for(lambda: any(run_id in body for body in _bot_comments(forge)),
                   "the reply naming the run id", WAIT_S)
    _wait_status(forge, sha, "pending")
    report = _wait_run(run_id)
    assert report.verdict == "pass", report.reason
    assert (report.lane, report.ref) == ("quick", sha)
    assert "Hello from PR 7" in (RecipeRepo(Path(TEST_ENV["CCCI_RECIPES_DIR"]) / RECIPE, RECIPE)
                                 .file_at("refs/pull/7/head", "compose.yml") or "")
    _sweep()
    _wait_status(forge, sha, "success")
    _drain_alerts_queue()
    assert _statuses(forge, sha) == [("pending", "ccci/quick"), ("success", "ccci/quick")]
    final = forge.statuses(FORGE_OWNER, RECIPE, sha)[-1]
    assert re.match(r"passed in (\d+ min )?\d+ s", final["description"]), final
    assert _reports() - before == {f"{run_id}.json"}
    [note] = push_receiver.wait_for(run_id, WAIT_S)
    assert note["title"] == f"ccci quick run of {RECIPE} @ {sha[:12]}: pass"
    for line in ("lane: quick", f"recipe: {RECIPE}", f"ref: {sha}", "verdict: pass",
                 "duration: ", "reason: "):
        assert line in note["message"]


def test_testme_runs_a_cold_run_of_the_pr_head(up: FakeForge) -> None:
    """'!testme' on PR 7 cold-runs the PR head: pending, then success, context ccci/cold."""
    forge, sha = up, _head(up)
    lane, run_id = _triggered(forge, MAINTAINER, "!testme")
    assert lane == "cold"
    _wait_status(forge, sha, "pending")
    report = _wait_run(run_id)
    assert report.verdict == "pass", report.reason
    assert (report.lane, report.ref) == ("cold", sha)
    _sweep()
    forge.wait_for(lambda: ("success", "ccci/cold") in _statuses(forge, sha),
                   "success on ccci/cold", WAIT_S)
    assert [s for s in _statuses(forge, sha) if s[1] == "ccci/cold"] == [
        ("pending", "ccci/cold"), ("success", "ccci/cold")]


@pytest.mark.parametrize(("user", "body", "number", "why"), [
    (MAINTAINER, "!testmexyz", 7, "not '!testme'"),
    (MAINTAINER, "!testme foo", 7, "not '!testme'"),
    (MAINTAINER, "!testme", 8, "on an issue, not on a pull request"),
])
def test_other_comments_enqueue_nothing(up: FakeForge, user: str, body: str, number: int,
                                        why: str) -> None:
    """Near-miss triggers and a comment on a plain issue are ignored; nothing is enqueued."""
    forge, before = up, _reports()
    asked = len(forge.received())
    delivery = _comment(forge, user, body, number)
    assert delivery.status == 200
    assert delivery.text.startswith("ignored: ") and why in delivery.text
    _drain_alerts_queue()
    assert _reports() == before
    assert forge.received()[asked:] == []  # the bot never even asked the forge


def test_user_without_write_access_gets_a_polite_reply(up: FakeForge, redis_server: str) -> None:
    """'!testme' by a user who can only read starts nothing and gets a short polite reply."""
    import redis

    from ccci_tasks import constants as c

    forge, before = up, _reports()
    _, run_id = _triggered(forge, VISITOR, "!testme")
    reply = forge.wait_for(lambda: [b for b in _bot_comments(forge) if f"@{VISITOR}" in b],
                           "the polite reply", WAIT_S)
    assert "write access" in reply[0] and "nothing was started" in reply[0]
    _drain_alerts_queue()
    assert _reports() == before
    assert not redis.Redis.from_url(redis_server).exists(c.KEY_FORGE_ENQUEUED + run_id)
    assert not any(run_id in body for body in _bot_comments(forge))


def test_bad_signature_is_refused_and_enqueues_nothing(up: FakeForge) -> None:
    """A webhook signed with another secret, or not signed, is answered 401; nothing runs."""
    forge, before = up, _reports()
    body = forge.comment_payload(FORGE_OWNER, RECIPE, 7, MAINTAINER, "!testme")
    wrong = forge.send_hook(body, secret="not-the-secret")
    unsigned = forge.send_hook(body, signature="")
    assert (wrong.status, unsigned.status) == (401, 401)
    _drain_alerts_queue()
    assert _reports() == before


def test_form_encoded_webhook_is_refused_with_a_hint(up: FakeForge) -> None:
    """A webhook set to Gitea's form content type (payload=<json>, signed over the JSON) is
    answered 400 saying to set application/json; nothing runs."""
    forge, before = up, _reports()
    body = forge.comment_payload(FORGE_OWNER, RECIPE, 7, MAINTAINER, "!testme")
    delivery = forge.send_hook(body, content_type="form")
    assert delivery.status == 400 and "application/json" in delivery.text, delivery
    _drain_alerts_queue()
    assert _reports() == before


def test_forge_down_when_the_run_finishes_gets_the_verdict_once_later(up: FakeForge) -> None:
    """With the forge down when the run ends, its verdict stays in the outbox and reaches
    the forge exactly once after it is back, after pending. PR 9 is an AGit PR: its head
    exists only as the base repository's refs/pull/9/head."""
    from ccci_tasks.forge import outbox

    forge, sha = up, _head(up, 9)
    _, run_id = _triggered(forge, MAINTAINER, "!testme --quick", 9)
    forge.wait_for(lambda: any(run_id in body for body in _bot_comments(forge, 9)),
                   "the reply naming the run id", WAIT_S)
    _wait_status(forge, sha, "pending")
    forge.stop()
    report = _wait_run(run_id)
    assert report.verdict == "pass", report.reason
    assert report.ref == sha
    _sweep()
    _drain_alerts_queue()  # the first delivery attempt ran, and failed
    time.sleep(3)  # and a retry or two
    assert outbox.known(_state(), f"{run_id}-final")
    assert not outbox.is_sent(_state(), f"{run_id}-final")
    back_at = time.monotonic()
    forge.start()
    _wait_status(forge, sha, "success")
    print(f"\nverdict reached the forge {time.monotonic() - back_at:.1f} s after it was back")
    _sweep()
    _drain_alerts_queue()
    time.sleep(2)
    assert _statuses(forge, sha) == [("pending", "ccci/quick"), ("success", "ccci/quick")]
    assert outbox.is_sent(_state(), f"{run_id}-final")
