"""The forge outbox, its relay and the run hooks: real Redis, the forge stand-in, real files."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import FORGE_OWNER, PUSH_PORT, reports_at
from fake_forge import FakeForge
from push_receiver import PushReceiver
from pydantic import SecretStr
from recipe_commits import GIT

from ccci_tasks.config import Settings
from ccci_tasks.errors import AlertRelayError, ForgeError
from ccci_tasks.forge import hooks, outbox, relay
from ccci_tasks.naming import RunId
from ccci_tasks.outbox import StreamResult
from ccci_tasks.push import apprise_notify
from ccci_tasks.state import reports
from ccci_tasks.state.clock import iso, utc_now


def _git(*args: str) -> str:
    return subprocess.run([*GIT, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


@pytest.fixture
def forge(fake_forge: FakeForge) -> Iterator[FakeForge]:
    fake_forge.start()
    yield fake_forge
    fake_forge.start()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def recipe(forge: FakeForge, tmp_path: Path, settings: Settings) -> dict[str, Any]:
    """A catalogue recipe (a git repo with branch main) that the forge has too."""
    name = f"d{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "recipes" / name
    repo.mkdir(parents=True)
    _git("init", "-q", "-b", "main", str(repo))
    (repo / "compose.yml").write_text("x\n")
    _git("-C", str(repo), "add", "compose.yml")
    _git("-C", str(repo), "commit", "-qm", "first")
    forge.add_repo(FORGE_OWNER, name)
    return {"name": name, "sha": _git("-C", str(repo), "rev-parse", "HEAD"),
            "settings": settings.model_copy(update={"recipes_dir": tmp_path / "recipes"})}


def _status(state: Path, key: str, sha: str, repo: str, state_name: str) -> outbox.Item | None:
    return outbox.put(state, key, "status", f"status:{FORGE_OWNER}/{repo}@{sha}", {
        "owner": FORGE_OWNER, "repo": repo, "sha": sha, "state": state_name,
        "context": "ccci/quick", "description": state_name})


def _written(state: Path, stream: str) -> list[outbox.Item]:
    """The messages of ``stream`` in order: those sent already, then those pending."""
    return [m for m in outbox.sent(state) if m.stream == stream] + outbox.pending(state, stream)


def _deliver(settings: Settings, client: redis.Redis, stream: str) -> StreamResult:
    return relay.deliver_stream(settings, client, stream, notify=apprise_notify)


def _seen(forge: FakeForge, repo: str, sha: str) -> list[str]:
    return [s["status"] for s in forge.statuses(FORGE_OWNER, repo, sha)]


def test_put_is_idempotent_and_ordered_per_stream(state_dir: Path) -> None:
    """A key is written once (pending, sent or failed); a stream keeps its write order."""
    first = _status(state_dir, "k-pending", "a" * 40, "r", "pending")
    assert first is not None
    assert _status(state_dir, "k-pending", "a" * 40, "r", "success") is None
    _status(state_dir, "other-pending", "b" * 40, "r", "pending")
    second = _status(state_dir, "k-final", "a" * 40, "r", "success")
    assert second is not None and second.seq > first.seq
    stream = first.stream
    assert [i.key for i in outbox.pending(state_dir, stream)] == ["k-pending", "k-final"]
    assert outbox.streams(state_dir) == [stream, f"status:{FORGE_OWNER}/r@{'b' * 40}"]
    assert outbox.mark_sent(state_dir, "k-pending")
    assert _status(state_dir, "k-pending", "a" * 40, "r", "pending") is None
    assert outbox.pending(state_dir, stream)[0].payload["state"] == "success"


def test_stream_is_delivered_in_order_exactly_once(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """pending then success reach the forge in that order, once, however often relayed."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    item = _status(state_dir, "r1-pending", sha, name, "pending")
    _status(state_dir, "r1-final", sha, name, "success")
    assert item is not None
    _deliver(settings, redis_client, item.stream)
    _deliver(settings, redis_client, item.stream)
    assert _seen(forge, name, sha) == ["pending", "success"]
    assert outbox.pending(state_dir) == []
    assert [i.key for i in outbox.sent(state_dir)] == ["r1-pending", "r1-final"]


