"""A lane is its module: a toy lane declared here and registered with one line gets its
entry task, its ``ccci`` command, its pull-request trigger and status context from its
declaration alone; nothing outside a lane's module branches on a lane's name."""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import reports_at

from ccci_tasks.admission import Resource, RunSpec
from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput
from ccci_tasks.lanes import cold, registry
from ccci_tasks.lanes.model import (
    Argument,
    Command,
    Entry,
    Failure,
    Lane,
    PullRequests,
    RunCtx,
    RunSkipped,
    StepEnv,
    Submission,
)
from ccci_tasks.naming import Recipe
from ccci_tasks.platform.base import Platform

# --------------------------------------------------------------------------- the toy lane


def _prepare(settings: Settings, run_id: str, request: Mapping[str, Any]) -> Submission:
    if request.get("recipe") == "nothing-to-do":
        raise RunSkipped("the toy has nothing to do")
    recipe = Recipe(request.get("recipe"))
    return Submission("toy", recipe, request.get("ref"), (Resource.slot(),), None)


def _plan(settings: Settings, spec: RunSpec) -> RunCtx:
    return RunCtx(spec.run_id, "toy", spec.recipe, spec.ref, None, spec.token)


def _play(env: StepEnv, ctx: RunCtx) -> str:
    return "played"


def _recover(settings: Settings, platform: Platform, spec: RunSpec) -> list[str]:
    return []


def _check(settings: Settings, request: Mapping[str, Any]) -> None:
    Recipe(request.get("recipe"))


def _request(recipe: str, ref: str | None = None, loud: bool = False) -> dict[str, Any]:
    """Queue a toy run of ``recipe``; returns at once."""
    return {"recipe": recipe, "ref": ref, "loud": bool(loud)}


TOY = Lane(
    name="toy", queue="runs", prepare=_prepare, plan=_plan, steps=lambda ctx: ("play",),
    undo=lambda ctx, failure: (), functions={"play": _play},
    failure=lambda ctx, step, exc: Failure(step, "error", str(exc)), recover=_recover,
    needs_repo=False,
    entry=Entry("toy_run", "alerts", _request, Command(
        "toy", "Enqueue a toy run of RECIPE.",
        (Argument("recipe"), Argument("ref", option="--ref", help="The ref to play.")),
        timeout_s=60.0, check=_check)),
    pull_requests=PullRequests("!testme --toy", "ccci/toy", falls_back_to=cold.NAME),
)


@pytest.fixture
def toy() -> Iterator[Lane]:
    registry.register(TOY)  # the one line a new lane needs (in ccci_tasks/lanes/__init__.py)
    yield TOY
    registry.unregister(TOY.name)
    # What this process made of it: its entry task and its command.
    from ccci_tasks.celery_app import app
    from ccci_tasks.cli.app import main
    from ccci_tasks.tasks.lanes import ENTRY_TASKS

    if ENTRY_TASKS.pop(TOY.name, None) is not None:
        app.tasks.unregister("ccci.alerts.toy_run")
    main.commands.pop("toy", None)


# --------------------------------------------------------------------------- the checks


def test_the_toy_lane_gets_its_entry_task_from_its_declaration(
    toy: Lane, settings: Settings, redis_url: str
) -> None:
    """The entry task is ccci.<queue>.<task>, with the parameters and help of the lane's
    request function; run, it submits a run of the toy lane (refused or skipped at the
    door: no worker knows the toy)."""
    from ccci_tasks.celery_app import app
    from ccci_tasks.tasks.lanes import entry_of

    task = entry_of(toy)
    assert task.name == "ccci.alerts.toy_run" and app.tasks["ccci.alerts.toy_run"] is task
    assert list(inspect.signature(task.run).parameters) == ["recipe", "ref", "loud"]
    assert task.__doc__ == _request.__doc__
    with pytest.raises(TypeError):
        task.delay()  # the declared signature is checked before anything is published

    refused = task.apply(args=("Not A Recipe",)).get()
    assert refused["lane"] == "toy" and refused["state"] == "refused"
    assert "Not A Recipe" in refused["reason"]
    skipped = task.apply(args=("nothing-to-do",)).get()
    assert skipped["verdict"] == "pass" and skipped["reason"].startswith("skipped: ")
    report = reports_at(settings.state_dir).load(skipped["run_id"])
    assert report is not None and report.lane == "toy" and report.finished


