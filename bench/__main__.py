"""`make bench`: quick vs cold, our overhead over the app's own costs, snapshot and restore.

Everything is measured in one run on a private system (its own redis-server, worker process,
state root and base domain; see ``bench/system.py``), so the figures are comparable with each
other although the machine is noisy. Nothing here is a pass/fail test: the goals are printed
with the figures and written to ``bench/results/bench-<UTC time>.json`` (path printed).

Per example recipe (custom-html; slow-html, 30 s first boot; stubborn-html, 8 s to stop of
its 10 s stop grace and a 20 s first boot; notes-pg, an app and PostgreSQL 15):

1. seed the canonical with a cold run on latest (it promotes);
2. a PR commit that changes the app: the served page (the GREETING default in compose.yml),
   or, for notes-pg, a new migration (``make pr-commit``'s);
3. a steady-state cold run of that commit (a canonical exists, so its upgrade tier runs), then
   a first quick run of it and three more (they restore incrementally, as every later one
   does; the median one is reported);
4. the app's own costs with plain Docker: ``docker service`` commands (``bench/appcost.py``),
   or, for notes-pg, ``docker stack deploy`` of the recipe, its stop and the PR head's boot
   with its migration (``bench/pgcost.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import appcost, lanes, pgcost, snapshots
from bench.system import REPO, BenchSystem

RESULTS = REPO / "bench" / "results"
RECIPES = ("custom-html", "slow-html", "stubborn-html", "notes-pg")
PG_RECIPES = ("notes-pg",)  # their PR is a migration; their costs are a stack's (pgcost)
GOAL_RATIO = {"custom-html": 0.35, "slow-html": 0.2, "stubborn-html": 0.25, "notes-pg": 0.3}
GOAL_OVERHEAD_S = {"custom-html": 2.0, "slow-html": 2.0, "stubborn-html": 2.0, "notes-pg": 1.5}
GOAL_ORCHESTRATION_S = 0.020
GOAL_TAR_RATIO = 1.0
QUICK_REPEAT = 3  # steady-state quick runs per recipe and mode; the median one is reported


def _pr(recipes_dir: Path, recipe: str) -> str:
    """A PR commit on the newest tag that changes the app: a migration for a database recipe."""
    from ccci_tasks.naming import Recipe
    from ccci_tasks.platform.recipes import RecipeRepo

    if recipe in PG_RECIPES:
        latest = RecipeRepo(recipes_dir / recipe, Recipe(recipe)).latest()
        assert latest is not None
        return lanes.migration_commit(recipes_dir / recipe, latest)
    return lanes.pr_on_latest(recipes_dir, recipe)


def _check(figures: lanes.RunFigures, what: str) -> dict[str, Any]:
    if figures.verdict != "pass":
        raise SystemExit(f"bench: {what} was {figures.verdict}: {figures.reason}")
    print(f"  {what:28s} {figures.wall_s:7.2f} s", flush=True)
    return figures.to_json()


def _median_run(recipe: str, ref: str, what: str) -> dict[str, Any]:
    """``QUICK_REPEAT`` quick runs; the one with the median wall time, with all wall times."""
    runs = sorted((_check(lanes.run("quick", recipe, ref), what) for _ in range(QUICK_REPEAT)),
                  key=lambda r: float(r["wall_s"]))
    return {**runs[len(runs) // 2], "all_wall_s": [r["wall_s"] for r in runs]}


def _still_running_cost(recipe: str) -> dict[str, Any]:
    """What one ``still_running`` check costs on a deployed app (the canonical, reattached)."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.naming import Recipe, warm_domain
    from ccci_tasks.platform.swarm import SwarmPlatform

    settings = get_settings()
    platform = SwarmPlatform(settings)
    domain = warm_domain(Recipe(recipe), settings.base_domain)
    platform.deploy(domain)
    state = platform.wait_converged(domain, 120)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        platform.still_running(domain, state)
        times.append(time.perf_counter() - started)
    platform.undeploy(domain, graceful=False)
    return {"best_s": min(times), "median_s": statistics.median(times)}


