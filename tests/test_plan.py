"""Pure planning: upgrade base, promotion gate, each lane's steps and undo, janitor victims,
lost reports, triggers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ccci_tasks.admission import Lease, Resource, RunSpec
from ccci_tasks.bridge import parse_comment
from ccci_tasks.errors import DeployFailed, IntegrityError, InvalidInput, RunFailed
from ccci_tasks.lanes import LANES, cold, get_lane, janitor, quick, steps_by_queue
from ccci_tasks.lanes.model import Failure, RunCtx, run_hex
from ccci_tasks.lanes.plan import should_promote, upgrade_base
from ccci_tasks.naming import Domain, Recipe, Ref, RunHex, RunId
from ccci_tasks.platform.base import AppInfo, Kind
from ccci_tasks.state.reports import RunReport

TAGS = ["1.0.0+1.0", "1.1.0+1.1", "2.0.0+2.0"]
RUN = RunId("5d6040c0-6fe8-4ce8-92d0-a5bb4cd8544e")
OTHER = RunId("0e0e0e0e-1111-4222-8333-444455556666")
THIRD = RunId("7a7a7a7a-1111-4222-8333-444455556666")


@pytest.mark.parametrize(
    ("canonical", "target", "ref", "base", "skip"),
    [
        (None, "2.0.0+2.0", None, None, "no canonical"),
        ("1.1.0+1.1", "2.0.0+2.0", None, "1.1.0+1.1", None),
        ("2.0.0+2.0", "2.0.0+2.0", None, "1.1.0+1.1", None),  # base == head: step back
        ("1.0.0+1.0", "1.0.0+1.0", None, None, "no older published predecessor"),
        ("2.0.0+2.0", "1.1.0+1.1", None, None, "newer than"),
        ("1.1.0+1.1", "2.0.0+2.0", "0123abcd", "1.1.0+1.1", None),  # PR: from the canonical
        (None, "2.0.0+2.0", "0123abcd", None, "no canonical"),
    ],
)
def test_upgrade_base(canonical: str | None, target: str, ref: str | None,
                      base: str | None, skip: str | None) -> None:
    """The cold upgrade tier starts from the canonical, steps back when base == head, or
    says why it is skipped."""
    tags = [t for t in TAGS if t <= target] if target != "1.0.0+1.0" else ["1.0.0+1.0"]
    got_base, got_skip = upgrade_base(canonical, tags, target, ref)
    assert got_base == base
    if skip is None:
        assert got_skip is None
    else:
        assert got_skip is not None and skip in got_skip


@pytest.mark.parametrize(
    ("ref", "enrolled", "expected"),
    [(None, True, True), ("abc1234", True, False), (None, False, False),
     ("2.0.0+2.0", True, False)],
)
def test_only_green_cold_on_latest_of_enrolled_promotes(
    ref: str | None, enrolled: bool, expected: bool
) -> None:
    """PR runs (any ref, a version tag too) never promote; latest of an enrolled recipe does."""
    assert should_promote(ref, enrolled) is expected


def _ctx(lane: str, promote: bool = False, deps: tuple[Recipe, ...] = ()) -> RunCtx:
    """A run context whose plan has what any lane reads (each reads its own keys)."""
    plan = {"promote": promote, "known_good": "1.0.0+1.0", "outcome": "upgrade",
            "snapshot_first": True, "current": "1.0.0+1.0", "target": "1.0.1+1.0",
            "rollback_to": "1.0.0+1.0"}
    return RunCtx(run_id=RUN, lane=lane, recipe=Recipe("custom-html"), ref=None,
                  domain=Domain("x.ci.localhost"), token=7, deps=deps, plan=plan)


def test_registry_lists_each_lane_once_with_its_steps() -> None:
    """Every lane's steps and undo steps are functions of that lane; the step tasks per
    queue cover them all."""
    for lane in LANES.values():
        assert get_lane(lane.name) is lane
        ctx = _ctx(lane.name, promote=True)
        names = lane.steps(ctx)
        assert len(set(names)) == len(names)
        for step in names + lane.undo(ctx, Failure(names[-2], "fail", "x")):
            assert step in lane.functions, (lane.name, step)
        assert set(lane.functions) <= steps_by_queue()[lane.queue]
    with pytest.raises(InvalidInput, match="lane 'fast' is unknown"):
        get_lane("fast")


def test_quick_steps_verify_before_deploying_and_put_back_last() -> None:
    """Quick: verify comes before anything is deployed; restore and realm_delete end it."""
    steps = quick.steps(_ctx("quick"))
    assert steps.index("verify") < steps.index("deploy_canonical")
    assert steps[-2:] == ("restore", "realm_delete")
    assert steps.count("upgrade") == 1


def test_cold_steps_tear_down_before_promoting() -> None:
    """Cold: the teardown and the realm go before any promotion step; no promotion steps
    unless the run promotes."""
    plain = cold.steps(_ctx("cold"))
    assert plain[-2:] == ("teardown", "realm_delete")
    assert not set(cold.PROMOTE_STEPS) & set(plain)
    promoting = cold.steps(_ctx("cold", promote=True))
    assert promoting.index("realm_delete") < promoting.index("promote_deploy")
    assert promoting[-1] == "promote_snapshot"


@pytest.mark.parametrize(
    ("lane", "step", "exc", "verdict", "undo", "needle"),
    [
        ("quick", "verify", IntegrityError("volume data: sha256 mismatch"), "error", (),
         "refused: volume data"),
        ("quick", "admit", RuntimeError("boom"), "error", (), "admit: boom"),
        ("quick", "assert_upgrade", RunFailed("did not move"), "fail",
         ("restore", "realm_delete"), "did not move"),
        ("quick", "deploy_canonical", DeployFailed("crash loop"), "error",
         ("restore", "realm_delete"), "crash loop"),
        ("cold", "install", RunFailed("no such image"), "fail",
         ("teardown", "realm_delete"), "no such image"),
        ("cold", "promote_health", RuntimeError("down"), "pass", ("restore",),
         "green, but promotion failed at promote_health"),
    ],
)
def test_failures_map_to_verdicts_and_undo(
    lane: str, step: str, exc: Exception, verdict: str, undo: tuple[str, ...], needle: str
) -> None:
    """Each lane turns a failed step into its verdict and the undo steps it needs: nothing to
    undo before anything was touched, the known-good put back after, the sacred teardown."""
    the_lane = get_lane(lane)
    ctx = _ctx(lane, promote=True)
    failure = the_lane.failure(ctx, step, exc)
    assert failure.verdict == verdict
    assert needle in failure.reason
    assert the_lane.undo(ctx, failure) == undo


def test_run_ctx_round_trips() -> None:
    """A run's context survives the trip through a task argument (JSON-able dict)."""
    ctx = RunCtx(run_id=RUN, lane="cold", recipe=Recipe("keyed"), ref=Ref("1.1.0+1.1"),
                 domain=Domain("d.ci.localhost"), token=12, deps=(Recipe("keycloak"),),
                 plan={"promote": False}, failure=Failure("install", "fail", "why"))
    assert RunCtx.from_dict(ctx.to_dict()) == ctx
    assert ctx.realm == "keyed-5d6040"
    assert _ctx("cold").realm is None
    assert run_hex(RUN) == "5d6040"


