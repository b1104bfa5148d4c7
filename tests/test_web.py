"""Run pages, their JSON and /metrics, served by the real bridge process over a state root of
run reports written the way workers write them: pass, fail (with its undo), error, running.

No Docker: the reports and step outputs are made by ``web_support.make_run``; the broker is
the session's Redis (metrics read the slots and the queue from it).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FORGE_ENV, REPO, SESSION_DIR, TEST_ENV
from prometheus_client.parser import text_string_to_metric_families
from web_support import FakeStep, bridge_process, make_run

from ccci_tasks.naming import Domain, Recipe, RunId
from ccci_tasks.state import canonical
from ccci_tasks.state.clock import iso, utc_now

TOKEN = FORGE_ENV["CCCI_FORGE_TOKEN"]
HOOK_SECRET = FORGE_ENV["CCCI_WEBHOOK_SECRET"]
WEB_USER, WEB_PASSWORD = "viewer", "web-" + uuid.uuid4().hex
PASS_ID, FAIL_ID, ERROR_ID, RUNNING_ID, OTHER_ID = (RunId(str(uuid.uuid4())) for _ in range(5))
ASSERTION = "E       AssertionError: expected 'Hello from PR 7' in the page"


@pytest.fixture(scope="module")
def state(redis_server: str) -> Path:
    """A state root with a pass, a fail, an error and a running run, and a canonical (the
    reports in the session Redis, with this host's copies)."""
    root = SESSION_DIR / "web-state"
    root.mkdir(exist_ok=True)
    now = utc_now()
    make_run(root, PASS_ID, [FakeStep("admit"), FakeStep("upgrade"),
                             FakeStep("overlay_custom", output="1 passed in 0.01s")],
             started=now - timedelta(minutes=30), reason="passed: upgraded in place")
    pytest_out = "\n".join([f"line {n}" for n in range(200)] + [
        "____ test_greeting ____", ASSERTION, f"token was {TOKEN}", "1 failed in 0.2s"])
    make_run(root, FAIL_ID, [
        FakeStep("admit"), FakeStep("upgrade"),
        FakeStep("overlay_custom", ok=False, output=pytest_out,
                 detail=f"test_custom.py failed (exit 1): {ASSERTION}"),
        FakeStep("restore", undo=True, detail="the known-good data is back"),
    ], started=now - timedelta(minutes=20), verdict="fail",
        reason=f"overlay_custom: test_custom.py failed; secret {HOOK_SECRET}")
    make_run(root, ERROR_ID, [FakeStep("admit"), FakeStep("verify", ok=False,
                                                          detail="snapshot is corrupt")],
             lane="cold", recipe="slow-html", ref=None, verdict="error",
             reason="refused: snapshot is corrupt", started=now - timedelta(minutes=10))
    make_run(root, RUNNING_ID, [FakeStep("admit"), FakeStep("deploy_canonical")],
             verdict=None, reason=None, current="health_check", started=now)
    make_run(root, OTHER_ID, [FakeStep("admit")], recipe="stubborn-html",
             started=now - timedelta(hours=2))
    canonical.write_registry(root, canonical.Canonical(
        recipe=Recipe("custom-html"), domain=Domain("warm-custom-html.t.localhost"),
        version="2.0.0+2.0", commit="a" * 40, status="known-good",
        ts=iso(now - timedelta(hours=1))))
    return root


@pytest.fixture(scope="module")
def site(state: Path, redis_server: str) -> Iterator[str]:
    with bridge_process("web", CCCI_STATE_DIR=str(state)) as url:
        yield url


@pytest.fixture(scope="module")
def locked(state: Path, redis_server: str) -> Iterator[str]:
    with bridge_process("web-auth", CCCI_STATE_DIR=str(state), CCCI_WEB_USER=WEB_USER,
                        CCCI_WEB_PASSWORD=WEB_PASSWORD) as url:
        yield url


def get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=20, **kw)


def test_runs_list_newest_first_and_by_recipe(site: str) -> None:
    """/runs lists every run newest first with lane, recipe, verdict and duration;
    ?recipe= keeps that recipe's runs; a malformed recipe is answered 400."""
    page = get(f"{site}/runs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    order = [page.text.index(run_id) for run_id in (RUNNING_ID, ERROR_ID, FAIL_ID, PASS_ID,
                                                     OTHER_ID)]
    assert order == sorted(order)
    for word in ("quick", "cold", "custom-html", "slow-html", "pass", "fail", "error",
                 "running"):
        assert word in page.text
    only = get(f"{site}/runs", params={"recipe": "slow-html"}).text
    assert ERROR_ID in only and PASS_ID not in only and FAIL_ID not in only
    assert get(f"{site}/runs", params={"recipe": "../etc"}).status_code == 400
    assert get(f"{site}/", follow_redirects=True).status_code == 200  # to /runs


