"""Start order is not a crash loop (R12.2): the rule as a table, and clean stops as data."""

from __future__ import annotations

from typing import Any

import pytest

from ccci_tasks.errors import UncleanStop
from ccci_tasks.naming import Domain
from ccci_tasks.platform.base import ContainerStop, StopReport
from ccci_tasks.platform.startorder import Failed, ServiceProgress, counted_failures
from ccci_tasks.platform.stops import Running, classify

S = 1_000_000_000  # one second in ns
APP = Domain("warm-x.ci.localhost")


def fails(*seconds: float, state: str = "failed") -> tuple[Failed, ...]:
    return tuple(Failed(int(t * S), state) for t in seconds)


def svc(name: str, failures: tuple[Failed, ...] = (), up: float | None = 0.0,
        healthchecked: bool = False) -> ServiceProgress:
    return ServiceProgress(name, failures, None if up is None else int(up * S), healthchecked)


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        # one service: every failure counts, as before
        ([svc("app", fails(1, 2, 3), up=None)], {"app": (3, 0)}),
        # the app fails while its database (healthchecked) starts; the db is up at 10 s
        ([svc("app", fails(1, 3, 5, 7), up=11), svc("db", up=10, healthchecked=True)],
         {"app": (0, 4), "db": (0, 0)}),
        # the database still starting (no running task yet, no failure): nothing counts
        ([svc("app", fails(1, 3, 5), up=None), svc("db", up=None, healthchecked=True)],
         {"app": (0, 3), "db": (0, 0)}),
        # the app keeps failing once the database is up: those failures count
        ([svc("app", fails(1, 3, 12, 14, 16), up=None), svc("db", up=10, healthchecked=True)],
         {"app": (3, 2), "db": (0, 0)}),
        # a database without a healthcheck: up DEPENDENCY_SETTLE_S (10 s) after it started
        ([svc("app", fails(3, 6, 9, 12), up=13), svc("db", up=1)], {"app": (1, 3), "db": (0, 0)}),
        # the database itself crash-loops: it excuses nobody, and nobody excuses it
        ([svc("app", fails(1, 2, 3), up=None), svc("db", fails(1.5, 2.5, 3.5), up=None)],
         {"app": (3, 0), "db": (3, 0)}),
        # a worker waiting for the app's migration; the app is up at 4 s (healthchecked
        # worker and app are not; the app's settle applies to the worker's failures)
        ([svc("app", fails(1), up=4), svc("worker", fails(2, 5, 9), up=16),
          svc("db", up=0.5, healthchecked=True)],
         {"app": (0, 1), "worker": (0, 3), "db": (0, 0)}),
        # a rejected task (missing image, missing secret) always counts
        ([svc("app", fails(1, 2, 3, state="rejected"), up=None),
          svc("db", up=None, healthchecked=True)], {"app": (3, 0), "db": (0, 0)}),
        # the database restarted at 20 s: the app's failures before that are excused
        ([svc("app", fails(12, 14, 21), up=None), svc("db", up=20, healthchecked=True)],
         {"app": (1, 2), "db": (0, 0)}),
    ],
)
def test_counted_failures(services: list[ServiceProgress],
                          expected: dict[str, tuple[int, int]]) -> None:
    """Failures count only once every other service is up (and has been since)."""
    assert counted_failures(services) == expected


# --------------------------------------------------------------------------- clean stops

RUNNING = Running("c0ffee" * 10, "db", 10.0, ("s_postgres",))


@pytest.mark.parametrize(
    ("events", "exit_code", "killed"),
    [
        ([("kill", {"signal": "2"}), ("die", {"exitCode": "0"}), ("destroy", {})], 0, None),
        ([("kill", {"signal": "15"}), ("die", {"exitCode": "143"})], 143, None),
        ([("kill", {"signal": "2"}), ("kill", {"signal": "9"}), ("die", {"exitCode": "137"})],
         137, "killed with SIGKILL after its stop grace period"),
        ([("oom", {}), ("die", {"exitCode": "137"})], 137, "killed by the kernel (out of memory)"),
        ([("kill", {"signal": "2"}), ("die", {"exitCode": "137"})], 137,
         "exited with code 137 (SIGKILL from outside the engine)"),
        ([("kill", {"signal": "2"})], None, "its end was not seen (no 'die' event)"),
        ([], None, "its end was not seen (no 'die' event)"),
    ],
)
def test_classify_a_stop(events: list[tuple[str, dict[str, str]]], exit_code: int | None,
                         killed: str | None) -> None:
    """A container exited by itself unless the engine killed it (SIGKILL after the grace
    period), the kernel did (OOM), it died of SIGKILL, or its end was not seen."""
    stop = classify(RUNNING, events)
    assert (stop.exit_code, stop.killed) == (exit_code, killed)
    assert stop.volumes == ("s_postgres",) and stop.grace_s == 10.0


