"""`make soak N=100 FAULTS=...`: N quick and cold runs, each hit by one random fault (R9.5, R13).

On a private system (``soakfaults.SoakSystem``: its own redis-server, state root, base domain,
workers, a short lease and a 1 s janitor) the custom-html canonical is seeded, then each run
(quick on a PR head, or cold on latest, which promotes) gets one fault of the selected kinds
(``soakfaults.KINDS``, each as often as the others, in a random order) at a random moment
of a random step. After each run the soak waits for its verdict and
for the system to be quiet, and checks:

* ``known_goods_lost`` - the canonical is not usable, its snapshot does not verify, or its
  volume differs from the snapshot (the soak then re-seeds it and goes on);
* ``max_tests_violations`` - samples of a 100 ms watcher that saw more apps live than
  MAX_TESTS (1);
* ``runs_left_running`` - runs without a verdict in time, and reports unfinished at the end;
* ``stale_actions`` - a step recorded, or an engine call allowed, after its run's verdict;
  a process paused at a failpoint still alive once its run has ended;
* ``left_live`` - the system not quiet (apps, leases, intent records) after a run.

The JSON (``--out``, default ``bench/results/soak-<UTC time>.json``) has these counts, the
faults by kind and the verdicts; the exit status is 1 when any of the counts is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bench import lanes
from bench.soakfaults import KINDS, POINTS, SoakSystem, restart_dockerd
from bench.system import REPO

if TYPE_CHECKING:  # ccci_tasks is imported once the bench system has set the environment
    from ccci_tasks.state.reports import RunReport

T = TypeVar("T")

RECIPE = "custom-html"
# Where a fault lands: a step of the lane (cold runs on latest promote).
STEPS = {"quick": ("verify", "deploy_canonical", "health_check", "upgrade", "assert_upgrade",
                   "overlay_upgrade", "overlay_custom", "restore", "realm_delete"),
         "cold": ("new_app", "install", "health_check", "overlay_install", "upgrade_tier",
                  "teardown", "promote_deploy", "promote_health", "promote_undeploy",
                  "promote_snapshot")}
BAD = ("known_goods_lost", "max_tests_violations", "runs_left_running", "stale_actions",
       "left_live")


class Watcher:
    """Samples the soak's live apps (cold apps, canonicals) every 100 ms."""

    def __init__(self, system: SoakSystem) -> None:
        import docker

        self.client = docker.from_env()
        self.system = system
        self.samples = self.violations = self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a restarting engine: sample again
                live = {(s.attrs["Spec"].get("Labels") or {}).get("com.docker.stack.namespace")
                        for s in self.client.services.list(filters={"label": "ccci.kind"})
                        if self.system.ours(s.attrs["Spec"].get("Labels") or {})
                        and (s.attrs["Spec"].get("Labels") or {}).get("ccci.kind")
                        in ("cold", "warm")}
                self.samples += 1
                self.most = max(self.most, len(live))
                self.violations += len(live) > 1
            time.sleep(0.1)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()


def _report(run_id: str) -> RunReport | None:
    from ccci_tasks.config import get_settings
    from ccci_tasks.naming import RunId
    from ccci_tasks.state import reports

    return reports.at(get_settings()).load(RunId(run_id))


def _until(check: Callable[[], T | Literal[False] | None], timeout_s: float, poll_s: float = 0.2
           ) -> T | None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            found = check()
            if found:
                return found
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)


def _reached(report: RunReport, step: str) -> bool:
    """The run is in ``step`` now, or past it (a short step is over between two polls)."""
    current = report.current.name if report.current is not None else None
    return current == step or step in {s.name for s in report.steps}