def measure_lanes(system: BenchSystem, recipes: tuple[str, ...] = RECIPES) -> dict[str, Any]:
    recipes_dir = Path(system.env["CCCI_RECIPES_DIR"])
    results: dict[str, Any] = {}
    system.start_workers()
    prs = {}
    for recipe in recipes:
        print(f"{recipe}:", flush=True)
        entry: dict[str, Any] = {}
        entry["seed"] = _check(lanes.run("cold", recipe, None), "seed (cold on latest)")
        prs[recipe] = _pr(recipes_dir, recipe)
        entry["pr"] = prs[recipe]
        entry["cold"] = _check(lanes.run("cold", recipe, prs[recipe]), "cold, PR commit")
        entry["quick_first"] = _check(lanes.run("quick", recipe, prs[recipe]),
                                      "quick, PR commit (1st)")
        entry["quick"] = _median_run(recipe, prs[recipe], "quick, PR commit")
        results[recipe] = entry
    system.stop_workers()
    for recipe in recipes:
        print(f"{recipe}: the app's own costs (plain docker)", flush=True)
        if recipe in PG_RECIPES:
            results[recipe]["app"] = pgcost.measure(recipes_dir, recipe, system.base, prs[recipe])
        else:
            results[recipe]["app"] = appcost.measure(recipes_dir, recipe, system.base)
    if "custom-html" in recipes:
        results["still_running"] = _still_running_cost("custom-html")
    return results


def _boot_stop(app: dict[str, Any]) -> tuple[float, float]:
    """The app's warm boot (a PostgreSQL recipe's: its stack's) and stop, medians."""
    if "stack_boot_s" in app:
        return float(app["stack_boot_s"]["median"]), float(app["app_stop_s"]["median"])
    return float(app["warm_boot_s"]["median"]), float(app["stop_s"]["median"])


def _app_floor(app: dict[str, Any]) -> float:
    """The app's own share of a quick run: reattach (boot), upgrade (stop + boot; for a
    PostgreSQL recipe the PR head's app booting with its migration); the lane stops it at
    its end without grace (its data is restored next), which costs the app nothing."""
    boot, stop = _boot_stop(app)
    if "migrate_boot_s" in app:
        return boot + stop + float(app["migrate_boot_s"]["median"])
    return boot + stop + boot


def goals(lanes_figures: dict[str, Any] | None, snap: dict[str, Any] | None
          ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float, limit: float, at_most: bool = True) -> None:
        met = value <= limit if at_most else value >= limit
        out.append({"goal": name, "value": round(value, 4),
                    "limit": f"{'<=' if at_most else '>='} {limit}", "met": met})

    if lanes_figures is not None:
        gaps = []
        for recipe in (r for r in RECIPES if r in lanes_figures):
            r = lanes_figures[recipe]
            cold = r["cold"]["wall_s"]
            goal(f"{recipe}: quick/cold", r["quick"]["wall_s"] / cold, GOAL_RATIO[recipe])
            goal(f"{recipe}: quick beyond the app's costs (s)",
                 r["quick"]["wall_s"] - _app_floor(r["app"]), GOAL_OVERHEAD_S[recipe])
            gaps += [r[k]["orchestration_per_step_s"] for k in ("cold", "quick_first", "quick")]
        goal("orchestration per step (s), mean over measured runs", statistics.mean(gaps),
             GOAL_ORCHESTRATION_S)
    if snap is not None:
        goal("snapshot: GNU tar + sha256sum / ours", snap["ratio_snapshot"], GOAL_TAR_RATIO,
             at_most=False)
        goal("restore after a quick run: GNU / ours", snap["ratio_restore_after_quick"],
             GOAL_TAR_RATIO, at_most=False)
        goal("full restore: GNU / ours", snap["ratio_restore_full"], GOAL_TAR_RATIO,
             at_most=False)
    return out