def test_only_a_killed_container_with_a_volume_is_unclean() -> None:
    """A killed app that mounts no volume leaves no data behind; a killed database does."""
    app = ContainerStop("app", "a" * 64, 5.0, 137, "killed with SIGKILL after ...", ())
    db_ok = ContainerStop("db", "b" * 64, 10.0, 0, None, ("s_pg",))
    db_killed = ContainerStop("db", "b" * 64, 10.0, 137,
                              "killed with SIGKILL after its stop grace period", ("s_pg",))
    StopReport(True, (app, db_ok), watched=True).require_clean(APP, "take a snapshot")
    with pytest.raises(UncleanStop, match=r"service db \(container bbbbbbbbbbbb\) did not stop "
                                          r"by itself within its stop grace period of 10 s"):
        StopReport(True, (app, db_killed), watched=True).require_clean(APP, "snapshot")
    with pytest.raises(UncleanStop, match=r"service db .* stop grace period of 10 s") as info:
        StopReport(True, (app, db_killed), watched=True).require_clean(APP, "snapshot")
    assert info.value.killed
    for unknown in (StopReport(True, (db_ok,), watched=False), StopReport(False),
                    StopReport(True, (), watched=True)):  # nothing ran: a stop cut off?
        with pytest.raises(UncleanStop, match=r"not watched|no container of it was running") \
                as info:
            unknown.require_clean(APP, "snapshot")
        assert not info.value.killed


# --------------------------------------------------------------------------- the disk prune


def _service(sid: str, name: str, stack: str, healthcheck: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": "ccci/debian-pg:15"}
    if healthcheck:
        container["Healthcheck"] = {"Test": ["CMD", "pg_isready"]}
    return {"ID": sid, "UpdatedAt": "2026-01-01T00:00:00Z",
            "Spec": {"Name": name, "Labels": {"com.docker.stack.namespace": stack},
                     "Mode": {"Replicated": {"Replicas": 1}},
                     "TaskTemplate": {"ContainerSpec": container}},
            "ServiceStatus": {"RunningTasks": 0, "DesiredTasks": 1}}


def _task(sid: str, state: str, at_s: int, desired: str = "running") -> dict[str, Any]:
    stamp = f"2026-01-01T00:00:{at_s:02d}Z"
    return {"ServiceID": sid, "CreatedAt": stamp, "UpdatedAt": stamp, "DesiredState": desired,
            "Status": {"State": state, "Timestamp": stamp}}


class _Api:
    api_version = "1.41"

    def __init__(self, services: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> None:
        self._services, self._tasks = services, tasks

    def services(self, status: bool = False) -> list[dict[str, Any]]:
        return self._services

    def tasks(self) -> list[dict[str, Any]]:
        return self._tasks


class _Client:
    def __init__(self, services: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> None:
        self.api = _Api(services, tasks)


@pytest.mark.parametrize(
    ("db_tasks", "crash_looping"),
    [
        ([("starting", 1)], False),  # the database still starts: the app is converging
        ([("running", 1)], True),  # it runs since before the app's failures: a crash loop
        ([("running", 20)], False),  # it came up after them: start order
    ],
)
def test_the_prune_names_a_crash_loop_by_the_same_rule(
    db_tasks: list[tuple[str, int]], crash_looping: bool
) -> None:
    """The disk prune's "crash-looping" (which does not hold the prune back) uses the start-
    order rule too: an app restarting while its database starts is converging."""
    from datetime import UTC, datetime

    from ccci_tasks.diskprune import Facts, _gates
    from ccci_tasks.platform.engine_objects import _services

    services = [_service("a", "s_app", "s", False), _service("d", "s_db", "s", True)]
    tasks = [_task("a", "failed", t) for t in (5, 7, 9)] + [_task("d", s, t) for s, t in db_tasks]
    found, changed = _services(_Client(services, tasks), with_status=True)
    app = next(s for s in found if s.name == "s_app")
    assert (app.failed_tasks, app.start_failures) == ((3, 0) if crash_looping else (0, 3))
    facts = Facts(90.0, 80, (), found, (), (), (), None, changed)
    _, why = _gates(facts, datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    assert ("crash-looping" in why) is crash_looping, why
