"""The janitor: the engine and the state root reconciled with what Redis promised.

Each round (beat, every ``CCCI_JANITOR_INTERVAL_S``, on the alerts queue: never in a pool
that runs lane steps, so a stopped step cannot hold up the round that must kill it):

0. STONITH (R13.1): every process of this node that acts for a run without a live lease (a
   step stopped or stuck past its lease, the commands it started) is SIGKILLed and found
   gone (``fence.reap_stale``); a run whose process will not die keeps its resources, and
   a run last held on another node waits for that node's janitor, unless that node is lost
   (R15: no beat for the lease TTL), when its runs end ``error`` from here and nothing of
   that node is touched (runs queued for it end too: asked again, they go to a live node);
1. runs whose lease expired are reaped: their report ends ``error`` ("crashed"), an alert is
   written, and their lane's ``recover`` cleans up what they left (their cold app, their
   canonical put back to known-good through its intent record, their realm); only when that
   is done do they free their resources (a dead run's app may still be live, and counting it
   keeps MAX_TESTS);
2. orphans that no occupying run explains (after a broker that lost its data, say) are
   cleaned up while the janitor holds their resources (a *hold*: ``RunSpec.hold``, not a
   run): a cold app of this system is removed; a resource with a pending intent record, or a
   canonical that is deployed, is cleaned up by the clean-up the lanes declare for its kind
   (``Lane.orphans``: a canonical put back to known-good, a live-warm app rolled back);
3. unfinished run reports that nothing explains (no lease, no queue entry, no live app, and
   their lane knows no other reason) end ``error`` ("lost");
4. the broker drops the reports that ended ``CCCI_REPORT_BROKER_DAYS`` ago (each host keeps
   its copies);
5. the queue moves on (``dispatch``).

Plan, then act: ``plan`` is pure over what was observed; ``run`` acts, one action at a time,
and a failing action is reported and retried next round without stopping the others. Only
apps under this system's base domain are ever touched; live-warm infra apps never are.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import ccci_tasks.lanes.fence as fence
import ccci_tasks.lanes.placement as placement
import ccci_tasks.lanes.runner as runner
from ccci_tasks import hooks, naming
from ccci_tasks.admission import Lease, Resource, RunSpec, Slots
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError, InvalidInput
from ccci_tasks.lanes.model import run_hex
from ccci_tasks.lanes.registry import LANES, get_lane, orphans
from ccci_tasks.naming import Domain, Recipe, RunHex, RunId
from ccci_tasks.outbox.alerts import write_alert
from ccci_tasks.platform.base import AppInfo, Platform
from ccci_tasks.state import intents, reports
from ccci_tasks.state.clock import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    kind: Literal["remove", "put_back", "roll_back"]
    domain: Domain
    recipe: str  # as the platform or an intent record names it
    why: str


@dataclass
class JanitorReport:
    crashed: list[str] = field(default_factory=list)
    recovered: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    killed: list[dict[str, Any]] = field(default_factory=list)
    reports_pruned: list[str] = field(default_factory=list)  # dropped from the broker

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ours(apps: list[AppInfo], base_domain: Domain) -> list[AppInfo]:
    """The cold apps and canonicals of this system (never live-warm infra apps)."""
    return [a for a in apps if a.kind in ("cold", "warm")
            and naming.parse_domain(a.domain, base_domain) is not None]


def plan(
    apps: list[AppInfo], occupying: list[Lease], dirty: list[str], base_domain: Domain,
    infra_dirty: Sequence[str] = (),
) -> list[Action]:
    """What to clean up that no occupying run explains: cold apps whose run holds nothing;
    canonicals deployed, or with a pending intent record (``dirty``: their recipes), that no
    run holds; live-warm apps with a pending intent (a cut-off reconcile) no run holds."""
    hexes = {run_hex(lease.run_id) for lease in occupying}
    held = {r.name for lease in occupying if lease.spec
            for r in lease.spec.resources if r.kind == "canon"}
    held_infra = {r.name for lease in occupying if lease.spec
                  for r in lease.spec.resources if r.kind == "infra"}
    actions = []
    for app in ours(apps, base_domain):
        if app.kind == "cold" and (app.run is None or app.run not in hexes):
            actions.append(Action("remove", app.domain, app.recipe,
                                  f"cold app of run {app.run or '?'} which holds nothing"))
        elif app.kind == "warm" and app.deployed and app.recipe not in held:
            actions.append(Action("put_back", app.domain, app.recipe,
                                  "canonical deployed but no run holds it"))
    for recipe in dirty:
        if recipe not in held and not any(a.recipe == recipe and a.kind == "put_back"
                                          for a in actions):
            try:
                domain = naming.warm_domain(Recipe(recipe), base_domain)
            except InvalidInput:
                continue
            actions.append(Action("put_back", domain, recipe,
                                  "a change of the canonical was cut off (intent record)"))
    for name in infra_dirty:
        if name in held_infra:
            continue
        try:
            domain = naming.warm_domain(Recipe(name), base_domain)
        except InvalidInput:
            continue
        actions.append(Action("roll_back", domain, name,
                              "a reconcile was cut off (intent record)"))
    return actions


def lost_reports(
    unfinished: list[reports.RunReport], occupying: list[Lease], pending: list[RunId],
    live_hexes: set[RunHex], explained: set[RunId], now: datetime, grace_s: float,
    touched: dict[RunId, datetime],
) -> list[reports.RunReport]:
    """Unfinished reports nothing explains, untouched for ``grace_s`` (a run being submitted
    right now has a report before it has a queue entry)."""
    known = {lease.run_id for lease in occupying} | set(pending) | explained
    return [r for r in unfinished
            if r.run_id not in known and run_hex(r.run_id) not in live_hexes
            and (now - touched.get(r.run_id, r.started_at)).total_seconds() >= grace_s]


def _mark_crashed(settings: Settings, spec: RunSpec, report: JanitorReport,
                  lost: dict[str, float] | None = None) -> None:
    """End a dead run's report (once) with an alert; harmless for one already ended."""
    why = (f"crashed: its lease expired after {settings.lease_ttl_s} s without renewal "
           "(worker lost or stopped, or step stuck); the janitor cleans up what it left")
    if lost and spec.node in lost and spec.node != settings.node:
        why = f"crashed: {_lost_note(settings, spec.node, lost[spec.node])}"
    store = reports.at(settings)
    ended = store.end(spec.run_id, "error", why) if store.load(spec.run_id) else None
    if ended is not None:
        hooks.run_finished(settings, ended)
        try:
            write_alert(settings.state_dir, "run-crashed", spec.recipe,
                        f"{spec.lane} run {spec.run_id} of {spec.recipe} crashed", why)
        except CcciError as exc:
            report.problems.append(f"alert for {spec.run_id}: {exc}")
        report.crashed.append(spec.run_id)


