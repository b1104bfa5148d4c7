"""`make bench-hosts`: the nightly sweep on one host and on two hosts (R15), in one run.

On a private system (``bench/hostsys.py``: its own redis-server, state roots, base domain and
workers) with a bench-only catalogue of ``--recipes`` enrolled copies of custom-html (first
boot ``--init-delay`` s on an empty volume), MAX_TESTS 1 on every host:

1. *one host*: the host's workers on this machine's engine; a sweep to warm (it seeds every
   canonical), then the timed sweep (steady state: every cold run has a canonical, so its
   upgrade tier runs and it promotes);
2. *two hosts*: the same on fresh state roots and a fresh broker, with a rig node (a second
   swarm host in a network namespace of its own) running a runs worker of its own;
3. *a node lost mid-sweep* (``--no-faults`` skips it): the two-host system again with a
   short lease and janitor (``--ttl``, ``--janitor``); the node's runs worker is SIGKILLed
   while it runs a cold run of the sweep;
4. with ``--host-added``, after 1: a rig node added to the warm one-host system, one sweep
   (where its cold runs go when every canonical lives on the first host).

Each node's runs worker publishes the node itself (the node beat, ``CCCI_NODE_BEAT_S``).

Reported: the wall time of each timed sweep (submit to verdict) and their ratio, the most
live apps a 100 ms watcher saw on each engine, how the sweep's cold runs were spread over the
nodes (each run's admitting node, from its report), runs left ``running`` at the end; for
the lost node, how long after the kill its runs (those it had admitted and those queued for
it) ended ``error``. Goals are printed with the figures and written with them
to ``bench/results/hosts-<UTC time>.json``; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as pyhost
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.hostsys import Host, HostsSystem, Watcher
from bench.system import REPO

if TYPE_CHECKING:
    from ccci_tasks.state.reports import RunReport

RESULTS = REPO / "bench" / "results"
MAX_TESTS = 1
GOAL_RATIO = 0.6
SWEEP_TIMEOUT_S = 3600.0
POLL_S = 0.2


def _report(run_id: str) -> RunReport | None:
    from ccci_tasks.config import get_settings
    from ccci_tasks.naming import RunId
    from ccci_tasks.state import reports

    return reports.at(get_settings()).load(RunId(run_id))


def _unfinished() -> list[str]:
    """Runs of the system without a verdict: reports not ended, leases still held."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.config import get_settings
    from ccci_tasks.state import reports

    settings = get_settings()
    left = {r.run_id for r in reports.at(settings).all(unfinished=True)}
    left |= {lease.run_id for lease in Slots.from_settings(settings).occupying()}
    return sorted(left)


class Placements:
    """Which node admitted each run (the spec's ``node``) and which node a queued run was
    pinned to (``pin``), polled from the leases and the queue."""

    def __init__(self) -> None:
        self.node: dict[str, str] = {}
        self.pin: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from ccci_tasks.admission import Slots
        from ccci_tasks.config import get_settings

        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a broker flushed between setups
                slots = Slots.from_settings(get_settings())
                for spec in slots.pending():
                    if spec.pin:
                        self.pin.setdefault(spec.run_id, spec.pin)
                for lease in slots.occupying():
                    if lease.spec is not None and lease.spec.node:
                        self.node.setdefault(lease.run_id, lease.spec.node)
            self._stop.wait(POLL_S)

    def __enter__(self) -> Placements:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _wait_finished(run_id: str, timeout_s: float, what: str) -> RunReport:
    deadline = time.monotonic() + timeout_s
    while True:
        report = _report(run_id)
        if report is not None and report.finished:
            return report
        if time.monotonic() > deadline:
            last = report.current.name if report is not None and report.current else None
            raise SystemExit(f"bench: {what} {run_id} had no verdict after {timeout_s:g} s; "
                             f"last seen: {report.verdict if report else 'no report'}, "
                             f"step {last}")
        time.sleep(POLL_S)


def fire_sweep() -> str:
    from ccci_tasks.tasks import nightly_sweep

    return str(nightly_sweep.delay(scheduled=False).id)


