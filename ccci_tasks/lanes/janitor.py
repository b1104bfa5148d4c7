"""The janitor: reap what crashed runs left behind, free their slots, admit queued runs.

Plan, then act. ``plan`` decides from observed apps and leases (pure); ``run`` acts:
- a cold app (``ccci.kind=cold``) whose run hex matches no live lease is removed with its
  volumes and secrets;
- a deployed warm canonical that no live run holds is undeployed and its known-good data
  restored (or, with no snapshot to restore, removed);
- runs whose lease expired get verdict ``error`` and a ``run-crashed`` alert.
Warm apps that are merely undeployed (the data-warm state) are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ccci_tasks import naming
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError
from ccci_tasks.lanes import plan as lane_plan
from ccci_tasks.platform.base import AppInfo, Platform
from ccci_tasks.slots import Lease, RunSpec, Slots
from ccci_tasks.state import reports, warmsnap
from ccci_tasks.state.alerts import write_alert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    kind: Literal["remove", "put_back"]
    domain: str
    recipe: str
    why: str


@dataclass
class JanitorReport:
    crashed: list[str] = field(default_factory=list)
    actions: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(apps: list[AppInfo], leases: list[Lease], base_domain: str) -> list[Action]:
    """What to reap, from the apps seen and the live leases.

    Only apps under this system's base domain are considered: another ccci system sharing
    the Docker engine (say, a test suite beside `make up`) is never touched.
    """
    apps = [app for app in apps if naming.parse_domain(app.domain, base_domain) is not None]
    live_hexes = {lane_plan.run_hex(lease.run_id) for lease in leases}
    held = {lease.spec.canonical for lease in leases if lease.spec and lease.spec.canonical}
    actions = []
    for app in apps:
        if app.kind == "cold" and (app.run is None or app.run not in live_hexes):
            actions.append(Action("remove", app.domain, app.recipe,
                                  f"cold app of run {app.run or '?'} which holds no slot"))
        elif app.kind == "warm" and app.deployed and app.recipe not in held:
            actions.append(Action("put_back", app.domain, app.recipe,
                                  "canonical deployed but no run holds it"))
    return actions


def leftovers(run_id: str, spec: RunSpec | None, apps: list[AppInfo]) -> list[str]:
    """What a crashed run left that is still there: its cold app, its deployed canonical."""
    hexid = lane_plan.run_hex(run_id)
    canonical = spec.canonical if spec else None
    return [app.domain for app in apps
            if (app.kind == "cold" and app.run == hexid)
            or (app.kind == "warm" and app.deployed and canonical == app.recipe)]


def _mark_crashed(settings: Settings, spec: RunSpec, report: JanitorReport) -> None:
    why = (f"run crashed: its slot lease expired after {settings.lease_ttl_s} s without "
           "renewal (worker lost or step stuck); the janitor cleaned up what it left")
    existing = reports.load_report(settings.state_dir, spec.run_id)
    if existing is not None and not existing.finished:
        reports.finish_report(settings.state_dir, spec.run_id, "error", why)
        try:
            write_alert(settings.state_dir, "run-crashed", spec.recipe,
                        f"{spec.lane} run {spec.run_id} of {spec.recipe} crashed", why)
        except CcciError as exc:
            report.problems.append(f"alert for {spec.run_id}: {exc}")
    report.crashed.append(spec.run_id)


def _act(settings: Settings, platform: Platform, action: Action) -> None:
    if action.kind == "remove":
        platform.remove(action.domain)
        return
    platform.undeploy(action.domain)
    if warmsnap.read_current(settings.state_dir, action.recipe) is not None:
        warmsnap.restore(platform, settings.state_dir, action.recipe, action.domain)


def run(settings: Settings, platform: Platform) -> JanitorReport:
    from ccci_tasks.lanes.runner import dispatch

    slots = Slots.from_settings(settings)
    report = JanitorReport()
    for spec in slots.reap_expired():
        _mark_crashed(settings, spec, report)
    for action in plan(platform.live_apps(), slots.leases(), settings.base_domain):
        log.warning("janitor: %s %s (%s)", action.kind, action.domain, action.why)
        try:
            _act(settings, platform, action)
            report.actions.append(asdict(action))
        except CcciError as exc:
            report.problems.append(f"{action.kind} {action.domain}: {exc}")
    # A reaped run keeps its slot until nothing it left is live any more.
    remaining = platform.live_apps()
    for run_id, reaped in slots.reaping():
        left = leftovers(run_id, reaped, remaining)
        if left:
            report.problems.append(f"run {run_id}: {', '.join(left)} still there; next time")
        else:
            slots.finish_reap(run_id)
    report.launched = dispatch(settings)
    return report
