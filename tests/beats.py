"""Beat as the tests see it: an entry's last run in the broker (RedBeat), and every task-sent
event on a broker, with the sending process's pid (which beat fired)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def set_last_run(app: Any, name: str, when: datetime) -> None:
    """Make beat's entry ``name`` look last run at ``when`` (as a beat down since then left
    it); the entry is created from ``beat_schedule.py`` when the broker has none yet."""
    from redbeat.schedulers import RedBeatSchedulerEntry

    from beat_schedule import beat_schedule
    from ccci_tasks.config import get_settings
    from ccci_tasks.constants import KEY_BEAT_PREFIX

    try:
        entry = RedBeatSchedulerEntry.from_key(KEY_BEAT_PREFIX + name, app=app)
    except KeyError:
        spec = beat_schedule(get_settings())[name]
        entry = RedBeatSchedulerEntry(name, spec["task"], spec["schedule"],
                                      kwargs=spec.get("kwargs"), app=app).save()
    entry.reschedule(last_run_at=when)


@dataclass(frozen=True)
class Sent:
    at: float  # the sender's clock (epoch s)
    task: str
    pid: int
    kwargs: str


class SentLog:
    """Collects every ``task-sent`` event of ``app``'s broker in a thread, from ``start()``
    (which returns once the subscription is live) to ``stop()``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: list[Sent] = []
        self._receiver: Any = None
        self._probed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on(self, event: dict[str, Any]) -> None:
        if event.get("type") == "ccci-probe":
            self._probed.set()
        elif event.get("type") == "task-sent":
            self.sent.append(Sent(float(event["timestamp"]), event["name"], int(event["pid"]),
                                  str(event.get("kwargs", ""))))

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self, timeout_s: float = 30) -> SentLog:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        with self.app.events.default_dispatcher() as dispatcher:
            while not self._probed.wait(0.2):
                assert time.monotonic() < deadline, "the event receiver never subscribed"
                dispatcher.send("ccci-probe")
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def of(self, task: str) -> list[Sent]:
        return [s for s in list(self.sent) if s.task == task]