def sweep_figures(run_id: str, wall_s: float, placements: Placements) -> dict[str, Any]:
    """The sweep's verdict and wall time, and each of its cold runs: recipe, node, verdict,
    seconds queued and running."""
    report = _report(run_id)
    assert report is not None and report.finished_at is not None
    runs = []
    for entry in report.extra.get("recipes", []):
        child = _report(entry["run_id"])
        node = (child.node if child else None) or placements.node.get(entry["run_id"])
        row: dict[str, Any] = {"recipe": entry["recipe"], "run_id": entry["run_id"],
                               "node": node, "pin": placements.pin.get(entry["run_id"]),
                               "verdict": child.verdict if child else None,
                               "reason": (child.reason or "")[:200] if child else "no report"}
        if child is not None and child.admitted_at and child.finished_at:
            row["queued_s"] = round((child.admitted_at - child.started_at).total_seconds(), 2)
            row["run_s"] = round((child.finished_at - child.admitted_at).total_seconds(), 2)
        runs.append(row)
    return {"run_id": run_id, "verdict": report.verdict, "reason": report.reason,
            "wall_s": round(wall_s, 2), "runs": runs,
            "spread": dict(Counter(str(r["node"]) for r in runs))}


def timed_sweep(placements: Placements, what: str) -> dict[str, Any]:
    started = time.monotonic()
    run_id = fire_sweep()
    _wait_finished(run_id, SWEEP_TIMEOUT_S, f"{what} sweep")
    figures = sweep_figures(run_id, time.monotonic() - started, placements)
    print(f"  {what:34s} {figures['wall_s']:8.1f} s  {figures['verdict']}  "
          f"spread {figures['spread']}", flush=True)
    return figures


def warm_then_timed(system: HostsSystem, label: str) -> dict[str, Any]:
    """A sweep to warm, then the timed one, watched on every engine."""
    with Placements() as placements, Watcher(system, MAX_TESTS) as watcher:
        warm = timed_sweep(placements, f"{label}: warm-up sweep")
        timed = timed_sweep(placements, f"{label}: timed sweep")
    return {"warm": warm, "timed": timed, "engines": watcher.to_json(),
            "left_running": _unfinished()}


def fresh(system: HostsSystem) -> None:
    """Nothing of the previous setup left: workers stopped, broker flushed, apps removed
    from the host's engine, a new state root."""
    system.stop_workers()
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(system.redis_port), "FLUSHALL"],
                   check=True, capture_output=True, timeout=30)
    system.remove_docker_objects()
    state = system.root / "state"
    shutil.rmtree(state)
    state.mkdir()


def one_host(system: HostsSystem) -> dict[str, Any]:
    print("one host (MAX_TESTS 1):", flush=True)
    system.start_host()
    return warm_then_timed(system, "one host")


def host_added(system: HostsSystem) -> dict[str, Any]:
    """A rig node added to the warm one-host system: where the sweep's cold runs go when
    every canonical lives on the host."""
    print("a node added to the warm host:", flush=True)
    with system.node("n2") as node:
        system.start_node_worker(node)
        with Placements() as placements, Watcher(system, MAX_TESTS) as watcher:
            figures = timed_sweep(placements, "host added: sweep")
        left = _unfinished()
    return {"sweep": figures, "engines": watcher.to_json(), "left_running": left}


@contextlib.contextmanager
def two_hosts(system: HostsSystem) -> Iterator[Host]:
    """The host and a rig node ``n2``, each with its runs worker (which beats)."""
    with system.node("n2") as node:
        system.start_host()
        system.start_node_worker(node)
        yield node


def lost_node(system: HostsSystem, node: Host, ttl_s: int) -> dict[str, Any]:
    """A sweep whose node ``n2`` loses its runs worker (SIGKILL) while it runs a cold run."""
    killed_at = None
    with Placements() as placements, Watcher(system, MAX_TESTS) as watcher:
        started = time.monotonic()
        run_id = fire_sweep()
        deadline = started + SWEEP_TIMEOUT_S
        while killed_at is None and time.monotonic() < deadline:
            on_node = [r for r, n in placements.node.items() if n == node.name]
            if any((rep := _report(r)) is not None and rep.steps and not rep.finished
                   for r in on_node):
                time.sleep(1.0)  # into the run's steps
                system.kill_node_worker(node)
                killed_at = datetime.now(UTC)
                print(f"  killed {node.name}'s runs worker {time.monotonic() - started:.1f} s "
                      "into the sweep", flush=True)
            time.sleep(POLL_S)
        if killed_at is None:
            raise SystemExit(f"bench: no cold run of the sweep started on {node.name}")
        _wait_finished(run_id, SWEEP_TIMEOUT_S, "sweep with a lost node")
        figures = sweep_figures(run_id, time.monotonic() - started, placements)
    # admitted there (crashed with it), or queued for it (pinned to its canonicals)
    ended = [r for r in figures["runs"] if node.name in (r["node"], r["pin"])]
    ends = []
    for row in ended:
        child = _report(row["run_id"])
        if child is not None and child.finished_at is not None:
            ends.append((child.finished_at - killed_at).total_seconds())
    return {"sweep": figures, "engines": watcher.to_json(), "left_running": _unfinished(),
            "lease_ttl_s": ttl_s, "lost_node_runs": ended,
            "lost_runs_ended_after_s": [round(s, 1) for s in ends],
            "lost_runs_verdicts": dict(Counter(str(r["verdict"]) for r in ended))}


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float, limit: float) -> None:
        out.append({"goal": name, "value": round(value, 3), "limit": f"<= {limit}",
                    "met": value <= limit})

    one, two = result.get("one_host"), result.get("two_hosts")
    if one and two:
        goal("two hosts / one host, sweep wall time", two["timed"]["wall_s"]
             / one["timed"]["wall_s"], GOAL_RATIO)
    for setup in ("one_host", "host_added", "two_hosts", "lost_node"):
        if result.get(setup):
            for engine, counts in result[setup]["engines"].items():
                goal(f"{setup}: live apps above MAX_TESTS on {engine} (samples)",
                     counts["violations"], 0)
            goal(f"{setup}: runs left running", len(result[setup]["left_running"]), 0)
    return out