def test_failed_run_page_puts_reason_and_failing_step_first(site: str) -> None:
    """A red run's page starts with its verdict, reason and failing step (with the end of
    its output), then the timeline marks the undo, and every step's output follows."""
    page = get(f"{site}/runs/{FAIL_ID}")
    assert page.status_code == 200
    text = page.text
    assert "Failed" in text and "Failing step" in text and "overlay_custom" in text
    assert text.index("Failing step") < text.index("Timeline")
    tail = text[text.index('id="failing-tail"'):text.index("Timeline")]
    assert "AssertionError: expected" in tail and "line 199" in tail and "line 150" not in tail
    timeline = text[text.index("Timeline"):text.index("<h2>Steps")]
    assert '<span class="undo">undo</span>' in timeline and "FAIL" in timeline
    assert "line 0\n" in text  # the whole output is on the page, below
    assert TOKEN not in text and HOOK_SECRET not in text and "***" in text


def test_pass_and_error_pages(site: str) -> None:
    """A green run's page says it passed and why; an error run names its failing step; a
    running run shows its current step and follows it (a script, no reload)."""
    passed = get(f"{site}/runs/{PASS_ID}").text
    assert "Passed" in passed and "upgraded in place" in passed and "Failing step" not in passed
    error = get(f"{site}/runs/{ERROR_ID}").text
    assert "Error" in error and "snapshot is corrupt" in error and ">verify<" in error
    running = get(f"{site}/runs/{RUNNING_ID}").text
    assert "health_check" in running and "<script>" in running


def test_json_is_the_report_with_step_output(site: str, state: Path) -> None:
    """/runs/<id>.json is `ccci runs show --json` plus state, duration and steps[].output,
    redacted; ?output=0 leaves the output out."""
    shown = subprocess.run([sys.executable, "-m", "ccci_tasks.cli", "runs", "show", FAIL_ID,
                            "--json"], cwd=REPO, env={**TEST_ENV, "PATH": "/usr/bin:/bin",
                                                      "CCCI_STATE_DIR": str(state)},
                           capture_output=True, text=True, timeout=60, check=True)
    cli = json.loads(shown.stdout)
    answer = get(f"{site}/runs/{FAIL_ID}.json")
    assert answer.headers["content-type"].startswith("application/json")
    doc = answer.json()
    for key in ("run_id", "lane", "recipe", "ref", "verdict", "started_at", "finished_at"):
        assert doc[key] == cli[key]
    assert doc["reason"] == cli["reason"].replace(HOOK_SECRET, "***")
    assert [s["name"] for s in doc["steps"]] == [s["name"] for s in cli["steps"]]
    assert [s["undo"] for s in doc["steps"]] == [False, False, False, True]
    failing = doc["steps"][2]
    assert ASSERTION in failing["output"] and "token was ***" in failing["output"]
    assert TOKEN not in answer.text and HOOK_SECRET not in answer.text
    assert doc["state"] == "finished" and doc["duration_s"] > 0
    short = get(f"{site}/runs/{FAIL_ID}.json", params={"output": "0"}).json()
    assert "output" not in short["steps"][0]
    whole = get(f"{site}/runs/{FAIL_ID}/steps/2.txt")
    assert whole.text == failing["output"]


