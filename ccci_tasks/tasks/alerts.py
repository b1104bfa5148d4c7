"""The alerts queue (R4.2): relay each pending alert to the push targets, then archive it.

``relay_alert(alert_id)`` sends one alert through Apprise to every ``CCCI_ALERT_URLS`` target
(title = summary, body = detail + notes) and moves it into ``alerts/seen/``. A target that
refuses or fails raises ``AlertRelayError`` and the task retries with exponential backoff,
capped at ``CCCI_ALERT_RETRY_MAX_S`` (far below the Redis visibility timeout, so a waiting
retry is never redelivered as a duplicate). Without targets the alert stays pending and is
logged; nothing loops.

Exactly once, as far as a push can be: right after a target accepted the alert a Redis key
(``KEY_RELAY_DONE + id[:target]``, SET NX with a 7-day expiry) records it; a redelivered or
retried relay skips targets already done, and one whose alert is already in ``seen/`` does
nothing. Only a crash between a target's answer and the SET can push twice. The alerts
worker runs with concurrency 1, so two relays of one alert never run at the same time.

``relay_pending_alerts`` (beat, every 60 s) enqueues a one-attempt relay (no retry chain, so
an outage does not pile up a chain per alert per minute) for every pending alert: an alert
written while the broker was down, or whose retries were lost, is relayed once it is back.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Final

import redis
from celery import Task

from ccci_tasks import constants as c
from ccci_tasks.celery_app import app
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import AlertRelayError, BrokerError
from ccci_tasks.push import DONE_TTL_S, Notify, apprise_notify, push_once
from ccci_tasks.state import alerts

log = logging.getLogger(__name__)

RETRY_BASE_S: Final = 2


def retry_countdown_s(retries: int, settings: Settings) -> int:
    """2, 4, 8, ... seconds, capped at ``alert_retry_max_s`` and a quarter of the visibility
    timeout (a countdown longer than that would be redelivered while it waits)."""
    cap = max(1, min(settings.alert_retry_max_s, settings.visibility_timeout_s // 4))
    return int(min(cap, RETRY_BASE_S ** min(retries + 1, 20)))


def message(alert: alerts.Alert) -> tuple[str, str]:
    """(title, body) of the push: the summary; the detail, the notes and where it came from."""
    parts = [alert.detail_text().strip()]
    if alert.notes:
        parts.append(alert.notes.strip())
    parts.append(f"({alert.kind}, {alert.app}, alert {alert.id})")
    return alert.summary, "\n\n".join(p for p in parts if p)


def relay_one(
    settings: Settings, client: redis.Redis, alert_id: str, notify: Notify = apprise_notify
) -> str:
    """Relay one alert; return what happened (``sent``, ``moved``, ``seen``, ``gone``,
    ``no-targets``). Raises ``AlertRelayError`` when a target did not take it."""
    state_dir = settings.state_dir
    alert = alerts.load_alert(state_dir, alert_id)
    if alert is None:
        if alerts.seen_path(state_dir, alert_id).exists():
            return "seen"
        log.warning("alert %s is neither pending nor seen; nothing to relay", alert_id)
        return "gone"
    done_key = c.KEY_RELAY_DONE + alert_id
    try:
        already = bool(client.exists(done_key))
    except redis.RedisError as exc:
        raise BrokerError(f"cannot read relay state of alert {alert_id}: {exc}") from exc
    if already:
        alerts.mark_seen(state_dir, alert_id)
        return "moved"
    urls = settings.alert_url_list()
    if not urls:
        log.warning("alert %s stays pending: no push targets (set CCCI_ALERT_URLS)", alert_id)
        return "no-targets"
    title, body = message(alert)
    push_once(client, urls, prefix=c.KEY_RELAY_DONE, message=alert_id, title=title, body=body,
              what=f"alert {alert_id}", setting="CCCI_ALERT_URLS", notify=notify)
    client.set(done_key, "1", nx=True, ex=DONE_TTL_S)
    alerts.mark_seen(state_dir, alert_id)
    log.info("alert %s relayed to %d target(s) and moved to seen/", alert_id, len(urls))
    return "sent"


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    name=c.task_name(c.QUEUE_ALERTS, "relay_alert"),
    max_retries=None,
    ignore_result=True,
)
def relay_alert(self: Task, alert_id: str, retry: bool = True) -> str:
    """Relay one pending alert to the push targets, then move it to alerts/seen/.

    ``retry=False`` (used by the beat sweep) makes one attempt only: the sweep itself comes
    back every 60 s, so its relays must not each start a retry chain of their own.
    """
    settings = get_settings()
    alerts.validate_alert_id(alert_id)
    client = _redis(settings.broker_url.get_secret_value())
    try:
        return relay_one(settings, client, alert_id)
    except (AlertRelayError, BrokerError, redis.RedisError) as exc:
        if not retry:
            log.warning("%s; the next relay_pending_alerts run tries again", exc)
            return "failed"
        countdown = retry_countdown_s(self.request.retries, settings)
        log.warning("%s; retry %d in %d s", exc, self.request.retries + 1, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc


@app.task(name=c.task_name(c.QUEUE_ALERTS, "relay_pending_alerts"))  # type: ignore[untyped-decorator]
def relay_pending_alerts() -> dict[str, Any]:
    """Enqueue a relay for every pending alert (beat, every 60 s)."""
    settings = get_settings()
    pending = alerts.pending(settings.state_dir)
    if not pending:
        return {"pending": 0, "enqueued": 0}
    if not settings.alert_url_list():
        log.warning("%d alert(s) pending, none relayed: no push targets (set CCCI_ALERT_URLS)",
                    len(pending))
        return {"pending": len(pending), "enqueued": 0}
    for alert in pending:
        relay_alert.apply_async((alert.id,), {"retry": False})
    return {"pending": len(pending), "enqueued": len(pending)}
