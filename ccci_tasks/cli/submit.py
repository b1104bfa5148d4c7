"""Commands that put a run on the queue, and follow it: one per lane that declares one
(``Entry.command``: quick, cold, sweep, reconcile), and watch.

Each checks its request first (exit 2, nothing enqueued, on bad input), then fails fast when
the broker does not answer; with ``--wait`` it follows the run and exits by its verdict.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from redis.exceptions import RedisError

from ccci_tasks import broker, naming
from ccci_tasks.cli.app import (
    JSON,
    WAIT,
    Exit,
    emit,
    exits,
    load_run,
    load_settings,
    local_only,
    main,
    positive,
    state_root,
    timeout_option,
    verdict_exit,
)
from ccci_tasks.cli.output import duration, report_text, ts
from ccci_tasks.config import Settings
from ccci_tasks.errors import BrokerError, InvalidInput, WaitTimeout
from ccci_tasks.lanes.model import Lane
from ccci_tasks.lanes.registry import with_entry
from ccci_tasks.state.reports import RunReport, report_json

POLL_S = 0.5


def require_broker(settings: Settings) -> None:
    """Fail fast (exit 3) with a clear message when the broker does not answer."""
    try:
        broker.client(settings, timeout_s=broker.QUICK_TIMEOUT_S).ping()
    except RedisError as exc:
        raise BrokerError(
            f"the broker does not answer ({type(exc).__name__}); nothing was enqueued: "
            "check CCCI_BROKER_URL and that redis-server runs"
        ) from None


def follow(settings: Settings, run_id: naming.RunId, timeout_s: float,
           out: Callable[[str], None]) -> RunReport:
    """Print each step of the run as it starts and ends, until its verdict."""
    from ccci_tasks.runs import describe
    from ccci_tasks.state import reports

    deadline = time.monotonic() + timeout_s
    shown_started: set[tuple[str, str | None]] = set()
    shown_done: set[tuple[str, str | None]] = set()
    state_seen, warned = None, False
    store = reports.at(settings, broker.QUICK_TIMEOUT_S)
    while True:
        found = store.lookup(run_id)
        if found.broker_error is not None and not warned:
            warned = True
            local_only(settings, found.broker_error, "this host's copy of the run")
        report = found.record
        if report is not None:
            if report.state != state_seen and report.state != "finished":
                state_seen = report.state
                out(f"{ts(datetime.now())} {report.lane} {report.recipe or ''} {report.state}")
            for step in report.steps:
                key = (step.name, step.task_id)
                if key not in shown_done:
                    shown_done.add(key)
                    shown_started.add(key)
                    out(f"{ts(step.started_at)} {'ok  ' if step.ok else 'FAIL'} {step.name}"
                        f"{' (undo)' if step.undo else ''} {step.duration_s:.1f}s: "
                        f"{step.detail}")
            current = report.current
            if current is not None and (current.name, current.task_id) not in shown_started:
                shown_started.add((current.name, current.task_id))
                out(f"{ts(current.started_at)} -> {current.name}"
                    + (" (undo)" if current.undo else ""))
            if report.finished:
                out(f"{ts(report.finished_at)} verdict {report.verdict} after "
                    f"{duration(report)}: {report.reason or ''}")
                return report
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"the verdict of run {run_id}", timeout_s, describe(report))
        time.sleep(POLL_S)


def _enqueue(settings: Settings, send: Callable[[], Any], wait: bool, timeout: float,
             as_json: bool) -> None:
    require_broker(settings)
    run_id = naming.RunId(str(send().id))  # the Celery task id of the entry task
    if not wait:
        follow_cmd = f"ccci watch {run_id}"
        emit(as_json, {"run_id": run_id, "follow": follow_cmd},
             f"{run_id}\nfollow it: {follow_cmd}")
        return
    state_root(settings)
    report = follow(settings, run_id, timeout, lambda line: click.echo(line, err=True))
    emit(as_json, json.loads(report_json(report)), report_text(report))
    raise Exit(verdict_exit(report))


def lane_command(lane: Lane) -> click.Command:
    """The ``ccci`` command of ``lane``, made from its ``Entry.command``: its arguments, then
    ``--wait``, ``--timeout`` and ``--json``. It checks the request (exit 2, nothing
    enqueued), then queues the run through the lane's entry task."""
    entry = lane.entry
    if entry is None or entry.command is None:
        raise InvalidInput(f"lane {lane.name!r} declares no command")
    command = entry.command
    params = inspect.signature(entry.request).parameters

    def enqueue(wait: bool, timeout: float, as_json: bool, **given: Any) -> None:
        with exits():
            settings = load_settings()
            positive(timeout)
            request = {name: given[name] for name in params if name in given}
            command.check(settings, entry.request(**request))
            from ccci_tasks.tasks.lanes import entry_of

            task = entry_of(lane)
            args = tuple(request[name] for name in params if name in request)
            _enqueue(settings, lambda: task.delay(*args), wait, timeout, as_json)

    enqueue.__doc__ = command.help
    decorated: Callable[..., Any] = enqueue
    for option in reversed((WAIT, timeout_option(command.timeout_s), JSON)):
        decorated = option(decorated)
    for arg in reversed(command.arguments):
        param = params[arg.param]
        if arg.option is None:
            decorated = click.argument(arg.param, metavar=arg.metavar)(decorated)
        else:
            default = None if param.default is inspect.Parameter.empty else param.default
            decorated = click.option(arg.option, arg.param, default=default,
                                     help=arg.help)(decorated)
    made: click.Command = main.command(name=command.name, help=command.help)(decorated)
    return made


LANE_COMMANDS: dict[str, click.Command] = {
    lane.name: lane_command(lane) for lane in with_entry()
    if lane.entry is not None and lane.entry.command is not None
}


@main.command()
@click.argument("run_id")
@timeout_option(6 * 3600.0)
def watch(run_id: str, timeout: float) -> None:
    """Follow a run live: each step as it starts and ends, with durations."""
    with exits():
        settings = load_settings()
        positive(timeout)
        report = follow(settings, load_run(settings, run_id).run_id, timeout, click.echo)
        raise Exit(verdict_exit(report))
