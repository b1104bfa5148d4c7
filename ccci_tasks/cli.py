"""The ``ccci`` command (INTERFACES "CLI").

Exit codes, for every command: 0 ok / green; 1 the run finished red (or a snapshot does not
verify); 2 bad input or usage, nothing was done; 3 an infrastructure error or a timeout.
``--json`` prints one JSON document on stdout; messages and live progress go to stderr.

Settings come from the ``CCCI_*`` environment. A shell that sets none (a new shell in the
checkout after ``make up``) gets the ``run/ccci.env`` that ``make up`` wrote, found from the
current directory upwards.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from ccci_tasks import constants as c
from ccci_tasks import naming
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import (
    BrokerError,
    CcciError,
    ConfigError,
    InvalidInput,
    SnapshotError,
    StateError,
    WaitTimeout,
)
from ccci_tasks.state.reports import RunReport, report_json

EXIT_BY_VERDICT = {"pass": c.EXIT_OK, "fail": c.EXIT_RED, "error": c.EXIT_INFRA}
ENV_FILE = Path("run") / "ccci.env"
POLL_S = 0.5


# ----------------------------------------------------------------------------- plumbing


class Exit(Exception):
    """Leave with this code (after the message, if any, was printed)."""

    def __init__(self, code: int) -> None:
        self.code = code


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"ccci: {message}", err=True)
    raise Exit(code)


@contextmanager
def _exits() -> Iterator[None]:
    """Map our errors (and broker failures) to the exit codes."""
    try:
        yield
    except (InvalidInput, ConfigError) as exc:
        _fail(c.EXIT_USAGE, str(exc))
    except CcciError as exc:
        _fail(c.EXIT_INFRA, str(exc))
    except (OSError, KombuOperationalError, RedisError) as exc:
        _fail(c.EXIT_INFRA, f"broker or engine unreachable ({type(exc).__name__}): check "
                            "CCCI_BROKER_URL and that redis-server and dockerd run")


def find_env_file(start: Path) -> Path | None:
    """``run/ccci.env`` in ``start`` or the nearest parent that has one."""
    for folder in (start, *start.parents):
        candidate = folder / ENV_FILE
        if candidate.is_file():
            return candidate
    return None


def _load_env_file(path: Path) -> None:
    from ccci_tasks.platform.envfile import parse_env

    for key, value in parse_env(path.read_text(encoding="utf-8")).items():
        if key.startswith("CCCI_"):
            os.environ.setdefault(key, value)


def _settings() -> Settings:
    if not any(key.startswith("CCCI_") for key in os.environ):
        found = find_env_file(Path.cwd())
        if found is not None:
            _load_env_file(found)
            get_settings.cache_clear()
    return get_settings()


def _state(settings: Settings) -> Path:
    """The state root; a clear error when it does not exist."""
    if not settings.state_dir.is_dir():
        raise StateError(
            f"the state root {settings.state_dir} does not exist: set CCCI_STATE_DIR (or "
            "run in the checkout where `make up` wrote run/ccci.env)")
    return settings.state_dir


def _emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)


def _require_broker(settings: Settings) -> None:
    """Fail fast (exit 3) with a clear message when the broker does not answer."""
    import redis

    try:
        redis.Redis.from_url(settings.broker_url.get_secret_value(), socket_timeout=3,
                             socket_connect_timeout=3).ping()
    except RedisError as exc:
        raise BrokerError(
            f"the broker does not answer ({type(exc).__name__}); nothing was enqueued: "
            "check CCCI_BROKER_URL and that redis-server runs"
        ) from None


def _positive(timeout: float) -> float:
    if not timeout > 0:
        raise InvalidInput(f"--timeout {timeout:g} is invalid: give a number of seconds > 0")
    return timeout


def _load(settings: Settings, run_id: str) -> RunReport:
    from ccci_tasks.state.reports import load_report

    naming.validate_run_id(run_id)
    report = load_report(_state(settings), run_id)
    if report is None:
        raise InvalidInput(f"no run {run_id!r} under {settings.state_dir}/runs; see "
                           "`ccci runs list`")
    return report


# ----------------------------------------------------------------------------- reports


def _ts(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _duration(report: RunReport) -> str:
    seconds = report.duration_s()
    return f"{seconds:.1f}s" if seconds is not None else "-"


def _report_text(report: RunReport) -> str:
    """The run's header, then its timeline: start offset, duration, step, detail."""
    verdict = report.verdict or report.state
    lines = [f"run {report.run_id}: {report.lane} {report.recipe or '-'} "
             f"ref={report.ref or 'latest'}",
             f"  domain:   {report.domain or '-'}",
             f"  started:  {_ts(report.started_at)}  duration: {_duration(report)}",
             f"  verdict:  {verdict}" + (f" - {report.reason}" if report.reason else "")]
    extra = report.extra
    for key in ("outcome", "from", "to", "skipped", "disk_used_pct", "pruned_stale"):
        if key in extra and extra[key] not in (None, []):
            lines.append(f"  {key + ':':<9} {extra[key]}")
    for field in ("infra", "recipes"):
        for entry in extra.get(field, []):
            name = entry.get("app") or entry.get("recipe")
            lines.append(f"  {field[:-1] if field == 'recipes' else 'infra'} {name}: "
                         f"{entry.get('outcome') or entry.get('verdict') or 'running'} "
                         f"({entry.get('run_id')})")
    origin = report.steps[0].started_at if report.steps else None
    if report.steps:
        lines.append("  timeline:")
    for step in report.steps:
        offset = (step.started_at - origin).total_seconds() if origin else 0.0
        mark = "ok  " if step.ok else "FAIL"
        undo = " (undo)" if step.undo else ""
        lines.append(f"  +{offset:7.1f}s {step.duration_s:7.1f}s {mark} "
                     f"{step.name}{undo}: {step.detail}")
    if report.current is not None:
        lines.append(f"  now running: {report.current.name}")
    return "\n".join(lines)


