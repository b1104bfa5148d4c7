"""The ``ccci`` command. Exit codes: 0 ok/green, 1 red, 2 bad input, 3 infrastructure/timeout."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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
    InfraError,
    InvalidInput,
    StateError,
)
from ccci_tasks.state.reports import RunReport, report_json

EXIT_BY_VERDICT = {"pass": c.EXIT_OK, "fail": c.EXIT_RED, "error": c.EXIT_INFRA}


def _emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)


@contextmanager
def _exits() -> Iterator[None]:
    """Map our errors (and broker failures) to the INTERFACES exit codes."""
    try:
        yield
    except (InvalidInput, ConfigError) as exc:
        click.echo(f"ccci: {exc}", err=True)
        sys.exit(c.EXIT_USAGE)
    except (InfraError, StateError) as exc:
        click.echo(f"ccci: {exc}", err=True)
        sys.exit(c.EXIT_INFRA)
    except CcciError as exc:
        click.echo(f"ccci: {exc}", err=True)
        sys.exit(c.EXIT_INFRA)
    except (OSError, KombuOperationalError, RedisError) as exc:
        click.echo(f"ccci: broker or engine unreachable ({type(exc).__name__}): "
                   "check CCCI_BROKER_URL and that redis-server runs", err=True)
        sys.exit(c.EXIT_INFRA)


def _settings() -> Settings:
    return get_settings()


def _report_text(report: RunReport) -> str:
    lines = [f"run {report.run_id}: {report.lane} {report.recipe} ref={report.ref or 'latest'}",
             f"  domain:  {report.domain}",
             f"  verdict: {report.verdict or 'running'}" + (f" — {report.reason}"
                                                          if report.reason else "")]
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        lines.append(f"  {mark} {step.name:<18} {step.duration_s:7.1f}s  {step.detail}")
    return "\n".join(lines)


def _verdict_exit(report: RunReport) -> int:
    if report.verdict == "error" and (report.reason or "").startswith("refused:"):
        return c.EXIT_USAGE
    return EXIT_BY_VERDICT.get(report.verdict or "error", c.EXIT_INFRA)


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


def _enqueue(send: Callable[[], Any], wait: bool, timeout: float, as_json: bool) -> None:
    from ccci_tasks.runs import wait as wait_for

    with _exits():
        _require_broker(_settings())
        result = send()
        run_id = result.id
        if not wait:
            _emit(as_json, {"run_id": run_id}, run_id)
            return
        report = wait_for(run_id, timeout)
        _emit(as_json, json.loads(report_json(report)), _report_text(report))
        sys.exit(_verdict_exit(report))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ccci-tasks: CI runs of Co-op Cloud recipes on one swarm host."""


