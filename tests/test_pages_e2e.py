"""The evidence where people look, end to end: a PR on the Gitea stand-in, the bridge, real
workers, Redis and swarm. A red `!testme --quick` leaves its statuses linked to the run's
page and exactly one comment (also when the forge was down as the run ended); the page and
its JSON carry the failing overlay's assertion and the stack's logs, with every secret
replaced by ***; the metrics count it; in headless Chromium the page of a running run takes
its next steps without a reload, and a failed run's page is photographed.

The module seeds the custom-html canonical once; the overlay test_custom.py of the session's
tests directory is replaced while a test runs (a gate file holds it; it prints the forge
token and the webhook secret, half on stdout and half in an assertion, and fails).
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from browser import chromium, text_of
from conftest import (
    BRIDGE_PORT,
    FORGE_BOT,
    FORGE_ENV,
    FORGE_OWNER,
    SESSION_DIR,
    TEST_ENV,
    Workers,
    flush_redis,
    remove_ccci_objects,
    reports_at,
)
from fake_forge import FakeForge
from faults import wait_until
from prometheus_client.parser import text_string_to_metric_families
from recipe_commits import make_commit
from web_support import bridge_process, saved_report

from ccci_tasks.naming import RunId
from ccci_tasks.state.reports import RunReport

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = "custom-html"
MAINTAINER = "maintainer"
PR_RED, PR_LIVE = 21, 22
TOKEN, HOOK_SECRET = FORGE_ENV["CCCI_FORGE_TOKEN"], FORGE_ENV["CCCI_WEBHOOK_SECRET"]
ACCEPTED = re.compile(r"accepted: (quick|cold) run ([0-9a-f-]{36}) ")
BASE = f"http://127.0.0.1:{BRIDGE_PORT}"
SCREENSHOT = SESSION_DIR / "failed-run-page.png"
OVERLAY = '''"""A red overlay that prints secrets (what a careless app or test might do)."""

import os
import sys
import time


def test_held_while_the_gate_exists():
    deadline = time.monotonic() + 120
    while os.path.exists({gate!r}) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_pr_keeps_its_greeting():
    token = {token!r}
    print("connecting with forge token " + token[:6], end="")
    print(token[6:] + " and hook secret " + {secret!r})
    sys.stderr.write("stderr also says " + {secret!r} + "\\n")
    greeting = "Hello from PR"
    assert greeting == "Hello from custom-html", "token " + token
'''


def _state() -> Path:
    return Path(TEST_ENV["CCCI_STATE_DIR"])


def _wait_run(run_id: str) -> Any:
    from ccci_tasks.runs import wait

    return wait(run_id, 300)


@pytest.fixture(scope="module")
def seeded(workers: Workers, swarm: DockerClient, example_recipes: Path, redis_server: str
           ) -> Iterator[RunReport]:
    from ccci_tasks.config import get_settings
    from ccci_tasks.tasks import cold_run

    get_settings.cache_clear()
    flush_redis(redis_server)
    remove_ccci_objects(swarm)
    shutil.rmtree(_state(), ignore_errors=True)
    _state().mkdir()
    report = _wait_run(cold_run.delay(RECIPE).id)
    assert report.verdict == "pass", report.reason
    yield report
    remove_ccci_objects(swarm)


@pytest.fixture(scope="module")
def bridge(redis_server: str) -> Iterator[str]:
    with bridge_process("pages-e2e", CCCI_BRIDGE_LISTEN=f"127.0.0.1:{BRIDGE_PORT}") as url:
        yield url


@pytest.fixture(scope="module")
def forge(fake_forge: FakeForge, example_recipes: Path) -> FakeForge:
    fake_forge.start()
    fake_forge.add_repo(FORGE_OWNER, RECIPE, example_recipes / RECIPE)
    fake_forge.add_repo("contributor", RECIPE, example_recipes / RECIPE)
    for number in (PR_RED, PR_LIVE):
        make_commit(fake_forge.bare_path("contributor", RECIPE), "2.0.0+2.0",
                    {"compose.yml": ("Hello from custom-html", f"Hello from PR {number}")},
                    f"pr-{number}")
        fake_forge.add_pull(FORGE_OWNER, RECIPE, number, f"pr-{number}",
                            head_repo=("contributor", RECIPE))
    fake_forge.set_permission(FORGE_OWNER, RECIPE, MAINTAINER, "write")
    return fake_forge


@pytest.fixture
def gated_overlay() -> Iterator[Path]:
    """test_custom.py replaced by the red, secret-printing overlay, held while the gate
    file exists; the original comes back afterwards."""
    custom = Path(TEST_ENV["CCCI_TESTS_DIR"]) / RECIPE / "test_custom.py"
    original = custom.read_text()
    gate = SESSION_DIR / f"gate-{uuid.uuid4().hex[:6]}"
    gate.touch()
    custom.write_text(OVERLAY.format(gate=str(gate), token=TOKEN, secret=HOOK_SECRET))
    try:
        yield gate
    finally:
        custom.write_text(original)
        gate.unlink(missing_ok=True)


def _trigger(forge: FakeForge, number: int) -> RunId:
    delivery = forge.comment(FORGE_OWNER, RECIPE, number, MAINTAINER, "!testme --quick")
    match = ACCEPTED.match(delivery.text)
    assert delivery.status == 202 and match, (delivery.status, delivery.text)
    return RunId(match.group(2))


def _current(run_id: RunId) -> str | None:
    report = reports_at(_state()).load(run_id)
    return report.current.name if report is not None and report.current else None


def _verdict_comments(forge: FakeForge, number: int) -> list[str]:
    return [c["body"] for c in forge.comments(FORGE_OWNER, RECIPE, number)
            if c["user"]["login"] == FORGE_BOT and "Run page:" in c["body"]]


def _no_secret(text: str) -> None:
    assert TOKEN not in text and HOOK_SECRET not in text
    assert TOKEN[6:] not in text  # not even the half printed on its own


def test_red_pr_run_links_comments_once_and_hides_secrets(
        seeded: RunReport, forge: FakeForge, bridge: str, gated_overlay: Path) -> None:
    """A red quick run from PR 21: every status links to its page; with the forge down as
    the run ends, the PR still gets exactly one comment once the forge is back (verdict,
    failing step, the end of its output in <details>, the link); the page and the JSON
    show the assertion and the stack's logs with secrets as ***; the metrics count it."""
    from ccci_tasks.config import get_settings
    from ccci_tasks.forge import hooks
    from ccci_tasks.tasks.forge import sweep

    run_id = _trigger(forge, PR_RED)
    sha = forge.head_sha("contributor", RECIPE, f"pr-{PR_RED}")
    wait_until(lambda: _current(run_id) == "overlay_custom", 180,
               "the run to hold in its custom overlay", poll_s=0.2)
    forge.stop()
    gated_overlay.unlink()
    report = _wait_run(run_id)
    assert report.verdict == "fail", report.reason
    _no_secret(report.model_dump_json())
    time.sleep(3)  # the relay tries, and fails, while the forge is down
    forge.start()
    comment = forge.wait_for(lambda: _verdict_comments(forge, PR_RED), "the verdict comment",
                             150)[0]
    forge.wait_for(lambda: any(s["status"] == "failure"
                               for s in forge.statuses(FORGE_OWNER, RECIPE, sha)),
                   "the failure status", 150)
    # The hook again (a redelivery, the beat safety net): nothing new reaches the PR.
    hooks.run_finished(get_settings(), saved_report(_state(), run_id))
    sweep.delay().get(timeout=60)
    time.sleep(3)
    assert len(_verdict_comments(forge, PR_RED)) == 1
    page_url = f"{BASE}/runs/{run_id}"
    assert "failed" in comment and "`overlay_custom`" in comment
    assert "<details>" in comment and "</details>" in comment and page_url in comment
    assert "AssertionError" in comment and "token ***" in comment
    _no_secret(comment)
    statuses = forge.statuses(FORGE_OWNER, RECIPE, sha)
    assert [s["status"] for s in statuses] == ["pending", "failure"]
    assert {s["target_url"] for s in statuses} == {page_url}

    page = httpx.get(page_url, timeout=20).text
    assert "Failing step" in page and "AssertionError" in page
    assert "last 100 log lines" in page and "***" in page
    assert '<span class="undo">undo</span>' in page
    _no_secret(page)
    doc = httpx.get(f"{page_url}.json", timeout=20).json()
    (failing,) = [s for s in doc["steps"] if not s["ok"] and not s["undo"]]
    assert failing["name"] == "overlay_custom"
    assert "assert 'Hello from PR' == 'Hello from custom-html'" in failing["output"] \
        or "AssertionError" in failing["output"]
    assert "connecting with forge token ***" in failing["output"]
    _no_secret(httpx.get(f"{page_url}.json", timeout=20).text)
    for path in _state().joinpath("runs").rglob("*"):
        if path.is_file():
            _no_secret(path.read_text(errors="replace"))
    metrics = {s.name: s for f in text_string_to_metric_families(
        httpx.get(f"{BASE}/metrics", timeout=20).text) for s in f.samples
        if s.labels.get("lane") == "quick" and s.labels.get("verdict") == "fail"}
    assert metrics["ccci_runs_total"].value >= 1

    with chromium(SESSION_DIR / "chromium-failed", width=1000, height=1700) as browser:
        browser.get(page_url)
        assert "overlay_custom" in text_of(browser, "failing-tail") \
            or browser.find_element("id", "failing-tail").is_displayed()
        browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"\nscreenshot of the failed run's page: {SCREENSHOT}")


def test_running_page_shows_next_steps_live(seeded: RunReport, forge: FakeForge, bridge: str,
                                            gated_overlay: Path) -> None:
    """The page of a quick run held in its custom overlay, open in headless Chromium, shows
    the overlay's end, the undo (restore) and the verdict as they happen, without reload."""
    run_id = _trigger(forge, PR_LIVE)
    wait_until(lambda: _current(run_id) == "overlay_custom", 180,
               "the run to hold in its custom overlay", poll_s=0.2)
    with chromium(SESSION_DIR / "chromium-live") as browser:
        browser.get(f"{BASE}/runs/{run_id}")
        browser.execute_script("window.__notReloaded = true;")
        timeline = text_of(browser, "timeline")
        assert "overlay_custom" in timeline and "running" in timeline
        assert "restore" not in timeline
        gated_overlay.unlink()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = text_of(browser, "run")
            if "Failed" in text and "restore" in text:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the page never showed the end: {text[:1500]}")
        assert browser.execute_script("return window.__notReloaded === true;")
        rows = text_of(browser, "timeline")
        assert "overlay_custom" in rows and "FAIL" in rows and "undo" in rows
    assert _wait_run(run_id).verdict == "fail"