def _verdict_exit(report: RunReport) -> int:
    if report.verdict == "error" and (report.reason or "").startswith("refused:"):
        return c.EXIT_USAGE
    return EXIT_BY_VERDICT.get(report.verdict or "error", c.EXIT_INFRA)


def follow(settings: Settings, run_id: str, timeout_s: float,
           out: Callable[[str], None]) -> RunReport:
    """Print each step of the run as it starts and ends, until its verdict."""
    from ccci_tasks.runs import describe
    from ccci_tasks.state.reports import load_report

    deadline = time.monotonic() + timeout_s
    shown_started: set[tuple[str, str | None]] = set()
    shown_done: set[tuple[str, str | None]] = set()
    state_seen = None
    while True:
        report = load_report(settings.state_dir, run_id)
        if report is not None:
            if report.state != state_seen and report.state != "finished":
                state_seen = report.state
                out(f"{_ts(datetime.now())} {report.lane} {report.recipe or ''} {report.state}")
            for step in report.steps:
                key = (step.name, step.task_id)
                if key not in shown_done:
                    shown_done.add(key)
                    shown_started.add(key)
                    out(f"{_ts(step.started_at)} {'ok  ' if step.ok else 'FAIL'} {step.name}"
                        f"{' (undo)' if step.undo else ''} {step.duration_s:.1f}s: "
                        f"{step.detail}")
            current = report.current
            if current is not None and (current.name, current.task_id) not in shown_started:
                shown_started.add((current.name, current.task_id))
                out(f"{_ts(current.started_at)} -> {current.name}"
                    + (" (undo)" if current.undo else ""))
            if report.finished:
                out(f"{_ts(report.finished_at)} verdict {report.verdict} after "
                    f"{_duration(report)}: {report.reason or ''}")
                return report
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"the verdict of run {run_id}", timeout_s, describe(report))
        time.sleep(POLL_S)


def _enqueue(settings: Settings, send: Callable[[], Any], wait: bool, timeout: float,
             as_json: bool) -> None:
    _require_broker(settings)
    run_id = str(send().id)
    if not wait:
        follow_cmd = f"ccci watch {run_id}"
        _emit(as_json, {"run_id": run_id, "follow": follow_cmd},
              f"{run_id}\nfollow it: {follow_cmd}")
        return
    _state(settings)
    report = follow(settings, run_id, timeout, lambda line: click.echo(line, err=True))
    _emit(as_json, json.loads(report_json(report)), _report_text(report))
    raise Exit(_verdict_exit(report))


def _check_request(settings: Settings, recipe: str, ref: str | None) -> None:
    from ccci_tasks.lanes.recipes import check_request

    check_request(settings, recipe, ref)


# ----------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ccci-tasks: CI runs of Co-op Cloud recipes on one swarm host."""


