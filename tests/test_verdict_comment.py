"""The red run's PR comment and the status links, as the run-end hook writes them into the
outbox (the relay's delivery, also after a forge outage, is tested in test_pages_e2e)."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydantic import SecretStr
from web_support import FakeStep, make_run, saved_report

from ccci_tasks import atomic
from ccci_tasks.config import Settings
from ccci_tasks.forge import hooks, messages, outbox
from ccci_tasks.naming import RunId
from ccci_tasks.state.reports import RunReport

TOKEN = "tok-" + uuid.uuid4().hex


def _settings(state: Path) -> Settings:
    return Settings(state_dir=state, forge_url="http://127.0.0.1:9", forge_owner="recipes",
                    forge_token=SecretStr(TOKEN), bridge_listen="127.0.0.1:8787")


def _red(state: Path, verdict: str = "fail") -> RunReport:
    run_id = RunId(str(uuid.uuid4()))
    output = "\n".join(f"log {n}" for n in range(100)) + "\nE   assert ```x``` == 'y'\n" + TOKEN
    make_run(state, run_id, [FakeStep("admit"), FakeStep("overlay_custom", ok=False,
                                                          output=output, detail="failed")],
             verdict=verdict, reason=f"overlay_custom: failed with {TOKEN}")
    hooks.remember_pull(state, run_id, "recipes", "custom-html", 5)
    return saved_report(state, run_id)


def test_a_red_run_from_a_pr_gets_one_comment(tmp_path: Path) -> None:
    """fail and error runs from a PR queue one comment on its stream: verdict, failing step,
    the last 40 lines of its output in <details> (fenced past any backticks), the link; a
    second call of the hook queues nothing; secrets are ***."""
    settings = _settings(tmp_path)
    for verdict in ("fail", "error"):
        report = _red(tmp_path, verdict)
        streams = hooks._finished(settings, report)
        assert "comment:recipes/custom-html#5" in streams
        (item,) = [i for i in outbox.pending(tmp_path) if i.key == f"{report.run_id}-verdict"]
        body = item.payload["body"]
        assert item.kind == "comment" and item.payload["number"] == 5
        assert messages.WORD_OF_VERDICT[verdict] in body and "`overlay_custom`" in body
        assert "<details>" in body and "</details>" in body
        assert f"http://127.0.0.1:8787/runs/{report.run_id}" in body
        assert "log 99" in body and "log 50" not in body  # the last 40 lines only
        assert "````\n" in body  # a fence longer than the output's ```
        assert TOKEN not in body and "***" in body
        hooks._finished(settings, report)  # the hook again: a redelivery
        assert [i.key for i in outbox.pending(tmp_path)].count(f"{report.run_id}-verdict") == 1


def test_green_runs_and_runs_without_a_pr_get_no_comment(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    green = RunId(str(uuid.uuid4()))
    make_run(tmp_path, green, [FakeStep("admit")])
    hooks.remember_pull(tmp_path, green, "recipes", "custom-html", 6)
    hooks._finished(settings, saved_report(tmp_path, green))
    lonely = str(uuid.uuid4())
    make_run(tmp_path, lonely, [FakeStep("admit", ok=False)], verdict="fail", reason="x")
    hooks._finished(settings, saved_report(tmp_path, lonely))
    assert not [i for i in outbox.pending(tmp_path) if i.kind == "comment"]


def test_statuses_link_to_the_run_page(tmp_path: Path) -> None:
    """pending and final statuses carry target_url = <public url>/runs/<run id>."""
    settings = _settings(tmp_path).model_copy(update={"public_url": "https://ci.example.org"})
    report = _red(tmp_path)
    target = hooks.StatusTarget(owner="recipes", repo="custom-html", sha="a" * 40,
                                context="ccci/quick")
    atomic.write_json(hooks._watch_path(tmp_path, report.run_id),
                      {"run_id": report.run_id, "target": target.to_json()})
    hooks._finished(settings, report)
    (final,) = [i for i in outbox.pending(tmp_path) if i.key == f"{report.run_id}-final"]
    assert final.payload["target_url"] == f"https://ci.example.org/runs/{report.run_id}"
    assert TOKEN not in final.payload["description"]
