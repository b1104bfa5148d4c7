"""A recipe's overlay tests run with their own pytest configuration, whatever surrounds them.

The tests directory (CCCI_TESTS_DIR) may sit inside any project, e.g. this checkout, where
`make up` keeps the example overlays under examples/. Its pyproject.toml (strict options,
warnings as errors, a plugin's option) and a conftest.py above the overlays must not reach
an overlay run; a pytest.ini beside the overlays is the recipe's own and is used.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ccci_tasks.config import Settings
from ccci_tasks.errors import RunFailed
from ccci_tasks.lanes.common import run_overlay
from ccci_tasks.lanes.model import RunCtx, StepEnv
from ccci_tasks.naming import Domain, Recipe, Ref, RunId

HOSTILE_PYPROJECT = """\
[tool.pytest.ini_options]
addopts = "--strict-markers --strict-config -ra"
timeout = 600
filterwarnings = ["error"]
"""
HOSTILE_CONFTEST = 'raise RuntimeError("a conftest.py above the overlays was loaded")\n'
OVERLAY = """\
import os


def test_sees_the_app():
    assert os.environ["CCCI_BASE_URL"] == "https://demo-1a2b3c.ci.example"
    assert os.environ["CCCI_DOMAIN"] == "demo-1a2b3c.ci.example"
    assert os.environ["CCCI_OP"] == "custom"
"""


def _env(tests_dir: Path) -> StepEnv:
    platform = SimpleNamespace(base_url=lambda domain: f"https://{domain}")
    return StepEnv(settings=Settings(tests_dir=tests_dir), platform=cast(Any, platform),
                   fence=cast(Any, None), meta=cast(Any, None), repo=None)


def _ctx() -> RunCtx:
    return RunCtx(run_id=RunId("1a2b3c4d-0000-4000-8000-000000000000"), lane="cold",
                  recipe=Recipe("demo"), ref=Ref("1.0.0+1.0"),
                  domain=Domain("demo-1a2b3c.ci.example"), token=1)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose pytest settings would fail any overlay run, with overlays inside."""
    (tmp_path / "pyproject.toml").write_text(HOSTILE_PYPROJECT)
    (tmp_path / "conftest.py").write_text(HOSTILE_CONFTEST)
    overlays = tmp_path / "tests-recipes" / "demo"
    overlays.mkdir(parents=True)
    (tmp_path / "tests-recipes" / "conftest.py").write_text(HOSTILE_CONFTEST)
    (overlays / "test_custom.py").write_text(OVERLAY)
    return tmp_path


def test_the_surrounding_project_does_not_reach_the_overlay(project: Path) -> None:
    """Inside a project with strict, plugin-dependent pytest settings and conftest.py files
    that raise, the overlay runs with none of them and passes."""
    detail = run_overlay(_env(project / "tests-recipes"), _ctx(), "custom")
    assert detail.startswith("test_custom.py: 1 passed"), detail


def test_the_recipes_own_pytest_ini_is_used(project: Path) -> None:
    """A pytest.ini beside the overlays applies (here: it deselects a failing test)."""
    overlays = project / "tests-recipes" / "demo"
    (overlays / "test_custom.py").write_text(OVERLAY + "\n\ndef test_left_out():\n    assert 0\n")
    with pytest.raises(RunFailed, match="test_left_out"):
        run_overlay(_env(project / "tests-recipes"), _ctx(), "custom")
    (overlays / "pytest.ini").write_text("[pytest]\naddopts = -k 'not left_out'\n")
    detail = run_overlay(_env(project / "tests-recipes"), _ctx(), "custom")
    assert detail.startswith("test_custom.py: 1 passed, 1 deselected"), detail