def test_the_toy_lane_gets_its_ccci_command(
    toy: Lane, redis_url: str, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ccci toy RECIPE [--ref REF] [--wait] [--timeout S] [--json]``: bad input exits 2
    before anything is enqueued; a good request is queued through the toy's entry task."""
    from celery.signals import before_task_publish

    from ccci_tasks.cli import run
    from ccci_tasks.cli.app import main
    from ccci_tasks.cli.submit import lane_command

    command = lane_command(toy)
    assert main.get_command(None, "toy") is command  # type: ignore[arg-type]
    assert run(["toy", "--help"]) == 0
    shown = capsys.readouterr().out
    for text in ("ccci toy [OPTIONS] RECIPE", "Enqueue a toy run of RECIPE.", "--ref TEXT",
                 "The ref to play.", "--wait", "--json", "[default: 60.0]"):
        assert text in shown

    # What the CLI publishes, seen as Celery publishes it (an alerts worker another test
    # left running may take the message off the queue at once).
    published: list[tuple[str, dict[str, Any]]] = []

    def seen(sender: str | None = None, routing_key: str | None = None,
             headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is not None and headers.get("task") == "ccci.alerts.toy_run":
            published.append((str(routing_key), headers))

    before_task_publish.connect(seen, weak=False)
    try:
        assert run(["toy", "Bad Name"]) == 2
        assert "Bad Name" in capsys.readouterr().err
        assert published == []

        assert run(["toy", "custom-html", "--ref", "main", "--json"]) == 0
        run_id = json.loads(capsys.readouterr().out)["run_id"]
    finally:
        before_task_publish.disconnect(seen)
    assert [(key, h["id"], h["argsrepr"]) for key, h in published] \
        == [("alerts", run_id, "('custom-html', 'main')")]


def test_the_toy_lane_reports_to_pull_requests_as_it_declares(toy: Lane) -> None:
    """Its trigger comment starts it, its statuses go under its context, the queued reply
    names both its context and that of the lane it may fall back to."""
    from ccci_tasks.bridge import parse_comment
    from ccci_tasks.forge import messages
    from ccci_tasks.forge.trigger import TriggerRequest

    assert parse_comment("  !testme   --toy ") == "toy"
    assert parse_comment("!testme --toys") is None
    assert messages.context("toy") == "ccci/toy"
    body = messages.queued_comment("toy", "custom-html", "a" * 40, "r-1")
    assert "`ccci/toy` (`ccci/cold` if it falls back to a full cold run)" in body
    request = TriggerRequest.new("owner", "custom-html", 3, "toy", "maintainer", "d-1")
    assert request.lane == "toy"
    registry.unregister("toy")
    with pytest.raises(InvalidInput, match="lane 'toy' is invalid"):
        TriggerRequest.from_dict(request.to_dict())
    assert parse_comment("!testme --toy") is None


def test_a_lane_name_or_entry_task_is_registered_once(toy: Lane) -> None:
    from dataclasses import replace

    with pytest.raises(InvalidInput, match="lane 'toy' is registered already"):
        registry.register(replace(toy))
    assert toy.entry is not None
    twin = replace(toy, name="twin")
    with pytest.raises(InvalidInput, match="entry task 'toy_run' is taken by lane 'toy'"):
        registry.register(twin)


# --------------------------------------------------------------------------- no lane names

LANE_MODULES = {"quick.py", "cold.py", "reconcile.py", "sweep.py"}


def _constants(node: ast.AST) -> set[str]:
    return {c.value for c in ast.walk(node)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def _lane_name_branches(path: Path, names: set[str]) -> list[str]:
    """Comparisons of something called ``*lane*`` with a lane name; lane names in the type
    of something called ``*lane*``, in a ``Trigger`` type or a ``*LANES`` table; a trigger
    table keyed by ``!...``; a run submitted (or a spec made) for a lane named in place."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{path.relative_to(path.parents[1])}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if _constants(node) & names and any("lane" in ast.unparse(x).lower()
                                                 for x in sides):
                found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.AnnAssign | ast.arg):
            name = ast.unparse(node.target) if isinstance(node, ast.AnnAssign) else node.arg
            if node.annotation is not None and "lane" in name.lower() \
                    and _constants(node.annotation) & names:
                found.append(f"{where}: {name}: {ast.unparse(node.annotation)}")
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(ast.unparse(t) in ("Trigger", "LaneName") or "LANES" in ast.unparse(t)
                   for t in targets) and _constants(node.value) & names:
                found.append(f"{where}: {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in (
                "submit", "RunSpec", "for_hold"):
            if {a.value for a in node.args if isinstance(a, ast.Constant)} & names:
                found.append(f"{where}: {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Dict):
            keys = {str(k.value) for k in node.keys if isinstance(k, ast.Constant)}
            if _constants(node) & names and any(k.startswith("!") for k in keys):
                found.append(f"{where}: {ast.unparse(node)[:80]}")
    return found


def test_no_branch_on_a_lane_name_outside_its_module() -> None:
    package = Path(__file__).resolve().parent.parent / "ccci_tasks"
    names = {"quick", "cold", "reconcile", "sweep", "janitor"}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "lanes" and path.name in LANE_MODULES:
            continue
        found += _lane_name_branches(path, names)
    assert found == []
