"""The ``ccci`` group, its exit codes and what every command shares.

Exit codes, for every command: 0 ok / green; 1 the run finished red (or a snapshot does not
verify); 2 bad input or usage, nothing was done; 3 an infrastructure error or a timeout.
``--json`` prints one JSON document on stdout; messages and live progress go to stderr.

Settings come from the ``CCCI_*`` environment. A shell that sets none (a new shell in the
checkout after ``make up``) gets the ``run/ccci.env`` that ``make up`` wrote, found from the
current directory upwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from ccci_tasks import constants as c
from ccci_tasks import naming
from ccci_tasks.config import Settings, get_settings
from ccci_tasks.errors import BrokerError, CcciError, ConfigError, InvalidInput, StateError
from ccci_tasks.state.reports import RunReport

EXIT_BY_VERDICT = {"pass": c.EXIT_OK, "fail": c.EXIT_RED, "error": c.EXIT_INFRA}
ENV_FILE = Path("run") / "ccci.env"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ccci-tasks: CI runs of Co-op Cloud recipes on one swarm host."""


WAIT = click.option("--wait", is_flag=True, help="Follow the run and exit by its verdict.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def timeout_option(default: float) -> Callable[[Any], Any]:
    return click.option("--timeout", default=default, show_default=True, type=float,
                        help="Seconds to wait (with --wait).")


# ----------------------------------------------------------------------------- exit codes


class Exit(Exception):
    """Leave with this code (after the message, if any, was printed)."""

    def __init__(self, code: int) -> None:
        self.code = code


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"ccci: {message}", err=True)
    raise Exit(code)


@contextmanager
def exits() -> Iterator[None]:
    """Map our errors (and broker failures) to the exit codes."""
    try:
        yield
    except (InvalidInput, ConfigError) as exc:
        fail(c.EXIT_USAGE, str(exc))
    except CcciError as exc:
        fail(c.EXIT_INFRA, str(exc))
    except (OSError, KombuOperationalError, RedisError) as exc:
        fail(c.EXIT_INFRA, f"broker or engine unreachable ({type(exc).__name__}): check "
                           "CCCI_BROKER_URL and that redis-server and dockerd run")


def verdict_exit(report: RunReport) -> int:
    """The exit code of a finished run: a refused run is bad input."""
    if report.verdict == "error" and (report.reason or "").startswith("refused:"):
        return c.EXIT_USAGE
    return EXIT_BY_VERDICT.get(report.verdict or "error", c.EXIT_INFRA)


# ----------------------------------------------------------------------------- settings


def find_env_file(start: Path) -> Path | None:
    """``run/ccci.env`` in ``start`` or the nearest parent that has one."""
    for folder in (start, *start.parents):
        candidate = folder / ENV_FILE
        if candidate.is_file():
            return candidate
    return None


def _load_env_file(path: Path) -> None:
    from ccci_tasks.platform.envfile import parse_env

    for key, value in parse_env(path.read_text(encoding="utf-8")).items():
        if key.startswith("CCCI_"):
            os.environ.setdefault(key, value)


def load_settings() -> Settings:
    if not any(key.startswith("CCCI_") for key in os.environ):
        found = find_env_file(Path.cwd())
        if found is not None:
            _load_env_file(found)
            get_settings.cache_clear()
    return get_settings()


def state_root(settings: Settings) -> Path:
    """The state root; a clear error when it does not exist."""
    if not settings.state_dir.is_dir():
        raise StateError(
            f"the state root {settings.state_dir} does not exist: set CCCI_STATE_DIR (or "
            "run in the checkout where `make up` wrote run/ccci.env)")
    return settings.state_dir


# ----------------------------------------------------------------------------- arguments


def positive(timeout: float) -> float:
    if not timeout > 0:
        raise InvalidInput(f"--timeout {timeout:g} is invalid: give a number of seconds > 0")
    return timeout


def load_run(settings: Settings, run_id: str) -> RunReport:
    """The report of ``run_id`` (from the broker, which holds every host's runs); with the
    broker down, this host's copy and a warning saying so. A clear error when there is none."""
    from ccci_tasks import broker
    from ccci_tasks.state import reports

    state_root(settings)
    found = reports.at(settings, broker.QUICK_TIMEOUT_S).lookup(naming.RunId(run_id))
    if found.broker_error is not None:
        if found.record is None:
            raise BrokerError(f"run {run_id} has no copy on this host (node {settings.node}) "
                              f"and the broker does not answer: {found.broker_error}")
        local_only(settings, found.broker_error, "this host's copy of the run")
    if found.record is None:
        raise InvalidInput(f"no run {run_id!r} in the broker or under {settings.state_dir}/runs;"
                           " see `ccci runs list`")
    return found.record


def local_only(settings: Settings, broker_error: str, what: str) -> None:
    """Warn (stderr) that the broker did not answer, so ``what`` is shown from this host."""
    click.echo(f"ccci: warning: {what} only (node {settings.node}): {broker_error}", err=True)


def emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)
