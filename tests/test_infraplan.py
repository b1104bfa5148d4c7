"""plan_reconcile: one reconcile of a live-warm app decided from facts (a table), and the
same decisions read from the example keycloak/traefik repositories with tags cut back."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recipe_tags import keep_tags_upto, session_copy, version_tags

from ccci_tasks.errors import AppNotFound, InvalidInput
from ccci_tasks.infraplan import InfraPlan, plan_reconcile
from ccci_tasks.naming import Domain, Recipe
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.state.infra import InfraState, InfraStatus
from ccci_tasks.state.meta import load_meta
from ccci_tasks.versions import DEFAULT_MIGRATION_PATTERNS

REPO = Path(__file__).resolve().parent.parent

# Real-looking tag sets (recipe semver + upstream).
KC = ["10.1.0+26.0.5", "10.1.1+26.0.6", "10.2.0+26.1.0", "10.3.0+27.0.0", "11.0.0+27.0.1"]
NGINX = ["1.7.0+1.27.1", "1.7.1+1.27.2", "1.8.0+2.0.0"]  # upstream leading 1 → 2: major
FPM = ["5.0.3+27.0.1-fpm", "5.0.4+27.0.2-fpm", "5.1.0+28.0.0-fpm"]
TRAEFIK = ["3.0.0+v3.1.0", "3.0.1+v3.1.1", "3.1.0+v3.2.0"]

KEYCLOAK_APP = Recipe("keycloak")
TRAEFIK_APP = Recipe("traefik")

MIGRATION = "ATTENTION: manual migration required, export your realms first."


def _recorded(app: Recipe, current: str, last_good: str | None, status: InfraStatus = "ok"
              ) -> InfraState:
    return InfraState(app=app, domain=Domain(f"warm-{app}.ci.localhost"), current=current,
                      last_good=last_good, status=status)


def _plan(deployed: str | None, recorded: tuple[str, str | None] | None, tags: list[str],
          notes: dict[str, str | None] | None = None, *, stateful: bool = True,
          app: Recipe = KEYCLOAK_APP) -> InfraPlan:
    state = None if recorded is None else _recorded(app, *recorded)
    return plan_reconcile(app, deployed, state, tags, notes or {}, stateful=stateful,
                          patterns=DEFAULT_MIGRATION_PATTERNS)


# (case, deployed, recorded (current, last_good), tags, notes, stateful,
#  outcome, target, bump, flagged_in, snapshot_first, rollback_to)
TABLE: list[tuple[Any, ...]] = [
    ("first deployment", None, None, KC, {}, True,
     "deploy", "11.0.0+27.0.1", None, (), False, None),
    ("first deployment failed before", None, ("10.1.0+26.0.5", None), KC, {}, True,
     "deploy", "11.0.0+27.0.1", None, (), False, None),
    ("nothing runs: bring back last-good", None, ("10.1.0+26.0.5", "10.1.0+26.0.5"), KC, {},
     True, "deploy", "10.1.0+26.0.5", None, (), False, None),
    ("nothing runs, last-good is newest", None, ("11.0.0+27.0.1", "11.0.0+27.0.1"), KC, {},
     True, "deploy", "11.0.0+27.0.1", None, (), False, None),
    ("nothing runs, last-good tag gone", None, ("9.0.0+25.0.0", "9.0.0+25.0.0"), KC, {}, True,
     "held", "11.0.0+27.0.1", None, (), False, None),
    ("up to date", "11.0.0+27.0.1", ("11.0.0+27.0.1", "11.0.0+27.0.1"), KC, {}, True,
     "up-to-date", "11.0.0+27.0.1", None, (), False, None),
    ("newest runs, no record", "3.1.0+v3.2.0", None, TRAEFIK, {}, False,
     "verify", "3.1.0+v3.2.0", None, (), False, None),
    ("newest runs, never recorded healthy", "10.1.1+26.0.6", ("10.1.1+26.0.6", "10.1.0+26.0.5"),
     KC[:2], {}, True, "verify", "10.1.1+26.0.6", None, (), False, "10.1.0+26.0.5"),
    ("patch, stateful: snapshot first", "10.1.0+26.0.5", ("10.1.0+26.0.5", "10.1.0+26.0.5"),
     KC[:2], {"10.1.1+26.0.6": "Bug fixes. No action needed."}, True,
     "upgrade", "10.1.1+26.0.6", "patch", (), True, "10.1.0+26.0.5"),
    ("minor, stateless: no snapshot", "3.0.1+v3.1.1", ("3.0.1+v3.1.1", "3.0.1+v3.1.1"), TRAEFIK,
     {}, False, "upgrade", "3.1.0+v3.2.0", "minor", (), False, "3.0.1+v3.1.1"),
    ("patch, -fpm upstream", "5.0.3+27.0.1-fpm", None, FPM[:2], {}, True,
     "upgrade", "5.0.4+27.0.2-fpm", "patch", (), True, "5.0.3+27.0.1-fpm"),
    ("patch over two tags", "1.7.0+1.27.1", None, NGINX[:2], {}, False,
     "upgrade", "1.7.1+1.27.2", "patch", (), False, "1.7.0+1.27.1"),
    ("recipe major", "10.3.0+27.0.0", ("10.3.0+27.0.0", "10.3.0+27.0.0"), KC, {}, True,
     "held", "11.0.0+27.0.1", "major", (), False, None),
    ("upstream major (26 → 27)", "10.2.0+26.1.0", None, KC[:4], {}, True,
     "held", "10.3.0+27.0.0", "major", (), False, None),
    ("upstream major (1.27 → 2.0)", "1.7.1+1.27.2", None, NGINX, {}, False,
     "held", "1.8.0+2.0.0", "major", (), False, None),
    ("upstream major -fpm", "5.0.4+27.0.2-fpm", None, FPM, {}, False,
     "held", "5.1.0+28.0.0-fpm", "major", (), False, None),
    ("minor flagged by its notes", "10.1.1+26.0.6", None, KC[:3],
     {"10.2.0+26.1.0": f"Upstream 26.1.0.\n\n{MIGRATION}\n"}, True,
     "held", "10.2.0+26.1.0", "minor", ("10.2.0+26.1.0",), False, None),
    ("patch flagged (BREAKING)", "3.0.0+v3.1.0", None, TRAEFIK[:2],
     {"3.0.1+v3.1.1": "BREAKING: the dashboard moved"}, False,
     "held", "3.0.1+v3.1.1", "patch", ("3.0.1+v3.1.1",), False, None),
    ("flag on a version skipped over", "10.1.0+26.0.5", None, KC[:3],
     {"10.1.1+26.0.6": MIGRATION, "10.2.0+26.1.0": "Clean."}, True,
     "held", "10.2.0+26.1.0", "minor", ("10.1.1+26.0.6",), False, None),
    ("flags of the running and older versions do not hold", "10.1.1+26.0.6", None, KC[:3],
     {"10.1.0+26.0.5": MIGRATION, "10.1.1+26.0.6": MIGRATION}, True,
     "upgrade", "10.2.0+26.1.0", "minor", (), True, "10.1.1+26.0.6"),
    ("major and flagged", "10.1.1+26.0.6", None, KC,
     {"10.2.0+26.1.0": MIGRATION}, True,
     "held", "11.0.0+27.0.1", "major", ("10.2.0+26.1.0",), False, None),
    ("running label is no version", "unknown", ("10.1.0+26.0.5", "10.1.0+26.0.5"), KC, {},
     True, "held", "11.0.0+27.0.1", None, (), False, None),
    ("running newer than every tag", "12.0.0+28.0.0", None, KC, {}, True,
     "held", "11.0.0+27.0.1", "downgrade", (), False, None),
    ("running is no tag any more", "10.1.2+26.0.7", None, KC[:3], {}, True,
     "held", "10.2.0+26.1.0", "minor", (), False, None),
    ("stray tags ignored", "10.1.0+26.0.5", None, ["latest", "v2", *KC[:2], "release-1"], {},
     True, "upgrade", "10.1.1+26.0.6", "patch", (), True, "10.1.0+26.0.5"),
]


@pytest.mark.parametrize(
    ("deployed", "recorded", "tags", "notes", "stateful", "outcome", "target", "bump",
     "flagged_in", "snapshot_first", "rollback_to"),
    [row[1:] for row in TABLE], ids=[row[0] for row in TABLE],
)
def test_plan_table(deployed: str | None, recorded: tuple[str, str | None] | None,
                    tags: list[str], notes: dict[str, str | None], stateful: bool, outcome: str,
                    target: str, bump: str | None, flagged_in: tuple[str, ...],
                    snapshot_first: bool, rollback_to: str | None) -> None:
    """Each set of facts gives the documented outcome, target, bump, flags and fallbacks."""
    app = TRAEFIK_APP if "+v" in (tags[-1] if tags else "") else KEYCLOAK_APP
    plan = _plan(deployed, recorded, tags, notes, stateful=stateful, app=app)
    got = (plan.outcome, plan.target, plan.bump, plan.flagged_in, plan.snapshot_first,
           plan.rollback_to)
    assert got == (outcome, target, bump, flagged_in, snapshot_first, rollback_to), plan.why
    assert plan.current == deployed
    assert plan.why
    assert plan.touches_app is (outcome in ("deploy", "verify", "upgrade"))
    if flagged_in:
        assert MIGRATION in plan.flagged or "BREAKING: the dashboard moved" in plan.flagged
    else:
        assert plan.flagged == ()


def test_held_plan_carries_what_the_alert_needs() -> None:
    """A held upgrade names current, target and bump, and carries the flagged lines and notes."""
    notes: dict[str, str | None] = {
        "10.2.0+26.1.0": f"Upstream 26.1.0.\n\n  {MIGRATION}  \nOther line.\n"}
    plan = _plan("10.1.1+26.0.6", ("10.1.1+26.0.6", "10.1.1+26.0.6"), KC[:3], notes)
    assert plan.outcome == "held" and plan.bump == "minor"
    assert plan.flagged == (MIGRATION,)
    assert plan.notes == notes["10.2.0+26.1.0"]
    assert "10.2.0+26.1.0" in plan.why and "staying on 10.1.1+26.0.6" in plan.why
    assert (plan.current, plan.target) == ("10.1.1+26.0.6", "10.2.0+26.1.0")


def test_record_that_differs_is_warned_and_running_is_the_fallback() -> None:
    """A recorded last-good other than what runs is a warning; rollback goes to what runs."""
    plan = _plan("10.1.1+26.0.6", ("10.1.1+26.0.6", "10.1.0+26.0.5"), KC[:3])
    assert plan.outcome == "upgrade" and plan.rollback_to == "10.1.1+26.0.6"
    assert plan.warnings == (
        "the recorded last-good 10.1.0+26.0.5 differs from the running 10.1.1+26.0.6",)
    assert _plan("10.1.1+26.0.6", ("10.1.1+26.0.6", "10.1.1+26.0.6"), KC[:3]).warnings == ()


@pytest.mark.parametrize("deployed", ["11.0.0+27.0.1", "10.1.0+26.0.5", "10.2.0+26.1.0"])
@pytest.mark.parametrize("recorded", [None, ("10.1.0+26.0.5", "10.1.0+26.0.5")])
def test_an_app_running_without_its_config_is_held(
    deployed: str, recorded: tuple[str, str | None] | None
) -> None:
    """An app that runs on the engine while its env file is gone from the state root (the
    state root was wiped) is held, whatever runs and whatever was recorded: it can be neither
    probed nor redeployed as it was, and the reason says what to do. Nothing running and no
    config is a plain first deployment."""
    state = None if recorded is None else _recorded(KEYCLOAK_APP, *recorded)
    plan = plan_reconcile(KEYCLOAK_APP, deployed, state, KC, {}, stateful=True, configured=False)
    assert (plan.outcome, plan.current, plan.target) == ("held", deployed, KC[-1])
    assert not plan.touches_app
    assert f"{deployed} runs on the engine, but the app's config (its env file)" in plan.why
    assert "restore the state root (CCCI_STATE_DIR)" in plan.why
    fresh = plan_reconcile(KEYCLOAK_APP, None, None, KC, {}, stateful=True, configured=False)
    assert (fresh.outcome, fresh.target) == ("deploy", KC[-1])


def test_nothing_runs_with_older_last_good_says_plan_again() -> None:
    """Bringing back an older last-good says the upgrade is gated by the next plan."""
    plan = _plan(None, ("10.1.0+26.0.5", "10.1.0+26.0.5"), KC)
    assert plan.outcome == "deploy" and plan.target == "10.1.0+26.0.5"
    assert "plan again" in plan.why and plan.newest == "11.0.0+27.0.1"


@pytest.mark.parametrize("tags", [[], ["latest", "main", "v1"]])
def test_no_version_tag_is_an_error_naming_the_recipe(tags: list[str]) -> None:
    """A recipe without a version tag cannot be reconciled: AppNotFound names it."""
    with pytest.raises(AppNotFound, match="recipe 'keycloak' has no version tags"):
        _plan("10.1.0+26.0.5", None, tags)


def test_notes_may_be_a_callable_and_patterns_configurable() -> None:
    """Notes come from a callable as well as a dict; the patterns decide what is flagged."""
    asked: list[str] = []

    def notes(version: str) -> str | None:
        asked.append(version)
        return "Please rebuild the search index." if version == "10.1.1+26.0.6" else None

    plan = plan_reconcile(KEYCLOAK_APP, "10.1.0+26.0.5", None, KC[:2], notes, stateful=True)
    assert plan.outcome == "upgrade"
    custom = plan_reconcile(KEYCLOAK_APP, "10.1.0+26.0.5", None, KC[:2], notes, stateful=True,
                            patterns=(r"rebuild the \w+ index",))
    assert custom.outcome == "held" and custom.flagged == ("Please rebuild the search index.",)
    assert set(asked) == {"10.1.1+26.0.6"}


def test_bad_inputs_refused() -> None:
    """A bad app name or a state of another app is refused before deciding anything."""
    with pytest.raises(InvalidInput):
        plan_reconcile(Recipe("../x"), None, None, KC, {}, stateful=False)
    with pytest.raises(InvalidInput, match="traefik"):
        plan_reconcile(KEYCLOAK_APP, None, _recorded(TRAEFIK_APP, "3.0.0+v3.1.0", None), KC, {},
                       stateful=False)


def test_plan_is_frozen_data() -> None:
    """A plan is plain immutable data with a JSON form."""
    plan = _plan("10.1.1+26.0.6", None, KC[:3], {"10.2.0+26.1.0": MIGRATION})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.outcome = "held"  # type: ignore[misc]
    data = plan.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["flagged"] == [MIGRATION] and data["outcome"] == "held"
    assert "major" not in data["why"] and "flag a manual migration" in data["why"]


# --------------------------------------------------------------------------- example repos


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example keycloak and traefik repositories (git only, no images)."""
    dest = tmp_path_factory.mktemp("recipes")
    subprocess.run([sys.executable, str(REPO / "examples" / "make_recipes.py"), "--recipes-dir",
                    str(dest), "--recipe", "keycloak", "--recipe", "traefik", "--no-images"],
                   check=True, capture_output=True, timeout=120)
    return dest