def lost_nodes(settings: Settings) -> dict[str, float]:
    """The nodes of the registry that are ``lost`` (no beat for the lease TTL), each with the
    seconds since its last beat. A node the registry does not know is not lost: another
    node's dead run then waits for that node's own janitor, which kills its processes first."""
    found = placement.registry(settings) or []
    newest = max((n.seen for n in found), default=0.0)
    return {n.node: max(0.0, newest - n.seen) for n in found if n.state == "lost"}


def node_lost(settings: Settings, node: str) -> bool:
    """Whether ``node`` is declared lost, so that its dead runs are ended from here."""
    return node in lost_nodes(settings)


def _lost_note(settings: Settings, node: str, silent_s: float) -> str:
    return (f"node {node} lost: no beat for over {settings.lease_ttl_s} s (last one {silent_s:.0f}"
            f" s before the newest node's); ended from node {settings.node}, which touches "
            f"nothing of node {node}")


def _end_lost_nodes_runs(settings: Settings, slots: Slots, lost: dict[str, float],
                         report: JanitorReport) -> None:
    """Runs queued for a lost node end ``error`` (asked again, they are placed on a live
    node); nothing of the lost node is touched (R15)."""
    for spec in slots.pending():
        if spec.pin is None or spec.pin not in lost or spec.hold:
            continue
        if not slots.cancel(spec.run_id):
            continue
        why = (f"{_lost_note(settings, spec.pin, lost[spec.pin])}; the run had not started: "
               "ask again and it is placed on a live node")
        store = reports.at(settings)
        ended = store.end(spec.run_id, "error", why) if store.load(spec.run_id) else None
        slots.forget(spec.run_id)
        if ended is not None:
            hooks.run_finished(settings, ended)
        report.crashed.append(spec.run_id)


