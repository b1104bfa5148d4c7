"""Commands that operate the system: prune, realms, check, bridge."""

from __future__ import annotations

import shutil
from typing import Any

import click
from redis.exceptions import RedisError

from ccci_tasks import broker
from ccci_tasks import constants as c
from ccci_tasks.cli.app import JSON, Exit, emit, exits, load_settings, main
from ccci_tasks.errors import CcciError


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what would go and why; remove nothing.")
@JSON
def prune(dry_run: bool, as_json: bool) -> None:
    """The disk prune: dangling images, stopped containers, old build cache, gated."""
    from ccci_tasks import diskprune
    from ccci_tasks.admission import Slots

    with exits():
        settings = load_settings()
        in_flight = [lease.run_id for lease in Slots.from_settings(settings).occupying()]
        result = diskprune.run(settings, in_flight, dry_run=dry_run)
        emit(as_json, result, diskprune.render_text(result))


@main.group()
def realms() -> None:
    """Per-run Keycloak realms."""


@realms.command("reap")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@JSON
def realms_reap(dry_run: bool, as_json: bool) -> None:
    """Delete the per-run realms whose run is over (master and other shapes never)."""
    from ccci_tasks.tasks.infra import reap_realms

    with exits():
        result = reap_realms(load_settings(), dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        lines = [f"{verb} {len(result['deleted'])} realm(s), kept {len(result['kept'])}"]
        lines += [f"  {verb} {name}" for name in result["deleted"]]
        emit(as_json, result, "\n".join(lines))


@main.command()
@JSON
def check(as_json: bool) -> None:
    """Exit 0 only if the broker, the Docker engine and the state root are usable."""
    with exits():
        settings = load_settings()
    results: dict[str, dict[str, Any]] = {}
    try:
        broker.client(settings, timeout_s=broker.QUICK_TIMEOUT_S).ping()
        results["broker"] = {"ok": True, "detail": "answers"}
    except RedisError as exc:
        results["broker"] = {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    try:
        from ccci_tasks.platform.engine import docker_client

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
        emit(True, {"ok": ok, **results}, "")
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

    with exits():
        forge.serve(load_settings(), listen)
