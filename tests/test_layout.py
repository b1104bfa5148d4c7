"""The deployment files agree with the code: dev compose, systemd units, beat schedule."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from ccci_tasks import constants as c

REPO = Path(__file__).resolve().parent.parent


def test_dev_compose_worker_commands_match_workers() -> None:
    """docker-compose.dev.yml starts each worker role with `python -m workers.<role>`."""
    compose = yaml.safe_load((REPO / "docker-compose.dev.yml").read_text())
    services = compose["services"]
    for queue in c.QUEUES:
        service = services[f"worker-{queue}"]
        assert service["command"] == ["python", "-m", f"workers.{queue}"]
        module = importlib.import_module(f"workers.{queue}")
        assert module.role().queue == queue
    assert services["beat"]["command"][:4] == ["celery", "-A", "ccci_tasks.celery_app", "beat"]
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    # one node name for every container of the host (a container's hostname is random)
    assert compose["x-ccci"]["environment"]["CCCI_NODE"] == "${CCCI_NODE:-n1}"


def test_systemd_units_match_workers() -> None:
    """Each worker role, beat and flower has a systemd unit that starts it."""
    units = REPO / "workers" / "systemd"
    for queue in c.QUEUES:
        text = (units / f"ccci-worker-{queue}.service").read_text()
        assert f"-m workers.{queue}" in text
    assert " beat " in (units / "ccci-beat.service").read_text()
    assert "flower.env" in (units / "ccci-flower.service").read_text()


def test_worker_roles() -> None:
    """runs: concurrency MAX_TESTS without prefetch; infra and alerts: one process."""
    from workers import alerts, infra, runs

    assert runs.role().concurrency == 1
    assert "--disable-prefetch" in runs.role().argv()
    assert infra.role().concurrency == alerts.role().concurrency == 1
    assert "--queues=infra" in infra.role().argv()


def test_runs_worker_consumes_its_nodes_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs worker consumes runs and runs.<CCCI_NODE> and is named by its node, so two
    nodes on one machine have distinct worker names; infra and alerts keep their names."""
    from ccci_tasks.config import get_settings
    from workers import alerts, runs

    monkeypatch.setenv("CCCI_NODE", "n2")
    get_settings.cache_clear()
    try:
        argv = runs.role().argv()
    finally:
        get_settings.cache_clear()
    assert "--queues=runs,runs.n2" in argv and "--hostname=runs.n2@%h" in argv
    assert "--hostname=alerts@%h" in alerts.role().argv()


def test_beat_schedule_loads_with_the_app() -> None:
    """The beat schedule loads with the app and every entry names a registered task."""
    from ccci_tasks.celery_app import app

    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert schedule
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, f"beat entry {name} names unknown task {entry['task']}"


def test_bridge_imports_follow_interfaces() -> None:
    """The Python API of INTERFACES.md imports as written; the unbuilt lanes say so."""
    from ccci_tasks.tasks import cold_run, nightly_sweep, quick_run, warm_reconcile

    # Submissions run on the side queue, never behind a run's step.
    assert quick_run.name == "ccci.alerts.quick_run" and cold_run.name == "ccci.alerts.cold_run"
    assert nightly_sweep.name.startswith("ccci.infra.")
    assert warm_reconcile.name == "ccci.infra.warm_reconcile"