def _recover_reaped(settings: Settings, platform: Platform, slots: Slots,
                    report: JanitorReport, stuck: set[str], lost: dict[str, float]) -> None:
    for lease in slots.occupying():
        if lease.state != "reaping":
            continue
        run_id, spec = lease.run_id, lease.spec
        if run_id in stuck:
            continue  # its process is not gone yet: its resources stay held
        # the node of the process that last acted for it, else the one that admitted it
        node = lease.node or (spec.node if spec is not None else None)
        if node is not None and node != settings.node:
            if node not in lost:
                report.problems.append(f"run {run_id} was last held on node {node}: waiting "
                                       "for that node's janitor to kill what is left of it")
                continue
            # its node is lost: what it left there is that node's to clean up when it
            # returns (its runs are ended, so all of it is stale there); its holds go now
            report.recovered.append({"run_id": run_id, "lane": spec.lane if spec else None,
                                     "done": [f"node {node} lost: nothing touched"]})
            slots.finish_reap(run_id)
            continue
        if spec is None:
            slots.finish_reap(run_id)
            continue
        try:
            if spec.hold:  # a hold a previous round did not finish
                done = _recover_hold(settings, platform, spec)
            else:
                done = get_lane(spec.lane).recover(settings, platform, spec)
        except (CcciError, OSError) as exc:
            report.problems.append(f"recover run {run_id}: {exc}; next round")
            continue
        report.recovered.append({"run_id": run_id, "lane": spec.lane, "done": done})
        slots.finish_reap(run_id)


def _recover_hold(settings: Settings, platform: Platform, spec: RunSpec) -> list[str]:
    """Finish what a hold was held for: the declared clean-up of each resource it holds
    (a slot alone needs none: a cold app no run holds is removed by the next plan)."""
    cleanups = orphans()
    done: list[str] = []
    for resource in spec.resources:
        cleanup = cleanups.get(resource.kind)
        if cleanup is not None:
            done += cleanup(settings, platform, Recipe(resource.name))
    return done


def _resources(action: Action) -> list[Resource]:
    """What the janitor holds while it acts: a canonical takes a slot too (it is deployed
    while it is put back); a live-warm app is held alone, as its reconcile holds it."""
    if action.kind == "remove":
        return [Resource.slot()]
    if action.kind == "put_back":
        return [Resource.slot(), Resource.canon(action.recipe)]
    return [Resource.infra(action.recipe, exclusive=True)]


def _act(settings: Settings, platform: Platform, slots: Slots, action: Action) -> None:
    hold, resources = RunId(str(uuid.uuid4())), _resources(action)
    slots.hold(hold, Recipe(action.recipe or "unknown"), resources)
    if action.kind == "remove":
        platform.remove(action.domain)
    else:
        _recover_hold(settings, platform,
                      RunSpec.for_hold(hold, Recipe(action.recipe), tuple(resources),
                                       settings.node))
    slots.finish_reap(hold)