WAIT = click.option("--wait", is_flag=True, help="Follow the run and exit by its verdict.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _timeout(default: float) -> Callable[[Any], Any]:
    return click.option("--timeout", default=default, show_default=True, type=float,
                        help="Seconds to wait (with --wait).")


@main.command()
@click.argument("recipe")
@click.argument("ref")
@WAIT
@_timeout(3600.0)
@JSON
def quick(recipe: str, ref: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Enqueue a quick run: RECIPE's canonical upgraded in place to REF."""
    with _exits():
        settings = _settings()
        _positive(timeout)
        _check_request(settings, recipe, ref)
        from ccci_tasks.tasks.lanes import quick_run

        _enqueue(settings, lambda: quick_run.delay(recipe, ref), wait, timeout, as_json)


@main.command()
@click.argument("recipe")
@click.option("--ref", default=None, help="Git ref or version tag (default: latest).")
@WAIT
@_timeout(3600.0)
@JSON
def cold(recipe: str, ref: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Enqueue a full cold run of RECIPE (latest unless --ref)."""
    with _exits():
        settings = _settings()
        _positive(timeout)
        _check_request(settings, recipe, ref)
        from ccci_tasks.tasks.lanes import cold_run

        _enqueue(settings, lambda: cold_run.delay(recipe, ref), wait, timeout, as_json)


@main.command()
@WAIT
@_timeout(6 * 3600.0)
@JSON
def sweep(wait: bool, timeout: float, as_json: bool) -> None:
    """Fire the nightly sweep now (infra, a cold run of every enrolled recipe, prune)."""
    with _exits():
        settings = _settings()
        _positive(timeout)
        from ccci_tasks.tasks.infra import nightly_sweep

        _enqueue(settings, lambda: nightly_sweep.delay(), wait, timeout, as_json)


@main.command()
@click.argument("app_name", metavar="APP")
@WAIT
@_timeout(3600.0)
@JSON
def reconcile(app_name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Reconcile the live-warm APP (one of CCCI_INFRA_APPS) to its newest version."""
    with _exits():
        settings = _settings()
        _positive(timeout)
        naming.validate_recipe(app_name)
        if app_name not in settings.infra_app_list():
            known = ", ".join(settings.infra_app_list()) or "none"
            raise InvalidInput(f"unknown app {app_name!r}: not in CCCI_INFRA_APPS ({known})")
        from ccci_tasks.lanes.recipes import recipe_repo

        recipe_repo(settings, app_name)
        from ccci_tasks.tasks.infra import warm_reconcile

        _enqueue(settings, lambda: warm_reconcile.delay(app_name), wait, timeout, as_json)


@main.command()
@click.argument("run_id")
@_timeout(6 * 3600.0)
def watch(run_id: str, timeout: float) -> None:
    """Follow a run live: each step as it starts and ends, with durations."""
    with _exits():
        settings = _settings()
        _positive(timeout)
        _load(settings, run_id)
        report = follow(settings, run_id, timeout, click.echo)
        raise Exit(_verdict_exit(report))


@main.command()
@JSON
def status(as_json: bool) -> None:
    """Slots in use / MAX_TESTS, runs in flight, queued runs in order, workers seen."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.celery_app import app

    with _exits():
        settings = _settings()
        _state(settings)
        slots = Slots.from_settings(settings)
        occupying, pending, parked = slots.occupying(), slots.pending(), slots.parked()
        try:
            workers = sorted(name for reply in (app.control.ping(timeout=1.0) or [])
                             for name in reply)
        except (OSError, KombuOperationalError, RedisError):
            workers = []

        def row(run_id: str, spec: Any, state: str) -> dict[str, Any]:
            return {"run_id": run_id, "state": state,
                    **({"lane": spec.lane, "recipe": spec.recipe, "ref": spec.ref,
                        "resources": [str(r) for r in spec.resources]} if spec else {})}

        in_flight = [row(x.run_id, x.spec, x.state) for x in occupying]
        data = {
            "max_tests": settings.max_tests,
            "slots_in_use": sum(1 for x in occupying if x.spec and x.spec.holds_slot),
            "in_flight": in_flight,
            "queued": [row(s.run_id, s, "queued") for s in pending],
            "parked": parked,
            "workers": workers,
        }
        lines = [f"slots: {data['slots_in_use']}/{settings.max_tests} in use"]
        lines += [f"  {r['state']:<8} {r['run_id']} {r.get('lane', '?')} {r.get('recipe', '?')}"
                  for r in in_flight]
        lines += [f"  queued   {s.run_id} {s.lane} {s.recipe}" for s in pending]
        lines += [f"  parked   {run_id} (waits for its runs)" for run_id in parked]
        lines.append("workers: " + (", ".join(workers) or "none answered"))
        _emit(as_json, data, "\n".join(lines))


@main.group()
def runs() -> None:
    """Run reports."""


@runs.command("list")
@JSON
def runs_list(as_json: bool) -> None:
    """Every run report, oldest first: queued, running or with its verdict."""
    from ccci_tasks.state.reports import list_reports

    with _exits():
        found = list_reports(_state(_settings()))
        text = "\n".join(
            f"{r.run_id} {r.lane:<9} {r.recipe or '-':<20} {(r.verdict or r.state):<8} "
            f"{_ts(r.started_at)} {_duration(r):>8} {(r.reason or '')[:80]}" for r in found)
        _emit(as_json, [{**json.loads(report_json(r)), "state": r.state,
                         "duration_s": r.duration_s()} for r in found], text or "no runs")


@runs.command("show")
@click.argument("run_id")
@JSON
def runs_show(run_id: str, as_json: bool) -> None:
    """One run report with its timeline."""
    with _exits():
        report = _load(_settings(), run_id)
        _emit(as_json, json.loads(report_json(report)), _report_text(report))


@main.group()
def canonical() -> None:
    """Data-warm canonicals: registry and snapshot."""


@canonical.command("list")
@JSON
def canonical_list(as_json: bool) -> None:
    """Every canonical in the registry."""
    from ccci_tasks.state.canonical import list_registries

    with _exits():
        found = list_registries(_state(_settings()))
        _emit(as_json, [x.to_json() for x in found],
              "\n".join(f"{x.recipe:<20} {x.version:<16} {x.status:<10} {x.ts}" for x in found)
              or "no canonicals")


def _registry(settings: Settings, recipe: str) -> Any:
    from ccci_tasks.state import canonical as reg

    naming.validate_recipe(recipe)
    entry = reg.read_registry(_state(settings), recipe)
    if entry is None:
        raise InvalidInput(f"no canonical for {recipe!r}; see `ccci canonical list`")
    return entry


@canonical.command("show")
@click.argument("recipe")
@JSON
def canonical_show(recipe: str, as_json: bool) -> None:
    """A recipe's registry entry and snapshot manifest."""
    from ccci_tasks.state import canonical as reg
    from ccci_tasks.state import warmsnap

    with _exits():
        settings = _settings()
        entry = _registry(settings, recipe)
        manifest = warmsnap.read_current(settings.state_dir, recipe)
        why = reg.quarantined(settings.state_dir, recipe)
        data = {"registry": entry.to_json(),
                "snapshot": manifest.to_json() if manifest is not None else None,
                "quarantined": why}
        lines = [f"{entry.recipe}: {entry.status} {entry.version} (commit {entry.commit}) "
                 f"at {entry.domain}, since {entry.ts}"]
        if why:
            lines.append(f"  QUARANTINED: {why}")
        if manifest is None:
            lines.append("  no snapshot")
        else:
            lines.append(f"  snapshot of {manifest.version} taken {manifest.taken_at}:")
            lines += [f"    {v.name}: {v.file} {v.size_bytes} bytes sha256 {v.sha256}"
                      for v in manifest.volumes]
        _emit(as_json, data, "\n".join(lines))


@canonical.command("verify")
@click.argument("recipe")
@JSON
def canonical_verify(recipe: str, as_json: bool) -> None:
    """Re-hash the snapshot against its manifest (exit 1 when it does not match)."""
    from ccci_tasks.state import warmsnap

    with _exits():
        settings = _settings()
        _registry(settings, recipe)
        try:
            manifest = warmsnap.verify(settings.state_dir, recipe)
        except SnapshotError as exc:
            _emit(as_json, {"recipe": recipe, "verified": False, "why": str(exc)},
                  f"{recipe}: snapshot does NOT verify: {exc}")
            raise Exit(c.EXIT_RED) from exc
        _emit(as_json, {"recipe": recipe, "verified": True, "version": manifest.version,
                        "volumes": [v.name for v in manifest.volumes]},
              f"{recipe}: snapshot of {manifest.version} verified ({len(manifest.volumes)} "
              "volume tars match their sha256)")


@main.command()
@JSON
def enrolled(as_json: bool) -> None:
    """Recipes with WARM_CANONICAL = True."""
    from ccci_tasks.state.meta import enrolled_recipes

    with _exits():
        found = enrolled_recipes(_settings().tests_dir)
        _emit(as_json, found, "\n".join(found) or "no enrolled recipes")


@main.command()
@click.option("--seen", is_flag=True, help="Relayed alerts instead of pending ones.")
@JSON
def alerts(seen: bool, as_json: bool) -> None:
    """Pending (or relayed) alerts."""
    from ccci_tasks.state import alerts as outbox

    with _exits():
        state = _state(_settings())
        found = outbox.seen(state) if seen else outbox.pending(state)
        _emit(as_json, [a.to_json() for a in found],
              "\n".join(f"{a.ts} {a.kind:<16} {a.app:<20} {a.summary}" for a in found)
              or ("no relayed alerts" if seen else "no pending alerts"))


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what would go and why; remove nothing.")
@JSON
def prune(dry_run: bool, as_json: bool) -> None:
    """The disk prune: dangling images, stopped containers, old build cache, gated."""
    from ccci_tasks import diskprune
    from ccci_tasks.admission import Slots

    with _exits():
        settings = _settings()
        in_flight = [lease.run_id for lease in Slots.from_settings(settings).occupying()]
        result = diskprune.run(settings, in_flight, dry_run=dry_run)
        _emit(as_json, result, diskprune.render_text(result))


@main.group()
def realms() -> None:
    """Per-run Keycloak realms."""


@realms.command("reap")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@JSON
def realms_reap(dry_run: bool, as_json: bool) -> None:
    """Delete the per-run realms whose run is over (master and other shapes never)."""
    from ccci_tasks.tasks.infra import reap_realms

    with _exits():
        result = reap_realms(_settings(), dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        lines = [f"{verb} {len(result['deleted'])} realm(s), kept {len(result['kept'])}"]
        lines += [f"  {verb} {name}" for name in result["deleted"]]
        _emit(as_json, result, "\n".join(lines))


@main.command()
@JSON
def check(as_json: bool) -> None:
    """Exit 0 only if the broker, the Docker engine and the state root are usable."""
    import redis

    with _exits():
        settings = _settings()
    results: dict[str, dict[str, Any]] = {}
    try:
        redis.Redis.from_url(settings.broker_url.get_secret_value(),
                             socket_timeout=3, socket_connect_timeout=3).ping()
        results["broker"] = {"ok": True, "detail": "answers"}
    except RedisError as exc:
        results["broker"] = {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    try:
        from ccci_tasks.platform.docker_state import docker_client

        swarm = docker_client(settings).info().get("Swarm", {}).get("LocalNodeState")
        results["docker"] = {"ok": swarm == "active",
                             "detail": "swarm active" if swarm == "active"
                             else f"engine answers but swarm is {swarm!r}, not active"}
    except CcciError as exc:
        results["docker"] = {"ok": False, "detail": str(exc)}
    state = settings.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".ccci-check"
        probe.write_text("ok")
        probe.unlink()
        free = shutil.disk_usage(state).free
        results["state_root"] = {"ok": True, "detail": f"{state}, {free // 2**20} MiB free"}
    except OSError as exc:
        results["state_root"] = {"ok": False, "detail": f"{state}: not writable "
                                                        f"({exc.strerror})"}
    ok = all(r["ok"] for r in results.values())
    if as_json:
        _emit(True, {"ok": ok, **results}, "")
    else:
        for name, r in results.items():
            click.echo(f"{name}: {'ok' if r['ok'] else 'FAIL'} ({r['detail']})",
                       err=not r["ok"])
    raise Exit(c.EXIT_OK if ok else c.EXIT_INFRA)


@main.group()
def bridge() -> None:
    """The forge webhook bridge."""


@bridge.command("serve")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where to listen (default CCCI_BRIDGE_LISTEN).")
def bridge_serve(listen: str | None) -> None:
    """Take Gitea/Forgejo webhooks at POST /hooks/forge (`!testme` on a recipe PR)."""
    from ccci_tasks import forge

    with _exits():
        forge.serve(_settings(), listen)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; return its exit code."""
    try:
        returned = main.main(args=argv, prog_name="ccci", standalone_mode=False)
    except Exit as done:
        return done.code
    except click.exceptions.Abort:
        click.echo("ccci: aborted", err=True)
        return c.EXIT_INFRA
    except click.UsageError as exc:
        exc.show()
        return c.EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return c.EXIT_USAGE
    return returned if isinstance(returned, int) else c.EXIT_OK


def entry() -> None:
    """The console script."""
    sys.exit(run())


if __name__ == "__main__":
    entry()
