"""Commands that read and show: status, runs, canonical, enrolled, alerts."""

from __future__ import annotations

import json
from typing import Any

import click
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from ccci_tasks import constants as c
from ccci_tasks import naming
from ccci_tasks.cli.app import (
    JSON,
    Exit,
    emit,
    exits,
    load_run,
    load_settings,
    local_only,
    main,
    state_root,
)
from ccci_tasks.cli.output import duration, report_text, ts
from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput, SnapshotError
from ccci_tasks.nodes import NodeState, read_nodes
from ccci_tasks.state.reports import report_json


@main.command()
@JSON
def status(as_json: bool) -> None:
    """Slots in use / MAX_TESTS, runs in flight, queued runs in order, nodes, workers seen."""
    from ccci_tasks.admission import Slots

    with exits():
        settings = load_settings()  # before the app is made from the settings
        from ccci_tasks.celery_app import app

        state_root(settings)
        slots = Slots.from_settings(settings)
        occupying, pending, parked = slots.occupying(), slots.pending(), slots.parked()
        registry = read_nodes(slots.client, settings.lease_ttl_s, occupying)
        now = slots.now()
        try:
            workers = sorted(name for reply in (app.control.ping(timeout=1.0) or [])
                             for name in reply)
        except (OSError, KombuOperationalError, RedisError):
            workers = []

        def row(run_id: str, spec: Any, state: str) -> dict[str, Any]:
            return {"run_id": run_id, "state": state,
                    **({"lane": spec.lane, "recipe": spec.recipe, "ref": spec.ref,
                        "resources": [str(r) for r in spec.resources],
                        "node": spec.node, "pin": spec.pin} if spec else {})}

        in_flight = [row(x.run_id, x.spec, x.state) for x in occupying]
        # this host's node; a run admitted before runs named their node counts here
        here = sum(1 for x in occupying if x.spec and x.spec.holds_slot
                   and (x.spec.node or settings.node) == settings.node)
        data = {
            "node": settings.node,
            "max_tests": settings.max_tests,
            "slots_in_use": here,
            "in_flight": in_flight,
            "queued": [row(s.run_id, s, "queued") for s in pending],
            "parked": parked,
            "nodes": [{"node": n.node, "state": n.state, "slots_in_use": n.slots_in_use,
                       "max_tests": n.max_tests, "workers": list(n.workers)} for n in registry],
            "workers": workers,
        }
        lines = [f"slots: {here}/{settings.max_tests} in use on this node ({settings.node})"]
        lines += [f"  {r['state']:<8} {r['run_id']} {r.get('lane', '?')} {r.get('recipe', '?')}"
                  f" on {r.get('node') or '?'}" for r in in_flight]
        lines += [f"  queued   {s.run_id} {s.lane} {s.recipe}"
                  + (f" (for {s.pin})" if s.pin else "") for s in pending]
        lines += [f"  parked   {run_id} (waits for its runs)" for run_id in parked]
        lines += node_lines(registry, now)
        lines.append("workers: " + (", ".join(workers) or "none answered"))
        emit(as_json, data, "\n".join(lines))


def node_lines(registry: list[NodeState], now: float) -> list[str]:
    """One line per node of the registry, or why there is none."""
    if not registry:
        return ["nodes: no node has beaten (no runs worker runs, or it is of a version before "
                "the node registry)"]
    out = ["nodes:"]
    for n in registry:
        state = "up" if n.state == "up" else f"lost (no beat for {max(0.0, now - n.seen):.0f} s)"
        out.append(f"  node {n.node}: {state}, slots {n.slots_in_use}/{n.max_tests}, "
                   f"workers {', '.join(n.workers) or 'none'}")
    return out


@main.group()
def runs() -> None:
    """Run reports."""