def _repo_plan(built: Path, tmp_path: Path, app: Recipe, upto: str,
               running: str) -> tuple[InfraPlan, list[str]]:
    repo_dir = session_copy(built / app, tmp_path)
    removed = keep_tags_upto(repo_dir, upto)
    repo = RecipeRepo(repo_dir, app)
    meta = load_meta(REPO / "examples" / "tests-recipes", app)
    notes: Callable[[str], str | None] = repo.release_notes
    plan = plan_reconcile(app, running, _recorded(app, running, running), repo.versions(),
                          notes, stateful=meta.stateful)
    return plan, removed


@pytest.mark.parametrize(
    ("app", "upto", "running", "outcome", "target", "bump", "snapshot_first"),
    [
        ("keycloak", "1.0.1+26.0.1", "1.0.0+26.0.0", "upgrade", "1.0.1+26.0.1", "patch", True),
        ("keycloak", "1.0.2+26.0.2", "1.0.1+26.0.1", "upgrade", "1.0.2+26.0.2", "patch", True),
        ("keycloak", "1.0.3+26.0.3", "1.0.1+26.0.1", "upgrade", "1.0.3+26.0.3", "patch", True),
        ("keycloak", "1.1.0+26.1.0", "1.0.1+26.0.1", "held", "1.1.0+26.1.0", "minor", False),
        ("keycloak", "2.0.0+27.0.0", "1.0.1+26.0.1", "held", "2.0.0+27.0.0", "major", False),
        ("keycloak", "1.0.0+26.0.0", "1.0.0+26.0.0", "up-to-date", "1.0.0+26.0.0", None,
         False),
        ("traefik", "3.0.1+v3.1.1", "3.0.0+v3.1.0", "upgrade", "3.0.1+v3.1.1", "patch", False),
        ("traefik", "3.0.2+v3.1.2", "3.0.1+v3.1.1", "upgrade", "3.0.2+v3.1.2", "patch", False),
    ],
)
def test_example_repos_give_each_scenario(
    built: Path, tmp_path: Path, app: str, upto: str, running: str, outcome: str, target: str,
    bump: str | None, snapshot_first: bool,
) -> None:
    """Cutting the example repos' tags back gives each reconcile scenario the tests need."""
    plan, removed = _repo_plan(built, tmp_path, Recipe(app), upto, running)
    assert (plan.outcome, plan.target, plan.bump, plan.snapshot_first) == (
        outcome, target, bump, snapshot_first), plan.why
    assert version_tags(tmp_path / app)[-1] == upto
    assert upto not in removed and all(tag not in version_tags(tmp_path / app) for tag in removed)
    if (app, upto) == ("keycloak", "1.1.0+26.1.0"):
        assert plan.flagged_in == ("1.1.0+26.1.0",)
        assert plan.flagged[0].startswith("ATTENTION: manual migration required")


def test_keep_tags_upto_moves_main_back(built: Path, tmp_path: Path) -> None:
    """After keep_tags_upto the copy's main is the kept version's commit; the source is intact."""
    before = version_tags(built / "keycloak")
    repo_dir = session_copy(built / "keycloak", tmp_path)
    assert keep_tags_upto(repo_dir, "1.0.1+26.0.1") == before[2:]
    repo = RecipeRepo(repo_dir, KEYCLOAK_APP)
    assert repo.commit("main") == repo.commit("1.0.1+26.0.1")
    assert repo.latest() == "1.0.1+26.0.1"
    assert version_tags(built / "keycloak") == before
    with pytest.raises(AssertionError, match="no tag"):
        keep_tags_upto(repo_dir, "2.0.0+27.0.0")
