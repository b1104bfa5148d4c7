"""The forge webhook decision and the status texts: pure functions, table-tested."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ccci_tasks.bridge import Trigger as Lane
from ccci_tasks.forge import events, messages
from ccci_tasks.naming import Domain, Recipe, Ref, RunId
from ccci_tasks.state.reports import RunReport, Verdict

SECRET = b"s3cret"
OWNER = "recipes"
RUN_ID = RunId("0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a")


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "action": "created",
        "issue": {"number": 7, "pull_request": {"merged": False}},
        "comment": {"body": "!testme --quick", "user": {"login": "alice", "username": "alice"}},
        "repository": {"name": "custom-html", "full_name": "recipes/custom-html",
                       "owner": {"login": "recipes", "username": "recipes"}},
        "sender": {"login": "alice"},
        "is_pull": True,
    }
    for dotted, value in changes.items():
        target = base
        *path, last = dotted.split("__")
        for key in path:
            target = target[key]
        target[last] = value
    return base


def decide(body: dict[str, Any] | bytes, event: str | None = "issue_comment",
           catalogue: tuple[str, ...] = ("custom-html",)) -> events.Trigger | events.Ignored:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return events.decide(event, raw, OWNER, lambda recipe: recipe in catalogue)


def test_signature_matches_gitea_and_forgejo_headers() -> None:
    """The hex HMAC-SHA256 of the raw body is accepted under either forge's header name."""
    body = b'{"a": 1}'
    good = events.sign(SECRET, body)
    assert events.signature_ok(SECRET, body, {"X-Gitea-Signature": good})
    assert events.signature_ok(SECRET, body, {"x-forgejo-signature": good.upper()})
    assert events.signature_ok(SECRET, body, {"X-Gitea-Signature": good,
                                              "X-Forgejo-Signature": good})


@pytest.mark.parametrize("headers", [
    {},
    {"X-Gitea-Signature": ""},
    {"X-Gitea-Signature": "sha256=" + events.sign(SECRET, b"{}")},
    {"X-Gitea-Signature": events.sign(b"other", b"{}")},
    {"X-Gitea-Signature": events.sign(SECRET, b"{} ")},
    {"X-Gitea-Signature": events.sign(SECRET, b"{}"), "X-Forgejo-Signature": "0" * 64},
    {"X-Hub-Signature-256": "sha256=" + events.sign(SECRET, b"{}")},
    {"X-Gitea-Signature": "é" * 64},
])
def test_signature_refused(headers: dict[str, str]) -> None:
    """A missing, prefixed, foreign-secret, other-body or conflicting signature is refused."""
    assert not events.signature_ok(SECRET, b"{}", headers)


def test_no_secret_never_verifies() -> None:
    """An empty secret verifies nothing, not even a signature made with it."""
    assert not events.signature_ok(b"", b"{}", {"X-Gitea-Signature": events.sign(b"", b"{}")})


@pytest.mark.parametrize(("body", "lane"), [
    (payload(), "quick"),
    (payload(comment__body="!testme"), "cold"),
    (payload(comment__body="  !testme \n"), "cold"),
    (payload(is_pull=False), "quick"),  # issue.pull_request is enough
    (payload(issue__pull_request=None), "quick"),  # is_pull is enough
    (payload(repository__owner={"login": "Recipes"}), "quick"),
])
def test_trigger(body: dict[str, Any], lane: Lane) -> None:
    """A created '!testme' comment on a PR of <owner>/<catalogue recipe> is a trigger."""
    assert decide(body) == events.Trigger("custom-html", 7, lane, "alice")