@main.command()
@click.argument("recipe")
@click.argument("ref")
@click.option("--wait", is_flag=True, help="Wait for the verdict and exit by it.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def quick(recipe: str, ref: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Enqueue a quick run: RECIPE's canonical upgraded in place to REF."""
    with _exits():
        naming.validate_recipe(recipe)
        naming.validate_ref(ref)
    from ccci_tasks.tasks.lanes import quick_run

    _enqueue(lambda: quick_run.delay(recipe, ref), wait, timeout, as_json)


@main.command()
@click.argument("recipe")
@click.option("--ref", default=None, help="Git ref to test (default: latest version).")
@click.option("--wait", is_flag=True, help="Wait for the verdict and exit by it.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def cold(recipe: str, ref: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Enqueue a full cold run of RECIPE (latest unless --ref)."""
    with _exits():
        naming.validate_recipe(recipe)
        if ref is not None:
            naming.validate_ref(ref)
    from ccci_tasks.tasks.lanes import cold_run

    _enqueue(lambda: cold_run.delay(recipe, ref), wait, timeout, as_json)


@main.command()
@click.argument("app_name", metavar="APP")
@click.option("--wait", is_flag=True, help="Wait for the outcome and exit by it.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def reconcile(app_name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Reconcile the live-warm APP (one of CCCI_INFRA_APPS) to its newest version."""
    with _exits():
        settings = _settings()
        naming.validate_recipe(app_name)
        if app_name not in settings.infra_app_list():
            known = ", ".join(settings.infra_app_list()) or "none"
            raise InvalidInput(f"unknown app {app_name!r}: not in CCCI_INFRA_APPS ({known})")
    from ccci_tasks.tasks.infra import warm_reconcile

    _enqueue(lambda: warm_reconcile.delay(app_name), wait, timeout, as_json)


@main.command()
@click.option("--wait", is_flag=True, help="Wait for the verdict and exit by it.")
@click.option("--timeout", default=6 * 3600.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def sweep(wait: bool, timeout: float, as_json: bool) -> None:
    """Fire the nightly sweep now (infra, a cold run of every enrolled recipe, prune)."""
    from ccci_tasks.tasks.infra import nightly_sweep

    _enqueue(lambda: nightly_sweep.delay(), wait, timeout, as_json)


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what would go and why; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def prune(dry_run: bool, as_json: bool) -> None:
    """The disk prune: dangling images, stopped containers, old build cache, gated."""
    from ccci_tasks import diskprune
    from ccci_tasks.slots import Slots

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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
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
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Slots in use / MAX_TESTS, runs in flight, queued runs in order, workers seen."""
    from ccci_tasks.celery_app import app
    from ccci_tasks.slots import Slots

    with _exits():
        settings = _settings()
        slots = Slots.from_settings(settings)
        leases, pending = slots.leases(), slots.pending()
        workers = sorted(name for reply in (app.control.ping(timeout=1.0) or [])
                         for name in reply)
        data = {
            "max_tests": settings.max_tests,
            "slots_in_use": len(leases),
            "in_flight": [{"run_id": lease.run_id, "expires_at": lease.expires_at,
                           **({"lane": lease.spec.lane, "recipe": lease.spec.recipe,
                               "ref": lease.spec.ref} if lease.spec else {})}
                          for lease in leases],
            "queued": [{"run_id": s.run_id, "lane": s.lane, "recipe": s.recipe, "ref": s.ref}
                       for s in pending],
            "workers": workers,
        }
        lines = [f"slots: {len(leases)}/{settings.max_tests} in use"]
        lines += [f"  running {lease.run_id} {lease.spec.lane if lease.spec else '?'} "
                  f"{lease.spec.recipe if lease.spec else '?'}" for lease in leases]
        lines += [f"  queued  {s.run_id} {s.lane} {s.recipe}" for s in pending]
        lines.append("workers: " + (", ".join(workers) or "none answered"))
        _emit(as_json, data, "\n".join(lines))


@main.group()
def runs() -> None:
    """Run reports."""


@runs.command("list")
@click.option("--json", "as_json", is_flag=True)
def runs_list(as_json: bool) -> None:
    """Every run report, oldest first."""
    from ccci_tasks.state.reports import list_reports

    with _exits():
        found = list_reports(_settings().state_dir)
        _emit(as_json, [json.loads(report_json(r)) for r in found],
              "\n".join(f"{r.run_id} {r.lane:<5} {r.recipe or '-':<20} "
                        f"{r.verdict or 'running':<7} {r.reason or ''}" for r in found)
              or "no runs")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """One run report with its steps."""
    from ccci_tasks.state.reports import load_report

    with _exits():
        report = load_report(_settings().state_dir, run_id)
        if report is None:
            raise InvalidInput(f"no run {run_id!r}; see `ccci runs list`")
        _emit(as_json, json.loads(report_json(report)), _report_text(report))


@main.group()
def canonical() -> None:
    """Data-warm canonicals: registry and snapshot."""


@canonical.command("list")
@click.option("--json", "as_json", is_flag=True)
def canonical_list(as_json: bool) -> None:
    """Every canonical in the registry."""
    from ccci_tasks.state.canonical import list_registries

    with _exits():
        found = list_registries(_settings().state_dir)
        _emit(as_json, [x.to_json() for x in found],
              "\n".join(f"{x.recipe:<20} {x.version:<16} {x.status:<10} {x.ts}" for x in found)
              or "no canonicals")


@canonical.command("show")
@click.argument("recipe")
@click.option("--json", "as_json", is_flag=True)
def canonical_show(recipe: str, as_json: bool) -> None:
    """A recipe's registry entry and snapshot manifest."""
    from ccci_tasks.state import canonical as reg
    from ccci_tasks.state import warmsnap

    with _exits():
        settings = _settings()
        naming.validate_recipe(recipe)
        entry = reg.read_registry(settings.state_dir, recipe)
        if entry is None:
            raise InvalidInput(f"no canonical for {recipe!r}; see `ccci canonical list`")
        manifest = warmsnap.read_current(settings.state_dir, recipe)
        data = {"registry": entry.to_json(),
                "snapshot": manifest.to_json() if manifest is not None else None}
        text = json.dumps(data, indent=2, sort_keys=True)
        _emit(as_json, data, text)


@canonical.command("verify")
@click.argument("recipe")
def canonical_verify(recipe: str) -> None:
    """Re-hash the snapshot against its manifest."""
    from ccci_tasks.state import warmsnap

    with _exits():
        naming.validate_recipe(recipe)
        manifest = warmsnap.verify(_settings().state_dir, recipe)
        click.echo(f"{recipe}: snapshot of {manifest.version} verified "
                   f"({len(manifest.volumes)} volume tars match their sha256)")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def enrolled(as_json: bool) -> None:
    """Recipes with WARM_CANONICAL = True."""
    from ccci_tasks.state.meta import enrolled_recipes

    with _exits():
        found = enrolled_recipes(_settings().tests_dir)
        _emit(as_json, found, "\n".join(found) or "no enrolled recipes")


@main.command()
@click.option("--seen", is_flag=True, help="Relayed alerts instead of pending ones.")
@click.option("--json", "as_json", is_flag=True)
def alerts(seen: bool, as_json: bool) -> None:
    """Pending (or relayed) alerts."""
    from ccci_tasks.state import alerts as outbox

    with _exits():
        state = _settings().state_dir
        found = outbox.seen(state) if seen else outbox.pending(state)
        _emit(as_json, [a.to_json() for a in found],
              "\n".join(f"{a.ts} {a.kind:<14} {a.app:<20} {a.summary}" for a in found)
              or "no alerts")


@main.command()
def check() -> None:
    """Exit 0 only if the broker, the Docker engine and the state root are usable."""
    problems = []
    try:
        settings = _settings()
    except ConfigError as exc:
        click.echo(f"settings: {exc}", err=True)
        sys.exit(c.EXIT_USAGE)
    import redis

    try:
        redis.Redis.from_url(settings.broker_url.get_secret_value(),
                             socket_timeout=3, socket_connect_timeout=3).ping()
        click.echo("broker: ok")
    except redis.RedisError as exc:
        problems.append(f"broker: unreachable ({type(exc).__name__})")
    try:
        from ccci_tasks.platform.docker_state import docker_client

        info = docker_client(settings).info()
        swarm = info.get("Swarm", {}).get("LocalNodeState")
        if swarm != "active":
            problems.append(f"docker: engine answers but swarm is {swarm!r}, not active")
        else:
            click.echo("docker: ok (swarm active)")
    except CcciError as exc:
        problems.append(f"docker: {exc}")
    state = settings.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".ccci-check"
        probe.write_text("ok")
        probe.unlink()
        free = shutil.disk_usage(state).free
        click.echo(f"state root: ok ({state}, {free // 2**20} MiB free)")
    except OSError as exc:
        problems.append(f"state root {state}: not writable ({exc.strerror})")
    for problem in problems:
        click.echo(problem, err=True)
    sys.exit(c.EXIT_INFRA if problems else c.EXIT_OK)


if __name__ == "__main__":
    main()