def table(lanes_figures: dict[str, Any] | None, snap: dict[str, Any] | None,
          met: list[dict[str, Any]]) -> str:
    lines = []
    if lanes_figures is not None:
        lines.append(f"{'recipe':14s} {'cold':>6s} {'quick':>6s} {'q/c':>5s} {'ours':>5s} "
                     f"{'boot':>5s} {'stop':>5s} "
                     f"{'sw-rm':>5s} {'sw-upd':>6s} {'queue':>5s} {'orch':>6s}")
        shown = [r for r in RECIPES if r in lanes_figures]
        for recipe in shown:
            r = lanes_figures[recipe]
            cold, quick = (r[k]["wall_s"] for k in ("cold", "quick"))
            app = r["app"]
            ours = quick - _app_floor(app)
            boot, stop = _boot_stop(app)
            swarm = (f"{app['swarm_rm_s']['median']:5.2f} {app['swarm_update_s']['median']:6.2f}"
                     if "swarm_rm_s" in app else f"{'-':>5s} {'-':>6s}")
            lines.append(
                f"{recipe:14s} {cold:6.2f} {quick:6.2f} {quick / cold:5.2f} {ours:5.2f} "
                f"{boot:5.2f} {stop:5.2f} {swarm} "
                f"{r['quick']['queue_to_first_step_s']:5.3f} "
                f"{1000 * r['quick']['orchestration_per_step_s']:4.1f}ms")
        lines.append(
            "  seconds. cold, quick: submit to verdict (a steady-state cold run: the canonical "
            "exists, so its upgrade tier runs; a quick run on a PR commit that changes the app). "
            "ours: quick minus the app's own costs (boot + stop + boot). boot, stop: the app's "
            "warm boot "
            "and graceful stop (plain docker). sw-rm, sw-upd: plain swarm removal and stock "
            "stop-first update, for reference. queue: submit to first step. orch: orchestration "
            "per step. notes-pg: boot is its stack's (database and app), stop the app's; "
            "the upgrade's boot is the PR head's app with its migration.")
        for recipe in (r for r in RECIPES if r in lanes_figures):
            r = lanes_figures[recipe]
            if "migrate_boot_s" in r["app"]:
                a = r["app"]
                lines.append(f"{recipe} app costs: stack boot {a['stack_boot_s']['median']:.2f}, "
                             f"app stop {a['app_stop_s']['median']:.2f}, PR boot with migration "
                             f"{a['migrate_boot_s']['median']:.2f}, database stop "
                             f"{a['db_stop_s']['median']:.2f}")
            steps = "  ".join(f"{s['name']} {s['duration_s']:.2f}" for s in r["quick"]["steps"])
            lines.append(f"{recipe} quick steps: {steps}")
        if "still_running" in lanes_figures:
            sr = lanes_figures["still_running"]
            lines.append(f"still_running check: {1000 * sr['median_s']:.1f} ms")
    if snap is not None:
        lines.append(
            f"snapshot of {snap['files']} files + {snap['big_mib']} MiB: ours "
            f"{snap['snapshot_ours']['best_s']:.2f} s, GNU tar + sha256sum "
            f"{snap['snapshot_gnu']['best_s']:.2f} s; restore after a quick run "
            f"{snap['restore_after_quick_ours']['best_s']:.2f} s "
            f"({snap['restore_after_quick_ours']['how']}), full "
            f"{snap['restore_full_ours']['best_s']:.2f} s, GNU sha256sum + empty + untar "
            f"{snap['restore_gnu']['best_s']:.2f} s")
    for g in met:
        lines.append(f"[{'met' if g['met'] else 'MISSED':6s}] {g['goal']}: {g['value']} "
                     f"(goal {g['limit']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("lanes", "snapshots"), default=None)
    parser.add_argument("--recipe", action="append", choices=RECIPES, default=None,
                        help="measure the lanes of this recipe only (repeatable)")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    figures: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "load_before": os.getloadavg(),
                 "python": host.python_version(),
                 "docker": subprocess.run(["docker", "version", "--format",
                                           "{{.Server.Version}}"], capture_output=True,
                                          text=True, check=False).stdout.strip()},
    }
    snap = lanes_figures = None
    if args.only in (None, "snapshots"):
        print("snapshot and restore vs GNU tar + sha256sum ...", flush=True)
        snap = figures["snapshots"] = snapshots.run()
    if args.only in (None, "lanes"):
        with BenchSystem() as system:
            lanes_figures = figures["lanes"] = measure_lanes(
                system, tuple(args.recipe) if args.recipe else RECIPES)
    figures["goals"] = goals(lanes_figures, snap)
    figures["load_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(table(lanes_figures, snap, figures["goals"]))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
