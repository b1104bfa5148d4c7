"""`make bench-broker`: what the broker (Redis) costs per run and per host.

On a private system (``bench/system.py``: its own redis-server, state root and base domain), read
Redis's own counters (``INFO commandstats``, ``INFO stats`` network bytes, ``used_memory``,
``MEMORY USAGE`` of the keys by prefix) around:

1. each process a host runs, alone and idle for a window: the runs, infra and alerts workers;
   the node beat (the runs worker at the default CCCI_NODE_BEAT_S less the same worker beating
   once a minute, so not in the window); beat holding its lock; a second beat standing by
   (default intervals);
2. janitor rounds (``ccci.alerts.janitor`` through the alerts worker), idle cost subtracted;
3. a batch of quick runs and a batch of cold runs of custom-html on a PR commit (runs and alerts
   workers), the idle cost of those workers over the batch subtracted: commands, network bytes
   and memory left behind, per run.

The bench's own probes (INFO, MEMORY, SCAN) are not counted. Nothing here passes or fails; the
figures are printed and written to ``bench/results/broker-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import lanes
from bench.system import REPO, BenchSystem

if TYPE_CHECKING:
    import redis

RESULTS = REPO / "bench" / "results"
OWN = {"info", "memory", "scan", "ping", "select", "client|setinfo", "client"}
PREFIXES = ("ccci:run:", "ccci:beat:", "ccci:slots:", "ccci:deliveries:", "ccci:",
            "celery-task-meta-", "_kombu.", "unacked", "")
RECIPE = "custom-html"
BEAT_SETTLE_S = 15
NODE_BEAT_RARE_S = 60  # the largest CCCI_NODE_BEAT_S: no beat in a window after the first


class Probe:
    """Redis's counters at one moment."""

    def __init__(self, client: redis.Redis) -> None:
        self.at = time.monotonic()
        stats = client.info("commandstats")
        self.calls = Counter({name.removeprefix("cmdstat_"): int(v["calls"])
                              for name, v in stats.items()
                              if name.removeprefix("cmdstat_") not in OWN})
        info = client.info()
        self.net_in = int(info["total_net_input_bytes"])
        self.net_out = int(info["total_net_output_bytes"])
        self.memory = int(info["used_memory"])


def delta(before: Probe, after: Probe, idle_per_s: float = 0.0) -> dict[str, Any]:
    calls = after.calls - before.calls
    elapsed = after.at - before.at
    total = sum(calls.values())
    return {
        "elapsed_s": round(elapsed, 2),
        "commands": total,
        "commands_net_of_idle": round(total - idle_per_s * elapsed, 1),
        "commands_per_s": round(total / elapsed, 3) if elapsed else 0.0,
        "by_command": dict(calls.most_common(12)),
        "net_in_bytes": after.net_in - before.net_in,
        "net_out_bytes": after.net_out - before.net_out,
        "used_memory_delta_bytes": after.memory - before.memory,
    }