def _submit(lane: str, pr: str) -> str:
    """Queue the run the way the bridge does; a broker just restarted may refuse once."""
    from ccci_tasks.tasks import cold_run, quick_run

    task = quick_run if lane == "quick" else cold_run
    args = (RECIPE, pr) if lane == "quick" else (RECIPE, None)
    for attempt in range(10):
        try:
            return str(task.delay(*args).id)
        except Exception:
            if attempt == 9:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _quiet(system: SoakSystem) -> str:
    """'' when nothing of the soak is live, occupies a slot, or has an intent pending."""
    import docker

    from ccci_tasks.admission import Slots
    from ccci_tasks.config import get_settings

    client = docker.from_env()
    try:
        live = [s.name for s in client.services.list(filters={"label": "ccci.kind"})
                if system.ours(s.attrs["Spec"].get("Labels") or {})]
    finally:
        client.close()
    settings = get_settings()
    occupying = [x.run_id[:8] for x in Slots.from_settings(settings).occupying()]
    intents = sorted(p.name for p in (settings.state_dir / "intents").glob("*.json"))
    return "; ".join(f"{k} {v}" for k, v in (("live", live), ("occupying", occupying),
                                             ("intents", intents)) if v)


def _known_good_problem(system: SoakSystem) -> str:
    """'' when the canonical is usable, its snapshot verifies and its volume equals it."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.errors import CcciError
    from ccci_tasks.lanes import canon
    from ccci_tasks.naming import Recipe
    from ccci_tasks.state import warmsnap

    settings = get_settings()
    found = canon.usable(settings, Recipe(RECIPE))
    if found.registry is None:
        return found.why
    try:
        warmsnap.verify(settings.state_dir, Recipe(RECIPE))
    except CcciError as exc:
        return str(exc)
    return _volume_differs(system, settings.state_dir)


def _volume_differs(system: SoakSystem, state: Path) -> str:
    """'' when each of the canonical's volumes holds exactly its snapshot tar's members
    (path, type, sha256 of a file or a link's target)."""
    import docker

    from ccci_tasks.naming import Recipe
    from ccci_tasks.state import warmsnap

    manifest = warmsnap.read_current(state, Recipe(RECIPE))
    assert manifest is not None
    client = docker.from_env()
    try:
        volumes = {}
        for volume in client.volumes.list(filters={"label": ["ccci.kind=warm",
                                                             f"ccci.recipe={RECIPE}"]}):
            labels = volume.attrs.get("Labels") or {}
            if system.ours(labels):
                stack = labels.get("com.docker.stack.namespace", "")
                volumes[volume.name.removeprefix(stack + "_")] = Path(volume.attrs["Mountpoint"])
    finally:
        client.close()
    snap = (state / RECIPE / "snapshot").resolve()
    for entry in manifest.volumes:
        if entry.name not in volumes:
            return f"volume {entry.name} is missing"
        want, have = _tar_rows(snap / entry.file), _dir_rows(volumes[entry.name])
        if want != have:
            return f"volume {entry.name} differs from its snapshot: {sorted(want ^ have)[:4]}"
    return ""


def _tar_rows(path: Path) -> set[tuple[str, str, str]]:
    rows = set()
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            rel = member.name.removeprefix("./").rstrip("/")
            if rel in ("", "."):
                continue
            if member.isfile() or member.islnk():
                handle = archive.extractfile(member)
                assert handle is not None
                rows.add((rel, "f", hashlib.sha256(handle.read()).hexdigest()))
            else:
                rows.add((rel, "l" if member.issym() else "d" if member.isdir() else "?",
                          member.linkname if member.issym() else ""))
    return rows


def _dir_rows(root: Path) -> set[tuple[str, str, str]]:
    rows = set()
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            rows.add((rel, "l", os.readlink(path)))
        elif path.is_file():
            rows.add((rel, "f", hashlib.sha256(path.read_bytes()).hexdigest()))
        elif path.is_dir():
            rows.add((rel, "d", ""))
        else:
            rows.add((rel, "?", ""))
    return rows


def _inject(system: SoakSystem, kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "sigkill":
        system.restart("runs")
        return {}
    if kind == "sigstop":
        system.signal_runs(signal.SIGSTOP)
        stopped_s = system.ttl_s + 3 * system.janitor_s + 2
        time.sleep(stopped_s)
        system.signal_runs(signal.SIGCONT)
        return {"stopped_s": stopped_s}
    if kind == "flushall":
        system.flushall()
        return {}
    if kind == "broker-restart":
        keep = rng.random() < 0.5
        return {"keep_data": keep, "away_s": round(system.restart_broker(keep), 2)}
    if kind == "dockerd-restart":
        return {"away_s": round(restart_dockerd(), 2)}
    raise ValueError(kind)


def one_run(system: SoakSystem, rng: random.Random, lane: str, kind: str, pr: str
            ) -> dict[str, Any]:
    from ccci_tasks.config import get_settings

    row: dict[str, Any] = {"lane": lane, "fault": kind}
    state = get_settings().state_dir
    if kind == "failpoint":
        row["point"] = rng.choice(POINTS[lane])
        system.restart("runs", CCCI_FAILPOINTS=f"{row['point']}=pause")
    run_id = _submit(lane, pr)
    row["run_id"] = run_id
    _until(lambda: (r := _report(run_id)) and (r.admitted_at or r.finished), 180)
    pid = None
    if kind == "failpoint":
        def fired() -> Any:
            folder = state / "failpoints"
            for path in folder.glob("*.json"):
                record = json.loads(path.read_text())
                if record["run_id"] == run_id:
                    return record
            return (r := _report(run_id)) is not None and r.finished and {"pid": None}

        record = _until(fired, 300) or {"pid": None}
        pid = record["pid"]
        row["fired"] = pid is not None
    else:
        # At a random step of the lane, a random moment into it: every window gets hit.
        row["at_step"] = rng.choice(STEPS[lane])
        _until(lambda: (r := _report(run_id)) and (r.finished or _reached(r, row["at_step"])),
               300, 0.02)
        time.sleep(rng.uniform(0, 1.0))
        row["hit"] = not ((r := _report(run_id)) is not None and r.finished)
        row.update(_inject(system, kind, rng))
    report = _until(lambda: (r := _report(run_id)) and r.finished and r,
                    system.ttl_s + 10 * system.janitor_s + 300, 0.5)
    row["verdict"] = report.verdict if report else None
    row["reason"] = (report.reason or "")[:160] if report else "no verdict in time"
    left = ""
    if _until(lambda: not _quiet(system), 180, 0.5) is None:
        left = _quiet(system)
    row["left_live"] = left
    if pid is not None:
        row["paused_alive"] = Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] not in ("Z", "X")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    if kind == "failpoint":
        system.restart("runs")  # disarmed (a point not reached stays armed otherwise)
    row["known_good"] = _known_good_problem(system)
    if row["known_good"]:
        row["reseed"] = lanes.run("cold", RECIPE, None).verdict
    return row


def _stale(rows: list[dict[str, Any]]) -> list[str]:
    """Steps recorded, or engine calls allowed, after their run's verdict."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.lanes.fence import journal_path
    from ccci_tasks.state.clock import parse_iso

    state = get_settings().state_dir
    found = []
    for row in rows:
        report = _report(row["run_id"])
        if report is None or report.finished_at is None:
            continue
        for step in report.steps:
            if step.started_at > report.finished_at:
                found.append(f"{row['run_id']}: step {step.name} after the verdict")
        path = journal_path(state, row["run_id"])
        for line in path.read_text().splitlines() if path.is_file() else ():
            call = json.loads(line)
            if call["allowed"] and parse_iso(call["ts"]) > report.finished_at:
                found.append(f"{row['run_id']}: {call['op']} allowed after the verdict")
        if row.get("paused_alive"):
            found.append(f"{row['run_id']}: the paused process outlived its run")
    return found


def soak(runs: int, kinds: tuple[str, ...], seed: int, ttl_s: int, janitor_s: int
         ) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.monotonic()
    with SoakSystem(ttl_s, janitor_s) as system:
        system.start_all()
        seeded = lanes.run("cold", RECIPE, None)
        if seeded.verdict != "pass":
            raise SystemExit(f"soak: seeding the canonical failed: {seeded.reason}")
        from ccci_tasks.naming import Recipe
        from ccci_tasks.platform.recipes import RecipeRepo

        recipes = Path(system.env["CCCI_RECIPES_DIR"])
        latest = RecipeRepo(recipes / RECIPE, Recipe(RECIPE)).latest()
        assert latest is not None
        pr = lanes.pr_commit(recipes / RECIPE, latest, "GREETING:-Hello from custom-html",
                             "GREETING:-Hello from the soak")
        rows: list[dict[str, Any]] = []
        with Watcher(system) as watcher:
            for i in range(runs):
                if i % len(kinds) == 0:  # each kind as often as the others
                    order = rng.sample(kinds, len(kinds))
                lane, kind = rng.choice(("quick", "cold")), order[i % len(kinds)]
                row = one_run(system, rng, lane, kind, pr)
                print(f"soak {i + 1}/{runs}: {lane:5} {kind:15} {row.get('point', ''):38} "
                      f"{row['verdict']} {row['reason'][:60]}", flush=True)
                rows.append(row)
        from ccci_tasks.config import get_settings
        from ccci_tasks.state import reports

        unfinished = [r.run_id for r in reports.at(get_settings()).all() if not r.finished]
        stale = _stale(rows)
        result = {
            "runs": runs, "seed": seed, "fault_kinds": list(kinds),
            "lease_ttl_s": ttl_s, "janitor_interval_s": janitor_s,
            "lanes": dict(Counter(r["lane"] for r in rows)),
            "faults": dict(Counter(r["fault"] for r in rows)),
            "faults_hit_a_running_run": dict(Counter(r["fault"] for r in rows
                                                     if r.get("hit", r.get("fired")))),
            "failpoints": dict(Counter(f"{r['lane']}:{r['point']}" for r in rows
                                       if r.get("fired"))),
            "verdicts": dict(Counter(str(r["verdict"]) for r in rows)),
            "known_goods_lost": sum(1 for r in rows if r["known_good"]),
            "max_tests_violations": watcher.violations,
            "max_apps_live_seen": watcher.most,
            "watcher_samples": watcher.samples,
            "runs_left_running": len(unfinished) + sum(1 for r in rows if not r["verdict"]),
            "stale_actions": len(stale),
            "left_live": sum(1 for r in rows if r["left_live"]),
            "problems": stale + [f"{r['run_id']}: {r['known_good']}" for r in rows
                                 if r["known_good"]]
                        + [f"{r['run_id']}: left {r['left_live']}" for r in rows
                           if r["left_live"]],
            "duration_s": round(time.monotonic() - started, 1),
            "details": rows,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--faults", default="all",
                        help=f"comma-separated kinds of {', '.join(KINDS)}, or all")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--ttl", type=int, default=8, help="lease TTL (s)")
    parser.add_argument("--janitor", type=int, default=1, help="janitor interval (s)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    kinds = KINDS if args.faults == "all" else tuple(k.strip() for k in args.faults.split(","))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or args.runs < 1:
        parser.error(f"--faults {args.faults!r}: unknown kind(s) {unknown}; expected "
                     f"{', '.join(KINDS)} or all; --runs must be >= 1")
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"soak: {args.runs} runs, faults {', '.join(kinds)}, seed {seed}", flush=True)
    result = soak(args.runs, kinds, seed, args.ttl, args.janitor)
    out = args.out or REPO / "bench" / "results" / \
        f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("details",)}
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"soak: written to {out}")
    return 1 if any(result[k] for k in BAD) else 0


if __name__ == "__main__":
    raise SystemExit(main())
