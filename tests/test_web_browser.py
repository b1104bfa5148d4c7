"""The run pages in headless Chromium, over run reports written as workers write them: a run
with 1 MB of output loads fast, and a running run's page takes each new step without a
reload. (The same with real workers and a PR: tests/test_pages_e2e.py.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser import chromium, text_of
from conftest import SESSION_DIR, reports_at
from web_support import FakeStep, bridge_process, make_run

from ccci_tasks.naming import RunId
from ccci_tasks.redact import Redactor
from ccci_tasks.state import outputs
from ccci_tasks.state.clock import utc_now
from ccci_tasks.state.outputs import StepOutput

if TYPE_CHECKING:  # selenium is imported where the browser starts
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.slow

BIG_ID, LIVE_ID = RunId(str(uuid.uuid4())), RunId(str(uuid.uuid4()))
LOAD_BUDGET_S = 20.0  # the goal is 2 s; the test allows 10x for a loaded machine


@pytest.fixture(scope="module")
def state(redis_server: str) -> Path:
    root = SESSION_DIR / "web-browser-state"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def site(state: Path, redis_server: str) -> Iterator[str]:
    with bridge_process("web-browser", CCCI_STATE_DIR=str(state)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium(SESSION_DIR / f"chromium-{uuid.uuid4().hex[:6]}") as driver:
        yield driver


def _big_output(chars: int) -> str:
    line = "2026-01-01T00:00:00.000000Z app[1]: GET /index.html 200 1234 bytes in 0.3 ms ..."
    return "\n".join(f"{n:06d} {line}" for n in range(chars // (len(line) + 8)))


def test_a_run_with_1_mb_of_output_loads_fast(site: str, state: Path, browser: WebDriver) -> None:
    """A failed run whose steps kept 1 MB of output in all loads in Chromium well within
    the budget (measured: navigation start to the load event); long outputs are shown by
    their tail with a link to the whole text."""
    steps = [FakeStep(f"step_{n}", output=_big_output(128 * 1024)) for n in range(7)]
    steps.append(FakeStep("overlay_custom", ok=False, output=_big_output(128 * 1024),
                          detail="test_custom.py failed (exit 1)"))
    steps.append(FakeStep("restore", undo=True))
    make_run(state, BIG_ID, steps, verdict="fail", reason="overlay_custom: failed")
    kept = sum(len(p.read_text()) for p in outputs.run_output_dir(state, BIG_ID).iterdir())
    assert kept >= 1_000_000
    browser.get(f"{site}/runs/{BIG_ID}")
    timing = browser.execute_script(
        "const t = performance.getEntriesByType('navigation')[0];"
        "return [t.responseEnd - t.startTime, t.loadEventEnd - t.startTime, "
        "document.documentElement.outerHTML.length];")
    response_ms, load_ms, html_chars = timing
    print(f"\n1 MB run page: {kept} chars of output, {html_chars} chars of HTML, "
          f"response {response_ms:.0f} ms, load {load_ms:.0f} ms")
    assert load_ms / 1000 < LOAD_BUDGET_S
    assert "the whole output" in browser.page_source
    assert browser.find_element("id", "failing-tail").is_displayed()


def test_running_page_takes_the_next_step_without_reload(site: str, state: Path,
                                                         browser: WebDriver) -> None:
    """The page of a running run shows a step that ends after it was opened, and then the
    verdict, with no reload (a marker set in the page survives)."""
    make_run(state, LIVE_ID, [FakeStep("admit"), FakeStep("deploy_canonical")],
             verdict=None, reason=None, current="health_check")
    browser.get(f"{site}/runs/{LIVE_ID}")
    browser.execute_script("window.__notReloaded = true;")
    assert "health_check" in text_of(browser, "timeline")
    at = utc_now()
    out = StepOutput()
    out.section("result", "GET / answered 200")
    outputs.keep(state, LIVE_ID, "health_check", "task-current", False, out, Redactor())
    reports_at(state).record_step(LIVE_ID, "health_check", "task-current", at, 0.4, True,
                                  "GET / answered 200")
    ended = time.monotonic()
    seen = _wait(browser, lambda: "GET / answered 200" in browser.page_source, 20)
    print(f"\nthe step showed {seen - ended:.2f} s after it was recorded")
    reports_at(state).finish(LIVE_ID, "pass", "passed: all good")
    _wait(browser, lambda: "Passed" in text_of(browser, "run"), 20)
    assert browser.execute_script("return window.__notReloaded === true;")
    timeline = text_of(browser, "timeline")
    names = [name for name in ("admit", "deploy_canonical", "health_check") if name in timeline]
    assert names == ["admit", "deploy_canonical", "health_check"]
    assert timeline.index("deploy_canonical") < timeline.index("health_check")
    assert "running" not in timeline


def _wait(browser: WebDriver, check: Callable[[], object], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"the page did not change within {timeout_s} s: "
                         f"{text_of(browser, 'run')[:2000]}")
