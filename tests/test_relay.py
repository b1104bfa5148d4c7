"""The alerts relay (R4.2) with real workers, real Redis and a local HTTP push target."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import Workers
from push_receiver import PushReceiver
from pydantic import SecretStr

from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import AlertRelayError
from ccci_tasks.outbox import StreamResult, deliver
from ccci_tasks.outbox.alerts import ALERTS, AlertSender, write_alert
from ccci_tasks.push import Notify, apprise_notify
from ccci_tasks.state import alerts

DEADLINE_S = 60.0


@pytest.fixture
def receiver(push_receiver: PushReceiver) -> Iterator[PushReceiver]:
    """The session push receiver, listening and emptied for this test."""
    push_receiver.start()
    push_receiver.clear()
    yield push_receiver
    push_receiver.start()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _until(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _drain_alerts_queue() -> None:
    """A barrier: the alerts worker (concurrency 1) answers a ping after earlier tasks ran."""
    from ccci_tasks.tasks.diag import ping_alerts

    ping_alerts.delay().get(timeout=DEADLINE_S)


def _summary() -> str:
    return f"traefik rolled back {uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_alert_arrives_once_and_moves_to_seen(
    workers: Workers, redis_url: str, state_dir: Path, receiver: PushReceiver
) -> None:
    """A new alert reaches the push target exactly once and is archived in alerts/seen/."""
    summary = _summary()
    alert = write_alert(state_dir, "rolled-back", "traefik", summary,
                        "deploy of 3.1 unhealthy", notes="see logs")
    bodies = receiver.wait_for(summary, DEADLINE_S)
    _until(lambda: alerts.seen_path(state_dir, alert.id).exists(), "alert moved to seen/")
    _drain_alerts_queue()
    assert len(receiver.matching(summary)) == 1
    assert bodies[0]["title"] == summary
    assert "deploy of 3.1 unhealthy" in bodies[0]["message"]
    assert "see logs" in bodies[0]["message"]
    assert alerts.pending(state_dir) == []
    assert [a.id for a in alerts.seen(state_dir)] == [alert.id]


@pytest.mark.slow
def test_target_down_then_back_arrives_once(
    workers: Workers, redis_url: str, state_dir: Path, receiver: PushReceiver
) -> None:
    """While the target is down the alert stays pending; once it is back it arrives once."""
    receiver.stop()
    summary = _summary()
    alert = write_alert(state_dir, "rolled-back", "traefik", summary, "unhealthy")
    _drain_alerts_queue()  # the first attempt ran, and failed
    assert alerts.load_alert(state_dir, alert.id) is not None
    assert not alerts.seen_path(state_dir, alert.id).exists()
    receiver.start()
    receiver.wait_for(summary, DEADLINE_S)
    _until(lambda: alerts.seen_path(state_dir, alert.id).exists(), "alert moved to seen/")
    _drain_alerts_queue()
    assert len(receiver.matching(summary)) == 1
    assert alerts.pending(state_dir) == []


@pytest.mark.slow
def test_redelivered_relay_sends_nothing(
    workers: Workers, redis_url: str, state_dir: Path, receiver: PushReceiver
) -> None:
    """relay_alert called again after the move sends nothing and changes nothing."""
    from ccci_tasks.tasks.alerts import relay_alert

    summary = _summary()
    alert = write_alert(state_dir, "upgrade-held", "keycloak", summary, "major bump")
    receiver.wait_for(summary, DEADLINE_S)
    _until(lambda: alerts.seen_path(state_dir, alert.id).exists(), "alert moved to seen/")
    relay_alert.delay(alert.id)
    relay_alert.delay(alert.id)
    _drain_alerts_queue()
    assert len(receiver.matching(summary)) == 1
    assert [a.id for a in alerts.seen(state_dir)] == [alert.id]


@pytest.mark.slow
def test_alert_written_while_broker_down_is_relayed_by_the_sweep(
    workers: Workers, redis_url: str, state_dir: Path, receiver: PushReceiver
) -> None:
    """An alert whose relay was never enqueued is relayed by relay_pending_alerts, once."""
    from ccci_tasks.tasks.alerts import relay_pending_alerts

    summary = _summary()
    alert = alerts.write_alert(state_dir, "run-crashed", "custom-html", summary, "worker lost")
    assert relay_pending_alerts.delay().get(timeout=DEADLINE_S) == {"pending": 1, "enqueued": 1}
    receiver.wait_for(summary, DEADLINE_S)
    _until(lambda: alerts.seen_path(state_dir, alert.id).exists(), "alert moved to seen/")
    assert relay_pending_alerts.delay().get(timeout=DEADLINE_S) == {"pending": 0, "enqueued": 0}
    _drain_alerts_queue()
    assert len(receiver.matching(summary)) == 1


@pytest.mark.slow
def test_sweep_while_target_down_then_back(
    workers: Workers, redis_url: str, state_dir: Path, receiver: PushReceiver
) -> None:
    """A sweep during an outage leaves the alert pending; a sweep after it relays it once."""
    from ccci_tasks.tasks.alerts import relay_pending_alerts

    receiver.stop()
    summary = _summary()
    alert = alerts.write_alert(state_dir, "rolled-back", "traefik", summary, "d")
    assert relay_pending_alerts.delay().get(timeout=DEADLINE_S) == {"pending": 1, "enqueued": 1}
    _drain_alerts_queue()
    assert alerts.load_alert(state_dir, alert.id) is not None
    receiver.start()
    relay_pending_alerts.delay().get(timeout=DEADLINE_S)
    receiver.wait_for(summary, DEADLINE_S)
    _until(lambda: alerts.seen_path(state_dir, alert.id).exists(), "alert moved to seen/")
    _drain_alerts_queue()
    assert len(receiver.matching(summary)) == 1


@pytest.mark.slow
def test_crash_between_send_and_move_does_not_push_twice(
    workers: Workers, redis_url: str, redis_client: redis.Redis, state_dir: Path,
    receiver: PushReceiver,
) -> None:
    """With the done key already set (sent, then crashed) a relay only moves the alert."""
    from ccci_tasks.tasks.alerts import relay_alert

    summary = _summary()
    alert = alerts.write_alert(state_dir, "rolled-back", "traefik", summary, "d")
    redis_client.set(c.KEY_RELAY_DONE + alert.id, "1", ex=600)
    relay_alert.delay(alert.id)
    _until(lambda: alerts.seen_path(state_dir, alert.id).exists(), "alert moved to seen/")
    _drain_alerts_queue()
    assert receiver.matching(summary) == []


def _relay(settings: Settings, client: redis.Redis, alert_id: str,
           notify: Notify = apprise_notify) -> StreamResult:
    return deliver(ALERTS, settings, client, alert_id, AlertSender(settings, client, notify))


def test_partial_failure_retries_only_the_failed_target(
    redis_url: str, redis_client: redis.Redis, settings: Settings, state_dir: Path
) -> None:
    """With two targets, a retry after one failed pushes only to the one that failed."""
    two = settings.model_copy(update={"alert_urls": SecretStr("json://a.test json://b.test")})
    alert = alerts.write_alert(state_dir, "rolled-back", "traefik", "s", "d")
    calls: list[str] = []
    up = {"json://a.test": True, "json://b.test": False}

    def notify(url: str, title: str, body: str) -> bool:
        calls.append(url)
        return up[url]

    with pytest.raises(AlertRelayError, match="1 of 2 target"):
        _relay(two, redis_client, alert.id, notify)
    assert alerts.load_alert(state_dir, alert.id) is not None
    up["json://b.test"] = True
    result = _relay(two, redis_client, alert.id, notify)
    assert (result.outcome, result.sent) == ("delivered", 1)
    assert calls == ["json://a.test", "json://b.test", "json://b.test"]
    assert _relay(two, redis_client, alert.id, notify).outcome == "empty"
    assert alerts.seen_path(state_dir, alert.id).exists()


def test_no_targets_leaves_alert_pending(
    redis_url: str, redis_client: redis.Redis, settings: Settings, state_dir: Path
) -> None:
    """Without CCCI_ALERT_URLS the alert stays pending and no error is raised."""
    none = settings.model_copy(update={"alert_urls": SecretStr("")})
    alert = alerts.write_alert(state_dir, "rolled-back", "traefik", "s", "d")
    assert _relay(none, redis_client, alert.id).outcome == "waiting"
    assert [a.id for a in alerts.pending(state_dir)] == [alert.id]


def test_an_alert_relayed_elsewhere_is_left_alone(
    redis_url: str, redis_client: redis.Redis, settings: Settings, state_dir: Path
) -> None:
    """While another relay holds an alert's stream lock, a second one pushes nothing."""
    alert = alerts.write_alert(state_dir, "rolled-back", "traefik", "s", "d")
    redis_client.set(c.KEY_RELAY_LOCK + alert.id, "other", ex=60)
    calls: list[str] = []

    def notify(url: str, title: str, body: str) -> bool:
        calls.append(url)
        return True

    result = _relay(settings, redis_client, alert.id, notify)
    assert (result.outcome, result.left, calls) == ("busy", 1, [])
    assert alerts.load_alert(state_dir, alert.id) is not None


def test_retry_countdown_is_capped(settings: Settings) -> None:
    """Backoff doubles and stops at CCCI_ALERT_RETRY_MAX_S, far below the visibility timeout."""
    delays = [ALERTS.countdown_s(n, settings) for n in range(8)]
    assert delays[:2] == [2, 4] and max(delays) == settings.alert_retry_max_s
    big = settings.model_copy(update={"alert_retry_max_s": 10**9})
    assert ALERTS.countdown_s(50, big) <= big.visibility_timeout_s // 4
