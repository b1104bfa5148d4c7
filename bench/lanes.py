"""Quick and cold runs on the bench system, timed as an operator sees them.

A run is submitted the way the Drone bridge does (``quick_run.delay``/``cold_run.delay``) and
timed from the submit to the moment its verdict is on disk (polled every 10 ms). Its run report
gives the steps' own durations, the queue-to-first-step latency and what is left: the
orchestration between and around the steps.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from ccci_tasks.naming import RunId

RUN_TIMEOUT_S = 900
POLL_S = 0.01


class StepFigures(TypedDict):
    name: str
    duration_s: float
    ok: bool


@dataclass(frozen=True)
class RunFigures:
    lane: str
    recipe: str
    verdict: str | None
    reason: str | None
    wall_s: float  # submit -> verdict on disk, as an operator waits
    report_s: float  # the report's started_at -> finished_at
    queue_to_first_step_s: float
    steps_s: float  # the sum of the steps' own durations
    steps: list[StepFigures]

    @property
    def orchestration_per_step_s(self) -> float:
        """(first step start -> verdict) minus the steps' durations, per step."""
        around = self.report_s - self.queue_to_first_step_s - self.steps_s
        return around / max(1, len(self.steps))

    def step(self, name: str) -> float:
        return sum(s["duration_s"] for s in self.steps if s["name"] == name)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "orchestration_per_step_s": self.orchestration_per_step_s}


def _git(repo: Path, *args: str, input_text: str | None = None, **env: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], input=input_text, capture_output=True, text=True,
        check=True, timeout=60, env={**os.environ, **env},
    ).stdout.strip()


def pr_commit(repo: Path, base: str, old: str, new: str) -> str:
    """A commit on ``base`` whose compose.yml has ``old`` replaced by ``new`` (no ref moves)."""
    base_sha = _git(repo, "rev-parse", "--verify", f"{base}^{{commit}}")
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        _git(repo, "read-tree", base_sha, GIT_INDEX_FILE=index)
        text = _git(repo, "show", f"{base_sha}:compose.yml") + "\n"
        if text.count(old) != 1:
            raise SystemExit(f"bench: {old!r} is not in {repo}/compose.yml exactly once")
        blob = _git(repo, "hash-object", "-w", "--stdin", input_text=text.replace(old, new))
        _git(repo, "update-index", "--cacheinfo", f"100644,{blob},compose.yml",
             GIT_INDEX_FILE=index)
        tree = _git(repo, "write-tree", GIT_INDEX_FILE=index)
    ident = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@ccci.invalid",
             "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@ccci.invalid"}
    return _git(repo, "commit-tree", tree, "-p", base_sha, "-m", "bench: change the page",
                **ident)


def pr_on_latest(recipes_dir: Path, recipe: str) -> str:
    """A PR commit on the recipe's newest tag that changes the served page."""
    from ccci_tasks.naming import Recipe
    from ccci_tasks.platform.recipes import RecipeRepo

    latest = RecipeRepo(recipes_dir / recipe, Recipe(recipe)).latest()
    assert latest is not None
    return pr_commit(recipes_dir / recipe, latest, f"GREETING:-Hello from {recipe}",
                     "GREETING:-Hello from a PR")


def migration_commit(repo: Path, base: str) -> str:
    """A PR commit on ``base`` that adds a migration, as ``make pr-commit`` makes it."""
    import importlib.util
    import sys

    from bench.system import REPO

    module = sys.modules.get("ccci_pr_commit")
    if module is None:
        spec = importlib.util.spec_from_file_location("ccci_pr_commit",
                                                      REPO / "scripts" / "pr_commit.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["ccci_pr_commit"] = module
        spec.loader.exec_module(module)
    sha, _, _ = module.commit_pr(repo, base,
                                 lambda tree, number: module.change(tree, number, None, False))
    return str(sha)


def _wait_released(run_id: RunId) -> None:
    """The verdict is written just before the run gives its slot back: wait for that too, so
    the next run (or a worker restart) never meets a slot still held."""
    from ccci_tasks.admission import Slots
    from ccci_tasks.config import get_settings

    slots = Slots.from_settings(get_settings())
    deadline = time.monotonic() + 30
    while slots.holds(run_id) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def run(lane: str, recipe: str, ref: str | None) -> RunFigures:
    """Submit one run and wait for its verdict."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.naming import RunId
    from ccci_tasks.state import reports
    from ccci_tasks.tasks import cold_run, quick_run

    store = reports.at(get_settings())
    started = time.monotonic()
    task = quick_run if lane == "quick" else cold_run
    run_id = RunId(task.delay(recipe, ref).id)
    deadline = started + RUN_TIMEOUT_S
    while True:
        report = store.load(run_id)
        if report is not None and report.finished:
            wall = time.monotonic() - started
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {lane} run of {recipe} had no verdict after "
                             f"{RUN_TIMEOUT_S} s")
        time.sleep(POLL_S)
    _wait_released(run_id)
    assert report.finished_at is not None
    steps = [StepFigures(name=s.name, duration_s=round(s.duration_s, 4), ok=s.ok)
             for s in report.steps]
    first = report.steps[0].started_at if report.steps else report.finished_at
    return RunFigures(
        lane=report.lane, recipe=recipe, verdict=report.verdict, reason=report.reason,
        wall_s=wall,
        report_s=(report.finished_at - report.started_at).total_seconds(),
        queue_to_first_step_s=(first - report.started_at).total_seconds(),
        steps_s=sum(s.duration_s for s in report.steps),
        steps=steps,
    )
