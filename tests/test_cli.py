"""The ccci command: exit codes and output, as an operator would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import TEST_ENV

from ccci_tasks.config import Settings
from ccci_tasks.errors import WaitTimeout

if TYPE_CHECKING:
    from docker import DockerClient


def ccci(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccci_tasks.cli", *args],
        env={**os.environ, **TEST_ENV, **env}, capture_output=True, text=True, timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("quick", "../x", "0123abcd"), "'../x'"),
     (("quick", "custom-html", "--", "--foo"), "'--foo'"),
     (("quick", "custom-html", "$(id)"), "'$(id)'"),
     (("cold", "--", "-rf"), "'-rf'"),
     (("cold", "custom-html", "--ref", "a..b"), "'a..b'")],
)
def test_bad_input_exits_2_and_enqueues_nothing(
    redis_url: str, args: tuple[str, ...], needle: str
) -> None:
    """Bad recipe or ref: exit 2, a message naming the value, and no message sent."""
    import redis

    done = ccci(*args)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert redis.Redis.from_url(redis_url).llen("runs") == 0


def test_enrolled_lists_the_example(state_dir: Path) -> None:
    """`ccci enrolled --json` lists recipes with WARM_CANONICAL = True."""
    done = ccci("enrolled", "--json")
    assert done.returncode == 0, done.stderr
    assert "custom-html" in json.loads(done.stdout)


def test_status_shows_slots(redis_url: str) -> None:
    """`ccci status --json` reports slots in use against MAX_TESTS."""
    done = ccci("status", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["max_tests"] == 1 and data["slots_in_use"] == 0 and data["queued"] == []


def test_status_says_when_no_node_beats(quiet_redis_url: str) -> None:
    """With no node ever beating into the broker (runs workers of an older version, or none),
    `ccci status` says so; `--json` gives no nodes."""
    url = quiet_redis_url  # no worker of the session beats here
    done = ccci("status", CCCI_BROKER_URL=url)
    assert done.returncode == 0, done.stderr
    assert "nodes: no node has beaten (no runs worker runs, or it is of a version before " \
           "the node registry)" in done.stdout
    data = json.loads(ccci("status", "--json", CCCI_BROKER_URL=url).stdout)
    assert data["nodes"] == [] and data["node"] == Settings().node


def test_runs_show_unknown_exits_2(state_dir: Path, redis_url: str) -> None:
    """`ccci runs show` of an unknown run id exits 2 and says how to find runs."""
    done = ccci("runs", "show", str(uuid.uuid4()))
    assert done.returncode == 2
    assert "ccci runs list" in done.stderr


def test_check_with_broker_down_exits_3(state_dir: Path) -> None:
    """`ccci check` exits 3 when the broker is unreachable, without printing its URL secret."""
    done = ccci("check", CCCI_BROKER_URL="redis://:s3cret-pw@127.0.0.1:1/0")
    assert done.returncode == 3
    assert "broker" in done.stderr and "s3cret-pw" not in done.stderr + done.stdout


def test_enqueue_with_broker_down_exits_3(state_dir: Path, example_recipes: Path) -> None:
    """`ccci cold` with the broker unreachable exits 3, without a traceback or the secret."""
    done = ccci("cold", "custom-html", CCCI_BROKER_URL="redis://:s3cret-pw@127.0.0.1:1/0")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr
    assert "CCCI_BROKER_URL" in done.stderr


@pytest.mark.docker
def test_check_ok(redis_url: str, swarm: DockerClient, state_dir: Path) -> None:
    """`ccci check` exits 0 with a live broker, a swarm engine and a writable state root."""
    done = ccci("check")
    assert done.returncode == 0, done.stderr
    assert "broker: ok" in done.stdout and "swarm active" in done.stdout
    as_json = ccci("check", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["ok"] is True


def test_wait_timeout_says_what_it_saw(settings: Settings) -> None:
    """runs.wait times out naming the run and where it was last seen."""
    from ccci_tasks.runs import wait

    run_id = str(uuid.uuid4())
    with pytest.raises(WaitTimeout, match=f"verdict of run {run_id}.*no report yet"):
        wait(run_id, 0.2, settings)


# --------------------------------------------------------------------------- every command

SHA = "0" * 40


def _bad_inputs() -> list[tuple[str, ...]]:
    unknown = str(uuid.uuid4())
    return [
        ("quick", "../x", "0123abcd"),
        ("quick", "no-such-recipe", "0123abcd"),
        ("quick", "custom-html", "feedbeefcafe"),
        ("quick", "custom-html", "nosuchbranch"),
        ("quick", "custom-html", "2.0.0+2.0", "--timeout", "-1", "--wait"),
        ("quick", "custom-html"),
        ("cold", "no-such-recipe"),
        ("cold", "custom-html", "--ref", "nosuch"),
        ("cold", "custom-html", "--timeout", "0"),
        ("cold", "custom-html", "--ref", "a..b", "--wait"),
        ("sweep", "--timeout", "-5"),
        ("reconcile", "no-such-app"),
        ("reconcile", "../x", "--wait"),
        ("watch", "not-a-run-id"),
        ("watch", unknown),
        ("runs", "show", unknown),
        ("runs", "show", "../../etc/passwd"),
        ("runs", "list", "--bogus"),
        ("canonical", "show", "no-such-recipe"),
        ("canonical", "show", "../x"),
        ("canonical", "verify", "no-such-recipe"),
        ("canonical", "list", "--bogus"),
        ("enrolled", "--bogus"),
        ("alerts", "--bogus"),
        ("status", "--bogus"),
        ("prune", "--bogus"),
        ("realms", "reap", "--bogus"),
        ("check", "--bogus"),
        ("bridge", "serve", "--listen", "not-an-address"),
        ("nosuchcommand",),
    ]


@pytest.mark.docker
def test_every_command_refuses_bad_input_with_2_and_enqueues_nothing(
    redis_url: str, state_dir: Path, example_recipes: Path
) -> None:
    """Each INTERFACES command given bad input exits 2 and changes nothing: no message on
    any queue, no pending run, no run report."""
    import redis

    client = redis.Redis.from_url(redis_url)
    reports_before = sorted((state_dir / "runs").glob("*")) if (state_dir / "runs").exists() \
        else []
    failures = []
    for args in _bad_inputs():
        done = ccci(*args)
        if done.returncode != 2:
            failures.append(f"{args}: exit {done.returncode}: {done.stderr[-300:]}")
    assert failures == []
    for queue in ("runs", "infra", "alerts"):
        assert client.llen(queue) == 0, queue
    assert client.llen("ccci:slots:pending") == 0
    after = sorted((state_dir / "runs").glob("*")) if (state_dir / "runs").exists() else []
    assert after == reports_before


@pytest.mark.docker
def test_json_parses_on_every_reading_command(
    redis_url: str, state_dir: Path, swarm: DockerClient, example_recipes: Path
) -> None:
    """Every command that prints something prints one JSON document with --json."""
    for args in (("status",), ("runs", "list"), ("canonical", "list"), ("enrolled",),
                 ("alerts",), ("alerts", "--seen"), ("prune", "--dry-run"), ("check",)):
        done = ccci(*args, "--json")
        assert done.returncode == 0, (args, done.stderr)
        json.loads(done.stdout)


def test_state_root_missing_is_said(tmp_path: Path) -> None:
    """Commands that read the state root say when it does not exist (exit 3)."""
    missing = tmp_path / "nowhere"
    for args in (("runs", "list"), ("status",), ("canonical", "list"), ("alerts",)):
        done = ccci(*args, CCCI_STATE_DIR=str(missing))
        assert done.returncode == 3, (args, done.stderr)
        assert f"the state root {missing} does not exist" in done.stderr


def test_env_file_of_the_checkout_is_found(tmp_path: Path, redis_url: str) -> None:
    """In a shell with no CCCI_* variable, the CLI reads run/ccci.env from the checkout."""
    checkout = tmp_path / "checkout"
    (checkout / "run").mkdir(parents=True)
    (checkout / "deep" / "er").mkdir(parents=True)
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    (checkout / "run" / "ccci.env").write_text(f"CCCI_STATE_DIR={state}\n"
                                               f"CCCI_BROKER_URL={redis_url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}
    done = subprocess.run([sys.executable, "-m", "ccci_tasks.cli", "runs", "list", "--json"],
                          cwd=checkout / "deep" / "er", env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