def table(result: dict[str, Any]) -> str:
    lines = []
    for setup in ("one_host", "two_hosts"):
        if result.get(setup):
            timed = result[setup]["timed"]
            most = {e: c["max_live"] for e, c in result[setup]["engines"].items()}
            lines.append(f"{setup:10s} sweep {timed['wall_s']:7.1f} s ({timed['verdict']}); "
                         f"cold runs per node {timed['spread']}; most live per engine {most}")
    added = result.get("host_added")
    if added:
        lines.append(f"host added to the warm host: sweep {added['sweep']['wall_s']:.1f} s; "
                     f"cold runs per node {added['sweep']['spread']}")
    lost = result.get("lost_node")
    if lost:
        lines.append(f"lost node: sweep {lost['sweep']['wall_s']:.1f} s "
                     f"({lost['sweep']['verdict']}); its runs {lost['lost_runs_verdicts']} "
                     f"ended {lost['lost_runs_ended_after_s']} s after the kill "
                     f"(lease TTL {lost['lease_ttl_s']} s)")
    for g in result["goals"]:
        lines.append(f"[{'met' if g['met'] else 'MISSED':6s}] {g['goal']}: {g['value']} "
                     f"(goal {g['limit']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", type=int, default=8, help="enrolled recipes swept")
    parser.add_argument("--init-delay", type=int, default=10,
                        help="seconds of each app's first boot on an empty volume")
    parser.add_argument("--only", choices=("one", "two"), default=None,
                        help="one host only, or two hosts only (and the lost node)")
    parser.add_argument("--no-faults", action="store_true", help="skip the lost node")
    parser.add_argument("--host-added", action="store_true",
                        help="also sweep once more after adding a node to the warm host")
    parser.add_argument("--ttl", type=int, default=10, help="lease TTL (s) for the lost node")
    parser.add_argument("--janitor", type=int, default=2, help="janitor interval (s), idem")
    parser.add_argument("--out", default=None, help="the JSON file (default: bench/results)")
    args = parser.parse_args(argv)
    if args.recipes < 2 or not 0 <= args.init_delay <= 600:
        parser.error("--recipes must be >= 2 and --init-delay 0-600 s")
    # a SIGTERM (timeout, CI) unwinds like ^C: the rig node is stopped, the system removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "load_before": os.getloadavg(),
                 "python": pyhost.python_version()},
        "recipes": args.recipes, "init_delay_s": args.init_delay, "max_tests": MAX_TESTS,
    }
    with HostsSystem(args.recipes, args.init_delay, CCCI_MAX_TESTS=str(MAX_TESTS)) as system:
        print(f"bench: system {system.base}, logs in {system.root / 'logs'}", flush=True)
        if args.only in (None, "one"):
            result["one_host"] = one_host(system)
            if args.host_added:
                result["host_added"] = host_added(system)
        if args.only in (None, "two"):
            fresh(system)
            print("two hosts (MAX_TESTS 1 each):", flush=True)
            with two_hosts(system) as node:
                result["two_hosts"] = warm_then_timed(system, "two hosts")
                if not args.no_faults:
                    print(f"a node lost mid-sweep (lease TTL {args.ttl} s, janitor "
                          f"{args.janitor} s):", flush=True)
                    system.start_host(CCCI_LEASE_TTL_S=str(args.ttl),
                                      CCCI_JANITOR_INTERVAL_S=str(args.janitor),
                                      CCCI_LEASE_START_GRACE_S="60")
                    system.start_node_worker(node)
                    result["lost_node"] = lost_node(system, node, args.ttl)
    result["goals"] = goals(result)
    result["load_after"] = os.getloadavg()
    out = args.out or str(RESULTS / f"hosts-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as handle:
        handle.write(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