@pytest.mark.parametrize(("body", "event", "why"), [
    (payload(), "push", "not an issue_comment event"),
    (payload(), None, "not an issue_comment event"),
    (b"not json", "issue_comment", "not JSON"),
    (b"[1]", "issue_comment", "not a JSON object"),
    (payload(action="edited"), "issue_comment", "not 'created'"),
    (payload(action="deleted"), "issue_comment", "not 'created'"),
    (payload(is_pull=False, issue__pull_request=None), "issue_comment", "on an issue"),
    (payload(issue__number=0), "issue_comment", "no number"),
    (payload(issue__number=True), "issue_comment", "no number"),
    (payload(repository__owner={"login": "someone"}), "issue_comment", "not owned by"),
    (payload(repository__name="../x"), "issue_comment", "not a recipe name"),
    (payload(repository__name="Custom"), "issue_comment", "not a recipe name"),
    (payload(repository__name="unknown"), "issue_comment", "not in the recipe catalogue"),
    (payload(comment__body="!testmexyz"), "issue_comment", "not '!testme'"),
    (payload(comment__body="!testme foo"), "issue_comment", "not '!testme'"),
    (payload(comment__body="please !testme"), "issue_comment", "not '!testme'"),
    (payload(comment__body=None), "issue_comment", "not '!testme'"),
    (payload(comment__user={"login": "-x"}, sender={}), "issue_comment", "no valid author"),
    (payload(comment__user={"login": "a..b"}, sender={}), "issue_comment", "no valid author"),
])
def test_ignored(body: dict[str, Any] | bytes, event: str | None, why: str) -> None:
    """Anything but a trigger is ignored with a reason that says what was wrong."""
    decision = decide(body, event)
    assert isinstance(decision, events.Ignored)
    assert why in decision.why


def test_delivery_id_header_or_body_hash() -> None:
    """The delivery header names the delivery; without a sane one, the body's hash does."""
    assert events.delivery_id({"X-Gitea-Delivery": "abc-123"}, b"x") == "abc-123"
    assert events.delivery_id({"X-Forgejo-Delivery": "f-1", "X-Gitea-Delivery": "g-1"},
                              b"x") == "f-1"
    hashed = events.delivery_id({"X-Gitea-Delivery": "bad id!"}, b"x")
    assert hashed.startswith("body-") and hashed == events.delivery_id({}, b"x")
    assert events.delivery_id({}, b"y") != hashed


def report(verdict: Verdict | None, reason: str | None = None, seconds: float = 83) -> RunReport:
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return RunReport(run_id=RUN_ID, lane="quick", recipe=Recipe("custom-html"),
                     ref=Ref("a" * 40), domain=Domain("warm-custom-html.ci.localhost"),
                     verdict=verdict, reason=reason, started_at=start,
                     finished_at=start + timedelta(seconds=seconds) if verdict else None)


@pytest.mark.parametrize(("verdict", "reason", "state", "description"), [
    ("pass", None, "success", "passed in 1 min 23 s"),
    ("fail", "assert_upgrade: did not move", "failure",
     "failed in 1 min 23 s: assert_upgrade: did not move"),
    ("error", "lease expired", "error", "error in 1 min 23 s: lease expired"),
])
def test_final_status(verdict: Verdict, reason: str | None, state: str, description: str
                      ) -> None:
    """pass/fail/error map to success/failure/error; the description has the duration."""
    finished = report(verdict, reason)
    assert messages.final_state(finished) == state
    assert messages.final_description(finished) == description


def test_long_reason_is_shortened_but_keeps_the_duration() -> None:
    """A long multi-line reason is cut to fit 140 characters; the duration always shows."""
    text = messages.final_description(report("fail", "deploy:\n" + "x " * 400, seconds=5))
    assert messages.MAX_DESCRIPTION - 2 <= len(text) <= messages.MAX_DESCRIPTION
    assert text.startswith("failed in 5 s: deploy: x x") and text.endswith("…")
    assert "\n" not in text


def test_durations_and_contexts() -> None:
    """Durations read as people write them; contexts are ccci/<lane>."""
    assert [messages.human_duration(s) for s in (0, 42.4, 185, 3720)] == [
        "0 s", "42 s", "3 min 5 s", "1 h 2 min"]
    assert messages.context("quick") == "ccci/quick"
    assert messages.pending_description(report(None)) == "quick run 0b6f1d5e queued"


def test_notification_names_everything() -> None:
    """The finish notification carries lane, recipe, ref, verdict, duration and reason."""
    title, body = messages.notification(report("fail", "did not move"))
    assert title == f"ccci quick run of custom-html @ {'a' * 12}: fail"
    for line in ("lane: quick", "recipe: custom-html", f"ref: {'a' * 40}", "verdict: fail",
                 "duration: 1 min 23 s", "reason: did not move", f"run: {RUN_ID}"):
        assert line in body


def test_queued_comment_names_the_full_run_id() -> None:
    """The reply on the PR names the full run id and where the verdict will show."""
    text = messages.queued_comment("quick", "custom-html", "b" * 40, RUN_ID)
    assert RUN_ID in text and "b" * 40 in text and "ccci/quick" in text