def test_forge_down_then_back_gets_the_verdict_once_after_pending(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A verdict written while the forge is down stays pending and arrives once when back."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    item = _status(state_dir, "r2-pending", sha, name, "pending")
    assert item is not None
    _deliver(settings, redis_client, item.stream)
    forge.stop()
    _status(state_dir, "r2-final", sha, name, "failure")
    with pytest.raises(ForgeError, match="no answer"):
        _deliver(settings, redis_client, item.stream)
    assert [i.key for i in outbox.pending(state_dir)] == ["r2-final"]
    forge.start()
    _deliver(settings, redis_client, item.stream)
    _deliver(settings, redis_client, item.stream)
    assert _seen(forge, name, sha) == ["pending", "failure"]


def test_refused_status_is_retried_and_blocks_the_ones_behind(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A status the forge refuses (503) stays pending, and so does the verdict behind it."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    item = _status(state_dir, "r3-pending", sha, name, "pending")
    _status(state_dir, "r3-final", sha, name, "success")
    assert item is not None
    forge.fail_next(1)
    with pytest.raises(ForgeError, match="answered 503"):
        _deliver(settings, redis_client, item.stream)
    assert _seen(forge, name, sha) == []
    assert len(outbox.pending(state_dir, item.stream)) == 2
    _deliver(settings, redis_client, item.stream)
    assert _seen(forge, name, sha) == ["pending", "success"]


def test_done_key_means_sent(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A message recorded as delivered (then a crash) is only archived, never sent again."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    item = _status(state_dir, "r4-final", sha, name, "success")
    assert item is not None
    redis_client.set(relay.done_key("r4-final"), "1", ex=600)
    assert _deliver(settings, redis_client, item.stream).outcome == "delivered"
    assert _seen(forge, name, sha) == []
    assert outbox.is_sent(state_dir, "r4-final")


def test_a_stream_is_relayed_by_one_relay_at_a_time(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """While another relay holds a stream's lock, a second one sends nothing."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    item = _status(state_dir, "r5-final", sha, name, "success")
    assert item is not None
    redis_client.set("ccci:forge:lock:" + item.stream, "other", ex=60)
    result = _deliver(settings, redis_client, item.stream)
    assert (result.outcome, result.left) == ("busy", 1)
    assert _seen(forge, name, sha) == []


def test_message_undelivered_for_a_week_is_given_up(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A message older than the done-key lifetime moves to failed/ instead of being sent."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    item = _status(state_dir, "r6-final", sha, name, "success")
    assert item is not None
    path = state_dir / "forge" / "outbox" / "r6-final.json"
    data = json.loads(path.read_text())
    data["created_at"] = "2020-01-01T00:00:00+00:00"
    path.write_text(json.dumps(data))
    _deliver(settings, redis_client, item.stream)
    assert _seen(forge, name, sha) == []
    assert [i.key for i in outbox.failed(state_dir)] == ["r6-final"]


def test_a_malformed_message_is_given_up_and_the_stream_goes_on(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A status without its sha moves to failed/ (logged); the one behind it is delivered."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    stream = f"status:{FORGE_OWNER}/{name}@{sha}"
    outbox.put(state_dir, "r8-pending", "status", stream, {
        "owner": FORGE_OWNER, "repo": name, "state": "pending", "context": "ccci/quick",
        "description": "pending"})
    _status(state_dir, "r8-final", sha, name, "success")
    assert _deliver(settings, redis_client, stream).sent == 1
    assert [i.key for i in outbox.failed(state_dir)] == ["r8-pending"]
    assert _seen(forge, name, sha) == ["success"]


def test_a_message_queued_by_the_earlier_code_is_delivered(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A pending file as the forge outbox wrote it before (same place, same keys) is read
    and delivered as it is."""
    name, sha, settings = recipe["name"], recipe["sha"], recipe["settings"]
    stream = f"status:{FORGE_OWNER}/{name}@{sha}"
    folder = state_dir / "forge" / "outbox"
    folder.mkdir(parents=True)
    (folder / "r9-final.json").write_text(json.dumps({
        "key": "r9-final", "kind": "status", "stream": stream, "seq": 1,
        "created_at": iso(utc_now()),
        "payload": {"owner": FORGE_OWNER, "repo": name, "sha": sha, "state": "success",
                    "context": "ccci/cold", "description": "passed in 3 s", "run_id": "x"}}))
    assert outbox.streams(state_dir) == [stream]
    _deliver(settings, redis_client, stream)
    assert _seen(forge, name, sha) == ["success"] and outbox.is_sent(state_dir, "r9-final")


# Apprise imports the standard library's imghdr, deprecated since Python 3.11.
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_notification_reaches_each_target_once(
    redis_client: redis.Redis, settings: Settings, state_dir: Path, push_receiver: PushReceiver
) -> None:
    """With two targets, one down, a retry pushes only to the one that had failed."""
    push_receiver.start()
    push_receiver.clear()
    dead = f"json://127.0.0.1:{_dead_port()}/notify"
    live = f"json://127.0.0.1:{PUSH_PORT}/notify"
    two = settings.model_copy(update={"notify_urls": SecretStr(f"{live} {dead}")})
    title = f"ccci quick run of x: pass {uuid.uuid4().hex[:6]}"
    item = outbox.put(state_dir, "r7-notify", "notify", "notify:r7",
                      {"title": title, "body": "verdict: pass"})
    assert item is not None
    with pytest.raises(AlertRelayError, match="1 of 2 target"):
        relay.deliver_stream(two, redis_client, item.stream, notify=apprise_notify)
    assert len(push_receiver.matching(title)) == 1
    one = settings.model_copy(update={"notify_urls": SecretStr(live)})
    relay.deliver_stream(one, redis_client, item.stream, notify=apprise_notify)
    assert len(push_receiver.matching(title)) == 1
    assert outbox.is_sent(state_dir, "r7-notify")
    assert [r["path"] for r in push_receiver.received] == ["/notify"]


def _dead_port() -> int:
    from conftest import _free_port

    return _free_port()


# --- the run hooks --------------------------------------------------------------------


def _report(settings: Settings, recipe: str, ref: str | None, lane: str = "quick") -> Any:
    run_id = RunId(str(uuid.uuid4()))
    return reports.at(settings).create(run_id, lane, recipe, ref)


def test_hooks_write_pending_then_the_verdict(
    recipe: dict[str, Any], redis_client: redis.Redis, state_dir: Path, forge: FakeForge
) -> None:
    """A run on branch main gets pending, then failure with reason and duration, on the
    branch's sha, context ccci/quick; and a finish notification is queued."""
    settings = recipe["settings"]
    report = _report(settings, recipe["name"], "main")
    hooks.run_queued(settings, report)
    assert hooks.watched(state_dir) == [report.run_id]
    finished = reports_at(state_dir).finish(report.run_id, "fail", "upgrade: did not move")
    hooks.run_finished(settings, finished)
    assert hooks.watched(state_dir) == []
    stream = f"status:{FORGE_OWNER}/{recipe['name']}@{recipe['sha']}"
    # An alerts worker left running by another test may already have delivered some.
    pending, final = _written(state_dir, stream)
    assert (pending.key, pending.payload["state"]) == (f"{report.run_id}-pending", "pending")
    assert (final.payload["state"], final.payload["context"]) == ("failure", "ccci/quick")
    assert final.payload["description"].startswith("failed in ")
    assert final.payload["description"].endswith(" s: upgrade: did not move")
    [note] = _written(state_dir, f"notify:{report.run_id}")
    assert "verdict: fail" in note.payload["body"]
    _deliver(settings, redis_client, stream)  # or the alerts worker, if one runs, does
    deadline = time.monotonic() + 20
    while _seen(forge, recipe["name"], recipe["sha"]) != ["pending", "failure"] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _seen(forge, recipe["name"], recipe["sha"]) == ["pending", "failure"]


def test_hooks_are_idempotent_and_a_late_pending_is_dropped(
    recipe: dict[str, Any], state_dir: Path
) -> None:
    """Calling the hooks again writes nothing new; pending after the verdict is never sent."""
    settings = recipe["settings"]
    report = _report(settings, recipe["name"], recipe["sha"], lane="cold")
    finished = reports_at(state_dir).finish(report.run_id, "pass")
    hooks.run_finished(settings, finished)
    hooks.run_finished(settings, finished)
    hooks.run_queued(settings, report)
    keys = [i.key for i in outbox.pending(state_dir)]
    assert keys == [f"{report.run_id}-final", f"{report.run_id}-notify"]
    assert outbox.pending(state_dir)[0].payload["context"] == "ccci/cold"


@pytest.mark.parametrize(("lane", "ref", "in_catalogue", "forge_on"), [
    ("quick", "main", True, False),  # the forge is not configured
    ("quick", "no-such-branch", True, True),  # the ref resolves to no commit
    ("cold", None, True, True),  # latest: no ref, no status
    ("promote", "main", True, True),  # not a quick or cold run
    ("quick", "main", False, True),  # the recipe is not in the catalogue
])
def test_hooks_leave_the_forge_alone(
    recipe: dict[str, Any], state_dir: Path, lane: str, ref: str | None,
    in_catalogue: bool, forge_on: bool,
) -> None:
    """No status without a configured forge and a ref that resolves in the catalogue."""
    settings = recipe["settings"].model_copy(update={"notify_urls": SecretStr("")})
    if not forge_on:
        settings = settings.model_copy(update={"forge_url": None})
    name = recipe["name"] if in_catalogue else "not-there"
    report = _report(settings, name, ref, lane=lane)
    hooks.run_queued(settings, report)
    hooks.run_finished(settings, reports_at(state_dir).finish(report.run_id, "pass"))
    assert outbox.pending(state_dir) == [] and hooks.watched(state_dir) == []


def test_hooks_never_raise(recipe: dict[str, Any], state_dir: Path) -> None:
    """A broken state root or an unfinished report is logged, never raised."""
    settings = recipe["settings"]
    report = _report(settings, recipe["name"], "main")
    hooks.run_finished(settings, report)  # no verdict yet: ignored
    (state_dir / "forge").mkdir(exist_ok=True)
    (state_dir / "forge" / "outbox").write_text("not a directory")
    hooks.run_queued(settings, report)
    hooks.run_finished(settings, reports_at(state_dir).finish(report.run_id, "error", "x"))


def test_sweep_gives_the_verdict_of_a_run_whose_hook_was_lost(
    recipe: dict[str, Any], state_dir: Path
) -> None:
    """A watched run that ended without run_finished gets its verdict from the sweep."""
    settings = recipe["settings"]
    report = _report(settings, recipe["name"], "main")
    hooks.run_queued(settings, report)
    assert hooks.sweep_watched(settings) == []  # still running
    reports_at(state_dir).finish(report.run_id, "pass")
    assert hooks.sweep_watched(settings) == [report.run_id]
    assert outbox.known(state_dir, f"{report.run_id}-final")
    assert hooks.sweep_watched(settings) == []