def keys_by_prefix(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Count and MEMORY USAGE of every key, grouped by the first prefix it has."""
    groups: dict[str, dict[str, int]] = {p or "other": {"keys": 0, "bytes": 0} for p in PREFIXES}
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        prefix = next(p for p in PREFIXES if name.startswith(p)) or "other"
        groups[prefix]["keys"] += 1
        groups[prefix]["bytes"] += int(client.memory_usage(key) or 0)
    return {k: v for k, v in groups.items() if v["keys"]}


def window(client: redis.Redis, seconds: float) -> dict[str, Any]:
    before = Probe(client)
    time.sleep(seconds)
    return delta(before, Probe(client))


class Beat:
    """A ``celery beat`` process of the bench system."""

    def __init__(self, system: BenchSystem, name: str) -> None:
        env = {**os.environ, **system.env, "PYTHONPATH": str(REPO)}
        with open(system.root / "logs" / f"beat-{name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "beat",
                 "--loglevel=INFO"], cwd=REPO, env=env, stdout=log, stderr=log,
                start_new_session=True)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def measure_hosts(system: BenchSystem, client: redis.Redis, seconds: float) -> dict[str, Any]:
    """Each process of a host alone and idle (workers ready, beat past its start)."""
    out: dict[str, Any] = {}
    for role in ("runs", "infra", "alerts"):
        system.start_workers((role,))
        time.sleep(3)  # past the start-up chatter (mingle, first heartbeats)
        out[f"{role}_worker_idle"] = window(client, seconds)
        system.stop_workers()
        print(f"  {role} worker idle: {out[f'{role}_worker_idle']['commands_per_s']} cmd/s",
              flush=True)
    out["node_beat"] = node_beat(system, client, seconds, out["runs_worker_idle"])
    print(f"  node beat: {out['node_beat']['commands_per_s']} cmd/s, "
          f"{out['node_beat']['net_bytes_per_s']} bytes/s", flush=True)
    # Beat ticks every CCCI_BEAT_MAX_INTERVAL_S (10 s): longer windows, past its start-up
    # (loading the app, installing the schedule). The 60 s entries (janitor, alert relay, forge
    # sweep) fire about once in each window, so both rates include sending them.
    holder = Beat(system, "holder")
    time.sleep(BEAT_SETTLE_S)
    out["beat_holding_lock"] = window(client, 2 * seconds)
    standby = Beat(system, "standby")
    time.sleep(BEAT_SETTLE_S)
    both = window(client, 2 * seconds)
    out["beat_standby"] = {
        **both, "commands_per_s": round(both["commands_per_s"]
                                        - out["beat_holding_lock"]["commands_per_s"], 3),
        "note": "both beats' window minus the holder's rate"}
    standby.stop()
    holder.stop()
    for key in ("beat_holding_lock", "beat_standby"):
        print(f"  {key}: {out[key]['commands_per_s']} cmd/s", flush=True)
    return out


def node_beat(system: BenchSystem, client: redis.Redis, seconds: float,
              runs_idle: dict[str, Any]) -> dict[str, Any]:
    """What the node beat costs: the idle runs worker (beating every CCCI_NODE_BEAT_S) less
    the same worker beating every NODE_BEAT_RARE_S (its first beat before the window)."""
    from ccci_tasks.config import get_settings

    interval = get_settings().node_beat_s
    system.start_workers(("runs",), CCCI_NODE_BEAT_S=str(NODE_BEAT_RARE_S))
    time.sleep(3)
    rare = window(client, seconds)
    system.stop_workers()
    calls = Counter(runs_idle["by_command"])
    calls.subtract(rare["by_command"])
    per_s = runs_idle["commands_per_s"] - rare["commands_per_s"]
    net = ((runs_idle["net_in_bytes"] + runs_idle["net_out_bytes"]) / runs_idle["elapsed_s"]
           - (rare["net_in_bytes"] + rare["net_out_bytes"]) / rare["elapsed_s"])
    return {"interval_s": interval, "commands_per_s": round(per_s, 3),
            "commands_per_beat": round(per_s * interval, 2),
            "net_bytes_per_s": round(net), "by_command": {k: v for k, v in calls.items() if v},
            "runs_worker_beating_rarely": rare}


def measure_janitor(system: BenchSystem, client: redis.Redis, rounds: int,
                    idle_per_s: float) -> dict[str, Any]:
    """Janitor rounds through the alerts worker (the side queue), one after the other."""
    from ccci_tasks.celery_app import app

    system.start_workers(("alerts",))
    time.sleep(3)
    per_round = []
    for _ in range(rounds):
        before = Probe(client)
        app.send_task("ccci.alerts.janitor").get(timeout=120)
        per_round.append(delta(before, Probe(client), idle_per_s))
    system.stop_workers()
    per_round.sort(key=lambda d: float(d["commands_net_of_idle"]))
    median = per_round[len(per_round) // 2]
    print(f"  janitor round: {median['commands_net_of_idle']} commands, "
          f"{median['elapsed_s']} s", flush=True)
    return {"median_round": median, "rounds": len(per_round)}


def measure_runs(system: BenchSystem, client: redis.Redis, batch: int,
                 idle_per_s: float) -> dict[str, Any]:
    """A seeded canonical, then ``batch`` quick runs and ``batch`` cold runs of a PR commit."""
    recipes_dir = Path(system.env["CCCI_RECIPES_DIR"])
    system.start_workers(("runs", "alerts"))
    seed = lanes.run("cold", RECIPE, None)
    assert seed.verdict == "pass", seed.reason
    pr = lanes.pr_on_latest(recipes_dir, RECIPE)
    out: dict[str, Any] = {}
    for lane in ("quick", "cold"):
        keys_before = keys_by_prefix(client)
        before = Probe(client)
        walls = []
        for _ in range(batch):
            figures = lanes.run(lane, RECIPE, pr)
            assert figures.verdict == "pass", figures.reason
            walls.append(round(figures.wall_s, 2))
        total = delta(before, Probe(client), idle_per_s)
        keys_after = keys_by_prefix(client)
        per_run = {
            "commands": round(total["commands_net_of_idle"] / batch, 1),
            "net_bytes": round((total["net_in_bytes"] + total["net_out_bytes"]) / batch),
            "used_memory_bytes": round(total["used_memory_delta_bytes"] / batch),  # noisy
            "retained_keys": {
                p: {"keys": (keys_after.get(p, {}).get("keys", 0)
                             - keys_before.get(p, {}).get("keys", 0)) / batch,
                    "bytes": (keys_after.get(p, {}).get("bytes", 0)
                              - keys_before.get(p, {}).get("bytes", 0)) / batch}
                for p in keys_after},
        }
        out[lane] = {"batch": batch, "wall_s": walls, "total": total, "per_run": per_run}
        per_run["retained_bytes"] = round(sum(g["bytes"] for g in
                                              per_run["retained_keys"].values()))
        print(f"  {lane} run: {per_run['commands']} commands, {per_run['net_bytes']} bytes "
              f"on the wire, {per_run['retained_bytes']} bytes of keys left each", flush=True)
    system.stop_workers()
    out["keys_after"] = keys_by_prefix(client)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=30.0, help="idle window per process")
    parser.add_argument("--batch", type=int, default=3, help="runs per lane")
    parser.add_argument("--janitor-rounds", type=int, default=5)
    parser.add_argument("--hosts-only", action="store_true",
                        help="only the per-host figures (each process idle, the node beat)")
    args = parser.parse_args(argv)
    import redis

    started = datetime.now(UTC)
    figures: dict[str, Any] = {"started_at": started.isoformat(timespec="seconds"),
                               "host": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
                               "window_s": args.window_s}
    with BenchSystem() as system:
        from ccci_tasks.config import get_settings

        settings = get_settings()
        figures["settings"] = {k: getattr(settings, k) for k in (
            "janitor_interval_s", "lease_ttl_s", "beat_max_interval_s", "beat_lock_timeout_s",
            "max_tests")}
        client = redis.Redis(port=system.redis_port)
        print("per host: each process idle ...", flush=True)
        hosts = figures["per_host"] = measure_hosts(system, client, args.window_s)
        if args.hosts_only:
            figures["redis_version"] = client.info()["redis_version"]
            client.close()
            return write(figures, started)
        alerts_idle = hosts["alerts_worker_idle"]["commands_per_s"]
        runs_idle = (hosts["runs_worker_idle"]["commands_per_s"]
                     + hosts["alerts_worker_idle"]["commands_per_s"])
        print("janitor rounds ...", flush=True)
        figures["janitor"] = measure_janitor(system, client, args.janitor_rounds, alerts_idle)
        print("runs ...", flush=True)
        figures["per_run"] = measure_runs(system, client, args.batch, runs_idle)
        figures["redis_version"] = client.info()["redis_version"]
        client.close()
    return write(figures, started)


def write(figures: dict[str, Any], started: datetime) -> int:
    figures["load_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"broker-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
