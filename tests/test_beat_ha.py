"""Beat on several hosts (R15): whichever beats run, each schedule fires once.

Real ``celery beat`` processes with the real schedule, on a Redis database of their own (db 1
of the session Redis: no worker consumes there, nothing runs). One timeline for the module:
two beats start with the nightly entry last run two days ago; the one firing is SIGKILLed; a
third beat starts; the one firing then is SIGSTOPped past the lock timeout and continued; the
broker is flushed. Every task-sent event is collected with the pid of the beat that sent it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import pytest
from beats import Sent, SentLog, set_last_run
from conftest import REDIS_PORT, REPO, SESSION_DIR, TEST_ENV

T = TypeVar("T")

pytestmark = [pytest.mark.slow]

TICK_S, LOCK_S = 1, 4  # CCCI_BEAT_MAX_INTERVAL_S, CCCI_BEAT_LOCK_TIMEOUT_S
INTERVALS = {"ccci.alerts.janitor": 2.0, "ccci.infra.sweep_watchdog": 3.0}
NIGHTLY = "ccci.infra.nightly_sweep"
HANDOVER_S = LOCK_S + TICK_S + 5  # lock expiry + one poll, and slack for a loaded machine
BROKER = f"redis://127.0.0.1:{REDIS_PORT}/1"
ENV = {"CCCI_BROKER_URL": BROKER, "CCCI_BEAT_MAX_INTERVAL_S": str(TICK_S),
       "CCCI_BEAT_LOCK_TIMEOUT_S": str(LOCK_S), "CCCI_JANITOR_INTERVAL_S": "2",
       "CCCI_SWEEP_WATCHDOG_S": "3"}


@dataclass
class Timeline:
    log: SentLog
    marks: dict[str, float] = field(default_factory=dict)  # event -> epoch s
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid

    def mark(self, what: str) -> float:
        self.marks[what] = time.time()
        return self.marks[what]

    def between(self, start: str, end: str | None = None) -> list[Sent]:
        stop = self.marks[end] if end else float("inf")
        return [s for s in list(self.log.sent) if self.marks[start] <= s.at < stop]


class Beats:
    """``celery beat`` processes started with ENV, each in its own process group."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, **TEST_ENV, **ENV, "PYTHONPATH": str(REPO)}

    def start(self, name: str) -> int:
        with open(SESSION_DIR / f"beat-ha-{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "beat",
                 "--loglevel=INFO"], cwd=REPO, env=self.env, stdout=log, stderr=log,
                start_new_session=True)
        self.procs[proc.pid] = proc
        return proc.pid

    def signal(self, pid: int, sig: int) -> None:
        os.killpg(pid, sig)
        if sig == signal.SIGKILL:
            self.procs[pid].wait(timeout=30)

    def stop(self) -> None:
        for pid, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(pid, signal.SIGCONT)
                os.killpg(pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def until(check: Callable[[], T | Literal[False] | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)
    return got


def first_from(tl: Timeline, start: str, pids: set[int]) -> Sent:
    return until(lambda: next((s for s in tl.between(start) if s.pid in pids), None),
                 HANDOVER_S + 10, f"a fire from {pids} after {start}")


@pytest.fixture(scope="module")
def timeline(redis_server: str) -> Iterator[Timeline]:
    """The module's timeline (see the module docstring)."""
    import redis
    from pydantic import SecretStr

    from ccci_tasks.celery_app import create_app
    from ccci_tasks.config import Settings

    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    app = create_app(Settings(broker_url=SecretStr(BROKER)))
    set_last_run(app, "nightly_sweep", datetime.now(UTC) - timedelta(days=2))
    tl = Timeline(SentLog(app).start())
    beats = Beats()
    try:
        tl.mark("start")
        a, b = beats.start("a"), beats.start("b")
        first = until(lambda: tl.log.of("ccci.alerts.janitor"), 60, "the first janitor fire")[0]
        holder = tl.pids["first"] = first.pid
        other = tl.pids["second"] = b if holder == a else a
        time.sleep(8)

        tl.mark("kill")
        beats.signal(holder, signal.SIGKILL)
        tl.marks["took_over"] = first_from(tl, "kill", {other}).at
        tl.pids["third"] = beats.start("c")
        time.sleep(6)

        stalled = tl.pids["stalled"] = other
        until(lambda: [s for s in tl.log.sent if s.pid == stalled
                       and s.at > time.time() - 0.5], 10, "a fire of the beat to stop")
        time.sleep(0.3)  # past its tick, into its sleep
        tl.mark("stop")
        beats.signal(stalled, signal.SIGSTOP)
        tl.marks["stop_took_over"] = first_from(tl, "stop", {tl.pids["third"]}).at
        time.sleep(max(0.0, tl.marks["stop"] + LOCK_S + 2 - time.time()))
        tl.mark("cont")
        beats.signal(stalled, signal.SIGCONT)
        time.sleep(8)

        tl.mark("flush")
        client.flushdb()
        tl.marks["flush_fired"] = first_from(tl, "flush", {stalled, tl.pids["third"]}).at
        time.sleep(8)
        tl.mark("end")
        yield tl
    finally:
        beats.stop()
        tl.log.stop()
        client.flushdb()
        client.close()


def test_a_missed_night_is_caught_up_once(timeline: Timeline) -> None:
    """The nightly entry last run two days ago fires one sweep, early, for both beats, and
    never again: not on the takeover, the stalled beat's return or the broker's flush."""
    nightly = timeline.log.of(NIGHTLY)
    assert len(nightly) == 1, nightly
    assert nightly[0].at - timeline.marks["start"] < 30
    assert "'scheduled': True" in nightly[0].kwargs


def test_each_interval_entry_fires_once_per_interval(timeline: Timeline) -> None:
    """Over the whole timeline no interval entry fires twice within half its interval, and
    between the events each fires about once per interval."""
    for task, every in INTERVALS.items():
        times = [s.at for s in timeline.log.of(task)]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps and min(gaps) >= every / 2, (task, gaps)
        steady = timeline.between("start", "kill")
        fired = len([s for s in steady if s.task == task])
        span = timeline.marks["kill"] - timeline.marks["start"]
        assert 1 <= fired <= span / every + 1, (task, fired, span)


def test_only_the_lock_holder_fires(timeline: Timeline) -> None:
    """Until it is killed only the first beat fires; then only the second; after the
    second is stopped only the third, also once the second runs again."""
    pids = timeline.pids
    assert {s.pid for s in timeline.between("start", "kill")} == {pids["first"]}
    assert {s.pid for s in timeline.between("kill", "stop")} == {pids["second"]}
    assert {s.pid for s in timeline.between("stop", "flush")} == {pids["third"]}


def test_a_killed_beat_is_taken_over_within_the_lock_timeout(timeline: Timeline) -> None:
    """SIGKILL of the firing beat: another fires within the lock timeout (+ one poll)."""
    took = timeline.marks["took_over"] - timeline.marks["kill"]
    print(f"takeover after SIGKILL: {took:.1f} s (lock {LOCK_S} s, tick {TICK_S} s)")
    assert took <= HANDOVER_S


def test_a_stalled_beat_steps_down(timeline: Timeline) -> None:
    """A firing beat stopped past the lock timeout is taken over, and fires nothing once
    it runs again: it finds the lock held and stands by."""
    took = timeline.marks["stop_took_over"] - timeline.marks["stop"]
    assert took <= HANDOVER_S
    assert not [s for s in timeline.between("cont") if s.pid == timeline.pids["stalled"]
                and s.at < timeline.marks["flush"]]


def test_a_flushed_broker_does_not_stop_beat(timeline: Timeline) -> None:
    """After FLUSHDB (a broker restarted without its data) beat takes its lock again,
    installs the schedule again and fires within a few seconds, from one beat only."""
    took = timeline.marks["flush_fired"] - timeline.marks["flush"]
    assert took <= HANDOVER_S
    after = timeline.between("flush", "end")
    assert len({s.pid for s in after}) == 1, after
    assert {s.task for s in after} >= {"ccci.alerts.janitor"}


def test_the_nightly_crontab_read_back_from_redis_keeps_the_timezone(
        redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nightly entry stored in Redis and read back by a beat is still CCCI_NIGHTLY_AT in
    CCCI_TIMEZONE: due at the same moment as the crontab of beat_schedule.py."""
    import redis
    from pydantic import SecretStr
    from redbeat.schedulers import RedBeatSchedulerEntry

    from beat_schedule import beat_schedule
    from ccci_tasks.celery_app import create_app
    from ccci_tasks.config import Settings, get_settings
    from ccci_tasks.constants import KEY_BEAT_PREFIX

    url = f"redis://127.0.0.1:{REDIS_PORT}/2"
    monkeypatch.setenv("CCCI_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("CCCI_NIGHTLY_AT", "02:30")
    get_settings.cache_clear()
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        settings = Settings(broker_url=SecretStr(url))
        app = create_app(settings)
        last = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
        set_last_run(app, "nightly_sweep", last)
        stored = RedBeatSchedulerEntry.from_key(KEY_BEAT_PREFIX + "nightly_sweep", app=app)
        fresh = beat_schedule(settings)["nightly_sweep"]["schedule"]
        fresh.app = app
        assert str(stored.schedule.tz) == "Europe/Berlin"

        def next_after(schedule: Any, when: datetime) -> datetime:
            start, delta, _ = schedule.remaining_delta(when)
            due: datetime = start + delta  # celery's schedules are untyped
            return due

        due = next_after(stored.schedule, stored.last_run_at)
        assert due == next_after(fresh, last)
        assert due.astimezone(UTC) == datetime(2026, 1, 21, 1, 30, tzinfo=UTC)  # 02:30 CET
    finally:
        client.flushdb()
        client.close()
        get_settings.cache_clear()