@pytest.mark.parametrize("path", [
    "/runs/0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a", "/runs/0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a"
    ".json", "/runs/not-a-run", "/runs/..%2F..%2F..%2Fetc%2Fpasswd", "/runs/%2e%2e",
    "/runs/..%2Fruns%2F.lock.json", "/runs/{fail}/steps/9.txt", "/runs/{fail}/steps/..%2F1.txt",
    "/runs/{FAIL}", "/runs/%00", "/runs/{fail}/../../etc/passwd",
])
def test_unknown_malformed_and_traversal_are_404(site: str, path: str) -> None:
    """Unknown or malformed run ids, traversal attempts and steps that do not exist: 404,
    and never a file from outside the state root."""
    url = site + path.format(fail=FAIL_ID, FAIL=FAIL_ID.upper())
    answer = httpx.get(url, timeout=20)
    assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
    assert "root:" not in answer.text


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_parse_and_count(site: str, redis_url: str) -> None:
    """/metrics is Prometheus text that the reference parser reads: runs by lane and
    verdict, a duration histogram per lane, queue, slots, canonical age, disk."""
    answer = get(f"{site}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = _families(answer.text)
    runs = {(s.labels["lane"], s.labels["verdict"]): s.value
            for s in families["ccci_runs"].samples if s.name == "ccci_runs_total"}
    assert runs == {("quick", "pass"): 2, ("quick", "fail"): 1, ("cold", "error"): 1}
    histogram = families["ccci_run_duration_seconds"]
    assert histogram.type == "histogram"
    counts = {s.labels["lane"]: s.value for s in histogram.samples
              if s.name == "ccci_run_duration_seconds_count"}
    assert counts == {"quick": 3, "cold": 1}
    inf = [s for s in histogram.samples if s.name.endswith("_bucket")
           and s.labels["le"] == "+Inf" and s.labels["lane"] == "quick"]
    assert inf[0].value == 3
    scalar = {name: families[name].samples[0].value for name in (
        "ccci_runs_queued", "ccci_slots_in_use", "ccci_slots_max", "ccci_disk_used_ratio",
        "ccci_broker_up")}
    assert scalar["ccci_slots_max"] == 1 and scalar["ccci_broker_up"] == 1
    assert scalar["ccci_runs_queued"] == 0 and scalar["ccci_slots_in_use"] == 0
    assert 0 < scalar["ccci_disk_used_ratio"] < 1
    (age,) = families["ccci_canonical_age_seconds"].samples
    assert age.labels == {"recipe": "custom-html"} and 3500 < age.value < 7200


def test_metrics_see_the_broker(site: str, redis_url: str) -> None:
    """Queued runs and held slots come from the broker at scrape time."""
    from ccci_tasks.admission import Resource, RunSpec, Slots
    from ccci_tasks.config import Settings

    slots = Slots.from_settings(Settings())
    first, second = RunId(str(uuid.uuid4())), RunId(str(uuid.uuid4()))
    for run_id in (first, second):
        slots.enqueue(RunSpec(run_id=run_id, lane="cold", recipe=Recipe("custom-html"),
                              resources=(Resource.slot(),)))
    slots.admit([])
    families = _families(get(f"{site}/metrics").text)
    assert families["ccci_slots_in_use"].samples[0].value == 1
    assert families["ccci_runs_queued"].samples[0].value == 1


def test_basic_auth_guards_pages_and_metrics_not_the_webhook(locked: str) -> None:
    """With CCCI_WEB_USER/PASSWORD, pages, JSON and metrics answer 401 without (or with
    wrong) credentials and 200 with them; the webhook keeps its signature check only."""
    for path in ("/runs", f"/runs/{FAIL_ID}", f"/runs/{FAIL_ID}.json", "/metrics"):
        bare = get(locked + path)
        assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Basic")
        assert get(locked + path, auth=(WEB_USER, "wrong")).status_code == 401
        assert get(locked + path, auth=("someone", WEB_PASSWORD)).status_code == 401
        assert get(locked + path, auth=(WEB_USER, WEB_PASSWORD)).status_code == 200
    garbled = get(locked + "/runs", headers={"Authorization": "Basic !!!"})
    assert garbled.status_code == 401
    token = base64.b64encode(f"{WEB_USER}:{WEB_PASSWORD}".encode()).decode()
    assert get(locked + "/runs", headers={"Authorization": f"basic {token}"}).status_code == 200
    hook = httpx.post(locked + "/hooks/forge", content=b"{}", timeout=20,
                      headers={"X-Gitea-Event": "issue_comment", "X-Gitea-Signature": "00"})
    assert hook.status_code == 401 and "signature" in hook.text
    assert "www-authenticate" not in hook.headers
    assert WEB_PASSWORD not in get(locked + f"/runs/{FAIL_ID}.json",
                                   auth=(WEB_USER, WEB_PASSWORD)).text


def test_pages_are_public_without_auth_settings(site: str) -> None:
    """Without CCCI_WEB_USER/PASSWORD every page and the metrics answer without credentials."""
    for path in ("/runs", f"/runs/{PASS_ID}", f"/runs/{PASS_ID}.json", "/metrics"):
        assert get(site + path).status_code == 200


def test_service_logs_come_in_time_order() -> None:
    """A service's tasks' log lines, read task after task, are put back in time order
    (Docker trims the fraction's zeros: the times do not sort as text)."""
    from ccci_tasks.platform.service_logs import _in_time_order

    lines = ["2026-12-04T19:06:06.78Z b", "  continued", "2026-12-04T19:06:02.8Z a",
             "2026-12-04T19:06:06.789Z c"]
    assert _in_time_order(lines) == [lines[2], lines[0], lines[1], lines[3]]
