"""Pure planning: upgrade base, promotion gate, steps per lane, janitor victims, triggers."""

from __future__ import annotations

import pytest

from ccci_tasks.bridge import parse_comment
from ccci_tasks.lanes import janitor
from ccci_tasks.lanes.plan import (
    COLD_STEPS,
    PROMOTE_STEPS,
    QUICK_STEPS,
    RunCtx,
    run_hex,
    should_promote,
    steps_for,
    upgrade_base,
)
from ccci_tasks.platform.base import AppInfo
from ccci_tasks.slots import Lease, RunSpec

TAGS = ["1.0.0+1.0", "1.1.0+1.1", "2.0.0+2.0"]
RUN = "5d6040c0-6fe8-4ce8-92d0-a5bb4cd8544e"
OTHER = "0e0e0e0e-1111-4222-8333-444455556666"


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
    ("lane", "ref", "enrolled", "expected"),
    [("cold", None, True, True), ("cold", "abc1234", True, False),
     ("cold", None, False, False), ("quick", None, True, False)],
)
def test_only_green_cold_on_latest_of_enrolled_promotes(
    lane: str, ref: str | None, enrolled: bool, expected: bool
) -> None:
    """PR runs and quick runs never promote; cold on latest of an enrolled recipe does."""
    assert should_promote(lane, ref, enrolled) is expected  # type: ignore[arg-type]


def _ctx(lane: str, promote: bool = False) -> RunCtx:
    return RunCtx(run_id=RUN, lane=lane, recipe="custom-html", ref=None,  # type: ignore[arg-type]
                  domain="x.ci.localhost", run_hex=run_hex(RUN), promote=promote)


def test_steps_per_lane() -> None:
    """Quick: the quick steps; cold: teardown before any promotion step, finish last."""
    assert steps_for(_ctx("quick")) == QUICK_STEPS
    cold = steps_for(_ctx("cold"))
    assert cold[: len(COLD_STEPS)] == COLD_STEPS and cold[-1] == "finish_cold"
    promoting = steps_for(_ctx("cold", promote=True))
    assert promoting.index("teardown") < promoting.index(PROMOTE_STEPS[0])
    assert not set(PROMOTE_STEPS) & set(cold)


def test_run_ctx_round_trips() -> None:
    """A run's plan survives the trip through a task argument (JSON-able dict)."""
    ctx = RunCtx(run_id=RUN, lane="cold", recipe="keyed", ref="abc1234", domain="d.ci.localhost",
                 run_hex="5d6040", deps=("keycloak",), promote=False)
    assert RunCtx.from_dict(ctx.to_dict()) == ctx
    assert ctx.realm == "keyed-5d6040"
    assert _ctx("cold").realm is None


def _app(kind: str, run: str | None, deployed: bool = True, recipe: str = "r",
         base: str = "ci.localhost") -> AppInfo:
    from ccci_tasks import naming

    domain = (naming.cold_domain(recipe, run, base) if kind == "cold" and run
              else naming.warm_domain(recipe, base))
    return AppInfo(domain=domain, stack="s", recipe=recipe, kind=kind, run=run,
                   deployed=deployed)  # type: ignore[arg-type]


def test_janitor_reaps_only_what_no_live_run_holds() -> None:
    """Cold apps of dead runs are removed; warm canonicals held by a run, or merely
    data-warm (undeployed), are left alone; an unheld deployed canonical is put back."""
    lease = Lease(run_id=RUN, expires_at=1e12,
                  spec=RunSpec(run_id=RUN, lane="quick", recipe="held", canonical="held"))
    apps = [
        _app("cold", run_hex(RUN)),           # its run holds a slot: keep
        _app("cold", run_hex(OTHER)),         # dead run: remove
        _app("cold", run_hex(OTHER), deployed=False),  # volumes only: remove too
        _app("warm", None, recipe="held"),    # a quick run holds it: keep
        _app("warm", None, recipe="idle", deployed=False),  # data-warm: keep
        _app("warm", None, recipe="stray"),   # deployed, nobody holds it: put back
        _app("infra", None, recipe="keycloak"),  # live-warm infra: never touched
        _app("cold", run_hex(OTHER), base="other.localhost"),  # another system's: never
    ]
    actions = janitor.plan(apps, [lease], "ci.localhost")
    assert [(a.kind, a.recipe) for a in actions] == [
        ("remove", "r"), ("remove", "r"), ("put_back", "stray")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("!testme", "cold"), ("  !testme\n", "cold"), ("!testme --quick", "quick"),
     ("!testme  --quick", "quick"), ("!testmexyz", None), ("!testme foo", None),
     ("please !testme", None), ("!TESTME", None), ("", None)],
)
def test_parse_comment(text: str, expected: str | None) -> None:
    """Only a comment that is exactly a trigger fires, and it maps to its lane."""
    assert parse_comment(text) == expected


def test_leftovers_keep_a_reaped_run_in_its_slot() -> None:
    """A reaped run's slot is freed only when neither its cold app nor its deployed
    canonical is left; data-warm (undeployed) canonicals do not count."""
    spec = RunSpec(run_id=OTHER, lane="quick", recipe="held", canonical="held")
    cold = _app("cold", run_hex(OTHER))
    warm_up = _app("warm", None, recipe="held")
    warm_down = _app("warm", None, recipe="held", deployed=False)
    assert janitor.leftovers(OTHER, spec, [cold, warm_up]) == [cold.domain, warm_up.domain]
    assert janitor.leftovers(OTHER, spec, [warm_down]) == []
    assert janitor.leftovers(OTHER, None, [warm_up]) == []  # spec forgotten: cold app only
    assert janitor.leftovers(RUN, spec, [cold]) == []