def _app(kind: Kind, run: RunHex | None, deployed: bool = True, recipe: str = "r",
         base: str = "ci.localhost") -> AppInfo:
    from ccci_tasks import naming

    name, base_domain = Recipe(recipe), Domain(base)
    domain = (naming.cold_domain(name, run, base_domain) if kind == "cold" and run
              else naming.warm_domain(name, base_domain))
    return AppInfo(domain=domain, stack="s", recipe=name, kind=kind, run=run,
                   deployed=deployed)


def _lease(run_id: RunId, *resources: str, state: str = "live") -> Lease:
    spec = RunSpec(run_id=run_id, lane="quick", recipe=Recipe("held"),
                   resources=tuple(map(Resource.parse, resources)))
    return Lease(run_id=run_id, expires_at=1e12, spec=spec, state=state)


def test_janitor_reaps_only_what_no_occupying_run_explains() -> None:
    """Cold apps of runs that hold nothing are removed; canonicals held by a run (live or
    being reaped), or merely data-warm, are left alone; an unheld deployed canonical, or one
    with a cut-off change, is put back; infra apps and other systems' apps are never
    touched."""
    occupying = [_lease(RUN, "slot", "canon:held"),
                 _lease(THIRD, "slot", "canon:dying", state="reaping")]
    apps = [
        _app("cold", run_hex(RUN)),           # its run holds a slot: keep
        _app("cold", run_hex(THIRD)),         # its run is being reaped: the reaper's
        _app("cold", run_hex(OTHER)),         # run holds nothing: remove
        _app("cold", run_hex(OTHER), deployed=False),  # volumes only: remove too
        _app("warm", None, recipe="held"),    # a quick run holds it: keep
        _app("warm", None, recipe="dying"),   # held by a run being reaped: keep
        _app("warm", None, recipe="idle", deployed=False),  # data-warm: keep
        _app("warm", None, recipe="stray"),   # deployed, nobody holds it: put back
        _app("infra", None, recipe="keycloak"),  # live-warm infra: never touched
        _app("cold", run_hex(OTHER), base="other.localhost"),  # another system's: never
    ]
    actions = janitor.plan(apps, occupying, ["cut", "held", "stray"], Domain("ci.localhost"))
    assert [(a.kind, a.recipe) for a in actions] == [
        ("remove", "r"), ("remove", "r"), ("put_back", "stray"), ("put_back", "cut")]


def _report(run_id: RunId, minutes_ago: float) -> RunReport:
    return RunReport(run_id=run_id, lane="cold", recipe=Recipe("r"), ref=None, domain=None,
                     started_at=datetime.now(UTC) - timedelta(minutes=minutes_ago))


def test_lost_reports_are_those_nothing_explains() -> None:
    """A report is lost when no lease, queue entry, live app or lane reason explains it and
    it has not been touched for the grace period."""
    now = datetime.now(UTC)
    runs = [RunId(str(__import__("uuid").uuid4())) for _ in range(6)]
    unfinished = [_report(r, 10) for r in runs]
    unfinished[5] = _report(runs[5], 0)  # submitted right now
    lost = janitor.lost_reports(
        unfinished, [_lease(runs[0], "slot")], [runs[1]], {run_hex(runs[2])}, {runs[3]},
        now, 60, {})
    assert [r.run_id for r in lost] == [runs[4]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("!testme", "cold"), ("  !testme\n", "cold"), ("!testme --quick", "quick"),
     ("!testme  --quick", "quick"), ("!testmexyz", None), ("!testme foo", None),
     ("please !testme", None), ("!TESTME", None), ("", None)],
)
def test_parse_comment(text: str, expected: str | None) -> None:
    """Only a comment that is exactly a trigger fires, and it maps to its lane."""
    assert parse_comment(text) == expected