@runs.command("list")
@JSON
def runs_list(as_json: bool) -> None:
    """Every run report of every host, oldest first: queued, running or with its verdict."""
    from ccci_tasks import broker
    from ccci_tasks.state import reports

    with exits():
        settings = load_settings()
        state_root(settings)
        listing = reports.at(settings, broker.QUICK_TIMEOUT_S).listing()
        if listing.broker_error is not None:
            local_only(settings, listing.broker_error, "the runs of this host")
        for problem in listing.problems:
            click.echo(f"ccci: warning: left out: {problem}", err=True)
        found = listing.records
        text = "\n".join(
            f"{r.run_id} {r.lane:<9} {r.recipe or '-':<20} {r.node or '-':<12} "
            f"{(r.verdict or r.state):<8} {ts(r.started_at)} {duration(r):>8} "
            f"{(r.reason or '')[:80]}" for r in found)
        emit(as_json, [{**json.loads(report_json(r)), "state": r.state,
                        "duration_s": r.duration_s()} for r in found], text or "no runs")


@runs.command("show")
@click.argument("run_id")
@JSON
def runs_show(run_id: str, as_json: bool) -> None:
    """One run report with its timeline."""
    with exits():
        report = load_run(load_settings(), run_id)
        emit(as_json, json.loads(report_json(report)), report_text(report))


@main.group()
def canonical() -> None:
    """Data-warm canonicals: registry and snapshot."""


@canonical.command("list")
@JSON
def canonical_list(as_json: bool) -> None:
    """Every canonical in the registry."""
    from ccci_tasks.state.canonical import list_registries

    with exits():
        found = list_registries(state_root(load_settings()))
        emit(as_json, [x.to_json() for x in found],
             "\n".join(f"{x.recipe:<20} {x.version:<16} {x.status:<10} {x.ts}" for x in found)
             or "no canonicals")


def _registry(settings: Settings, recipe: naming.Recipe) -> Any:
    from ccci_tasks.state import canonical as reg

    entry = reg.read_registry(state_root(settings), recipe)
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

    with exits():
        settings = load_settings()
        name = naming.Recipe(recipe)
        entry = _registry(settings, name)
        manifest = warmsnap.read_current(settings.state_dir, name)
        why = reg.quarantined(settings.state_dir, name)
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
        emit(as_json, data, "\n".join(lines))


@canonical.command("verify")
@click.argument("recipe")
@JSON
def canonical_verify(recipe: str, as_json: bool) -> None:
    """Re-hash the snapshot against its manifest (exit 1 when it does not match)."""
    from ccci_tasks.state import warmsnap

    with exits():
        settings = load_settings()
        name = naming.Recipe(recipe)
        _registry(settings, name)
        try:
            manifest = warmsnap.verify(settings.state_dir, name)
        except SnapshotError as exc:
            emit(as_json, {"recipe": recipe, "verified": False, "why": str(exc)},
                 f"{recipe}: snapshot does NOT verify: {exc}")
            raise Exit(c.EXIT_RED) from exc
        emit(as_json, {"recipe": recipe, "verified": True, "version": manifest.version,
                       "volumes": [v.name for v in manifest.volumes]},
             f"{recipe}: snapshot of {manifest.version} verified ({len(manifest.volumes)} "
             "volume tars match their sha256)")


@main.command()
@JSON
def enrolled(as_json: bool) -> None:
    """Recipes with WARM_CANONICAL = True."""
    from ccci_tasks.state.meta import enrolled_recipes

    with exits():
        found = enrolled_recipes(load_settings().tests_dir)
        emit(as_json, found, "\n".join(found) or "no enrolled recipes")


@main.command()
@click.option("--seen", is_flag=True, help="Relayed alerts instead of pending ones.")
@JSON
def alerts(seen: bool, as_json: bool) -> None:
    """Pending (or relayed) alerts."""
    from ccci_tasks.state import alerts as outbox

    with exits():
        state = state_root(load_settings())
        found = outbox.seen(state) if seen else outbox.pending(state)
        emit(as_json, [a.to_json() for a in found],
             "\n".join(f"{a.ts} {a.kind:<16} {a.app:<20} {a.summary}" for a in found)
             or ("no relayed alerts" if seen else "no pending alerts"))