def run(settings: Settings, platform: Platform) -> JanitorReport:
    """One janitor round; see the module docstring."""
    slots = Slots.from_settings(settings)
    state = settings.state_dir
    report = JanitorReport()
    slots.reap_expired()
    killed = fence.reap_stale(settings, slots)
    report.killed, report.problems = killed.killed, list(killed.problems)
    lost = lost_nodes(settings)
    for _, spec in slots.reaping():  # newly reaped, and those an earlier round left
        if spec is not None and not spec.hold:
            _mark_crashed(settings, spec, report, lost)
    _recover_reaped(settings, platform, slots, report, killed.stuck_runs, lost)
    if lost:
        _end_lost_nodes_runs(settings, slots, lost, report)

    apps = platform.live_apps()
    occupying = slots.occupying()
    pending = [Resource.from_key(key) for key in intents.pending_resources(state)]
    dirty = [r.name for r in pending if r.kind == "canon"]
    infra_dirty = [r.name for r in pending if r.kind == "infra"]
    actions = plan(apps, occupying, dirty, settings.base_domain, infra_dirty)
    if killed.stuck_runs and actions:  # whose they are is not known: none this round
        report.problems.append(f"{len(actions)} clean-up action(s) wait until every stale "
                               "process is gone")
        actions = []
    for action in actions:
        log.warning("janitor: %s %s (%s)", action.kind, action.domain, action.why)
        try:
            _act(settings, platform, slots, action)
            report.actions.append(asdict(action))
        except (CcciError, OSError) as exc:
            report.problems.append(f"{action.kind} {action.domain}: {exc}")

    for run_id in slots.parked():  # a parked run whose wake-up was lost with a worker
        parked = reports.at(settings).load(run_id)
        if parked is not None and not parked.finished and parked.lane in LANES \
                and LANES[parked.lane].ready(settings, run_id):
            report.actions.append({"kind": "resume", "run_id": run_id})
            runner.resume(settings, run_id)
    _end_lost(settings, slots, platform, report)
    try:
        report.reports_pruned = reports.at(settings).prune()
    except CcciError as exc:
        report.problems.append(f"dropping old run reports from the broker: {exc}")
    try:
        report.launched = runner.dispatch(settings)
        if slots.pending():  # a wake-up lost with a worker or a broker hiccup
            placement.wake(settings)
    except CcciError as exc:
        report.problems.append(f"dispatch: {exc}")
    if report.problems:
        log.warning("janitor problems: %s", "; ".join(report.problems))
    return report


def _end_lost(settings: Settings, slots: Slots, platform: Platform,
              report: JanitorReport) -> None:
    store = reports.at(settings)
    # a run admitted on another live node is explained by that node's engine, which this
    # janitor cannot see: that node's janitor judges it (R15)
    lost_ones = lost_nodes(settings)
    unfinished = [r for r in store.all(unfinished=True)
                  if r.node is None or r.node == settings.node or r.node in lost_ones]
    if not unfinished:
        return
    occupying = slots.occupying()
    pending = [s.run_id for s in slots.pending()] + slots.parked()
    live_hexes = {a.run for a in ours(platform.live_apps(), settings.base_domain)
                  if a.kind == "cold" and a.run}
    explained = {r.run_id for r in unfinished
                 if r.lane in LANES and LANES[r.lane].explains(settings, r)}
    touched = {r.run_id: r.updated for r in unfinished if r.updated is not None}
    grace = max(float(settings.lease_ttl_s), 2.0 * settings.janitor_interval_s)
    for lost in lost_reports(unfinished, occupying, pending, live_hexes, explained, utc_now(),
                             grace, touched):
        why = ("lost: no lease, no queue entry and no live app explains this run (the broker "
               "lost its data, or its worker died before it was queued)")
        ended = store.end(lost.run_id, "error", why)
        if ended is not None:
            hooks.run_finished(settings, ended)
            report.lost.append(lost.run_id)
