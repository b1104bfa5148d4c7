"""The alerts outbox (R4.2): each alert goes to every ``CCCI_ALERT_URLS`` target, then into
``alerts/seen/``.

``write_alert`` writes the alert (``state.alerts``) and asks the alerts queue to relay it at
once (task ``relay_alert``); when the broker is down the alert stays pending and beat's
``relay_pending_alerts`` relays it once it is back. A push has the summary as title and the
detail, the notes and where it came from as body. Without targets an alert stays pending and
is logged; nothing loops. Retries back off up to ``CCCI_ALERT_RETRY_MAX_S``; an alert is
never given up. Each alert is a stream of its own, so one alert a target refuses holds back
no other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ccci_tasks import constants as c
from ccci_tasks.outbox.model import Outbox
from ccci_tasks.outbox.relay import publish
from ccci_tasks.push import Notify, apprise_notify, push_once
from ccci_tasks.state import alerts
from ccci_tasks.state.alerts import Alert

if TYPE_CHECKING:
    import redis

    from ccci_tasks.config import Settings


def title_and_body(alert: Alert) -> tuple[str, str]:
    """(title, body) of the push: the summary; the detail, the notes and where it came from."""
    parts = [alert.detail_text().strip()]
    if alert.notes:
        parts.append(alert.notes.strip())
    parts.append(f"({alert.kind}, {alert.app}, alert {alert.id})")
    return alert.summary, "\n\n".join(p for p in parts if p)


class AlertSender:
    """Pushes an alert through Apprise to every target that has not taken it yet."""

    def __init__(self, settings: Settings, client: redis.Redis,
                 notify: Notify = apprise_notify) -> None:
        self.settings, self.client, self.notify = settings, client, notify

    def send(self, message: Alert, done_key: str) -> None:
        title, body = title_and_body(message)
        push_once(self.client, self.settings.alert_url_list(), done_key=done_key, title=title,
                  body=body, what=f"alert {message.id}", setting="CCCI_ALERT_URLS",
                  notify=self.notify)

    def close(self) -> None:
        pass


def _waiting(settings: Settings, alert: Alert) -> str | None:
    return None if settings.alert_url_list() else "no push targets (set CCCI_ALERT_URLS)"


def _retry_max_s(settings: Settings) -> int:
    return settings.alert_retry_max_s


ALERTS: Final = Outbox(
    name="alerts", box=alerts.BOX, sender=AlertSender, waiting=_waiting,
    check_stream=alerts.validate_alert_id,
    deliver_task=c.task_name(c.QUEUE_ALERTS, "relay_alert"),
    done_prefix=c.KEY_RELAY_DONE, lock_prefix=c.KEY_RELAY_LOCK, backoff_cap_s=_retry_max_s,
)


def write_alert(
    state_dir: Path,
    kind: str,
    app: str,
    summary: str,
    detail: str | dict[str, Any],
    notes: str | None = None,
) -> Alert:
    """Write a pending alert atomically and ask the alerts queue to relay it (best effort)."""
    alert = alerts.write_alert(state_dir, kind, app, summary, detail, notes)
    publish(ALERTS, [alert.id])
    return alert
