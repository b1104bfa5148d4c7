"""The swarm platform on a real-shaped recipe (notes-pg: an app and PostgreSQL in two compose
files, a Docker secret, configs versioned in abra.sh): secrets and ports, start order, clean
and killed stops, crash loops once the stack runs, and what is refused before anything deploys.

One app is deployed for the module (its first boot is the slow one) and the tests run in order
on it; the refusals use apps of their own that never deploy.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import TEST_BASE
from test_swarm_platform import commit_on, replace_once

from ccci_tasks import constants
from ccci_tasks.errors import DeployFailed, InvalidInput, UncleanStop
from ccci_tasks.naming import Domain, Recipe, Ref, cold_domain, new_run_hex, stack_name
from ccci_tasks.platform.envfile import set_keys
from ccci_tasks.platform.swarm import SwarmPlatform
from ccci_tasks.probes import reconverged

if TYPE_CHECKING:
    from docker import DockerClient

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RECIPE = Recipe("notes-pg")
BASE = Domain(TEST_BASE)
CONVERGE_S = 180.0


@pytest.fixture(scope="module")
def platform(swarm: DockerClient, example_recipes: Path) -> SwarmPlatform:
    from ccci_tasks.config import get_settings

    get_settings.cache_clear()
    return SwarmPlatform(get_settings(), client=swarm)


@pytest.fixture(scope="module")
def app(platform: SwarmPlatform) -> Iterator[tuple[Domain, Any]]:
    """notes-pg deployed on fresh volumes; (domain, the state wait_converged returned)."""
    domain = cold_domain(RECIPE, new_run_hex(), BASE)
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    platform.deploy(domain)
    try:
        yield domain, platform.wait_converged(domain, CONVERGE_S)
    finally:
        platform.remove(domain)


def _served(platform: SwarmPlatform, domain: Domain) -> dict[str, Any]:
    response = httpx.get(platform.base_url(domain) + "/", headers={"Host": domain}, timeout=10,
                         trust_env=False)
    response.raise_for_status()
    return dict(response.json())


def _secrets(platform: SwarmPlatform, domain: Domain) -> list[Any]:
    found: list[Any] = platform.client.secrets.list(
        filters={"label": f"{constants.LABEL_DOMAIN}={domain}"})
    return found


def _service(state: Any, short: str) -> Any:
    return next(s for s in state.services if s.name.endswith("_" + short))


def _set_env(platform: SwarmPlatform, domain: Domain, **values: str) -> None:
    path = platform.env_path(domain)
    path.write_text(set_keys(path.read_text(), values))


def test_first_boot_in_start_order_converges(platform: SwarmPlatform,
                                             app: tuple[Domain, Any]) -> None:
    """The app exits while PostgreSQL's first boot runs (initdb, then loading) and is
    restarted; those failures are start order, not a crash loop: the deploy converges, the
    app serves its 5,000 notes at the newest migration, and it counts as reconverged."""
    domain, state = app
    app_service = _service(state, "app")
    assert app_service.start_failures >= 1, state
    assert app_service.failed_tasks == 0
    assert reconverged(state)[0], reconverged(state)[1]
    served = _served(platform, domain)
    assert served["tables"]["notes"] == 5000 and served["pending"] == []
    assert [m["version"] for m in served["migrations"]] == [1, 2, 3]


def test_secret_and_ports(platform: SwarmPlatform, app: tuple[Domain, Any]) -> None:
    """One Docker secret `<stack>_db_password_v1`, labelled for the app and not for the
    stack (stack rm keeps it); its value (40 url-safe characters, as `# length=40` asks) is
    in a 0600 file beside the env file and nowhere else the platform writes; the database
    has a loopback port of its own."""
    domain, _ = app
    [secret] = _secrets(platform, domain)
    labels = secret.attrs["Spec"]["Labels"]
    assert secret.name == f"{stack_name(domain)}_db_password_v1"
    assert labels[constants.LABEL_DOMAIN] == domain
    assert constants.STACK_NAMESPACE_LABEL not in labels
    [value] = platform.secret_values(domain)
    assert len(value) == 40
    path = platform.secrets_path(domain)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {secret.name: value}
    for written in [platform.env_path(domain), *platform.deploy_root(domain).rglob("*")]:
        if written.is_file():
            assert value not in written.read_text(errors="replace"), written
    env = platform.read_env(domain)
    assert env["CCCI_DB_PORT"].isdigit() and env["CCCI_DB_PORT"] != env["CCCI_HTTP_PORT"]


def test_graceful_undeploy_is_clean_and_keeps_the_secret(platform: SwarmPlatform,
                                                         app: tuple[Domain, Any]) -> None:
    """A graceful undeploy sees every container exit by itself (PostgreSQL's fast shutdown
    on SIGINT); the secret and its value stay, and the redeploy on the kept volume
    connects with it."""
    domain, _ = app
    [before] = platform.secret_values(domain)
    report = platform.undeploy(domain)
    assert report.watched and {s.service for s in report.stops} == {"app", "db"}
    assert report.unclean == (), report
    report.require_clean(domain, "take a snapshot")
    assert [s.name for s in _secrets(platform, domain)] == [f"{stack_name(domain)}_db_password_v1"]
    platform.deploy(domain)
    platform.wait_converged(domain, CONVERGE_S)
    assert platform.secret_values(domain) == [before]
    assert _served(platform, domain)["tables"]["boots"] == 2


def test_a_failing_migration_is_a_crash_loop_once_the_stack_runs(
    platform: SwarmPlatform, app: tuple[Domain, Any], example_recipes: Path
) -> None:
    """A head whose migration fails keeps the app failing although the database runs: red
    within three failures, naming the app and its last log lines."""
    domain, _ = app
    head = commit_on(example_recipes / RECIPE, "1.2.0+1.2", "migrations.sql",
                     lambda text: text + "\n-- migration 4: broken\nSELECT 1/0;\n",
                     "a broken migration")
    head = commit_on(example_recipes / RECIPE, head, "abra.sh",
                     replace_once("MIGRATIONS_VERSION=v3", "MIGRATIONS_VERSION=v9"),
                     "bump the migrations config")
    platform.deploy(domain, chaos_ref=Ref(head))
    started = time.monotonic()
    with pytest.raises(DeployFailed) as info:
        platform.wait_converged(domain, CONVERGE_S)
    assert time.monotonic() - started < CONVERGE_S / 3
    message = str(info.value)
    assert f"{stack_name(domain)}_app" in message and "crash-looping" in message
    assert "division by zero" in message
    assert "3 tasks failed" in message


def test_a_killed_database_is_an_unclean_stop(platform: SwarmPlatform,
                                              app: tuple[Domain, Any]) -> None:
    """A database that ignores its stop signal is killed after its grace period: the
    report names it, the grace period and the kill, and a snapshot would be refused."""
    domain, _ = app
    _set_env(platform, domain, DB_IGNORE_STOP="1")
    platform.deploy(domain, version="1.2.0+1.2")
    platform.wait_converged(domain, CONVERGE_S)
    started = time.monotonic()
    report = platform.undeploy(domain)
    assert time.monotonic() - started >= 9  # the db's 10 s grace
    [killed] = report.unclean
    assert (killed.service, killed.grace_s, killed.exit_code) == ("db", 10.0, 137)
    with pytest.raises(UncleanStop, match=r"service db .* stop grace period of 10 s: killed "
                                          r"with SIGKILL"):
        report.require_clean(domain, "take a snapshot")
    _set_env(platform, domain, DB_IGNORE_STOP="0")


def test_remove_takes_the_secret_and_its_value(platform: SwarmPlatform,
                                               app: tuple[Domain, Any]) -> None:
    """remove deletes the Docker secret, the values file, the configs and the volume."""
    domain, _ = app
    platform.remove(domain)
    assert _secrets(platform, domain) == []
    assert not platform.secrets_path(domain).exists()
    assert platform.secret_values(domain) == []
    assert platform.volumes(domain) == []
    assert platform.client.configs.list(
        filters={"label": f"{constants.LABEL_DOMAIN}={domain}"}) == []


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def fresh(platform: SwarmPlatform) -> Iterator[Domain]:
    domain = cold_domain(RECIPE, new_run_hex(), BASE)
    yield domain
    platform.remove(domain)


def _nothing_deployed(platform: SwarmPlatform, domain: Domain) -> None:
    assert not platform.deployed(domain).is_deployed
    assert _secrets(platform, domain) == []
    assert not platform.secrets_path(domain).exists()


def _line(repo: Path, ref: str, path: str, text: str) -> int:
    """The line of ``path`` at ``ref`` holding ``text`` (1-based)."""
    import subprocess

    shown = subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{path}"], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    return next(i for i, line in enumerate(shown, start=1) if text in line)


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        ("compose.db.yml", "_db_password_${SECRET_DB_PASSWORD_VERSION}",
         "_db_password_${SECRET_DB_PASS_VERSION}",
         r"compose\.db\.yml line {line}: external secret 'db_password' .*"
         r"\$\{{SECRET_DB_PASS_VERSION\}}, which the app's env does not declare"),
        ("compose.yml", "file: migrations.sql", "file: ../../../../etc/shadow",
         r"compose\.yml line {line}: config file '../../../../etc/shadow' is outside the "
         r"recipe"),
    ],
)
def test_deploy_refuses_before_anything_deploys(
    platform: SwarmPlatform, fresh: Domain, example_recipes: Path, path: str, old: str, new: str,
    expected: str,
) -> None:
    """A compose file naming a secret the env does not declare, or a config file from outside
    the recipe, is refused naming the file and the line; no service, secret or secret value
    exists afterwards."""
    repo = example_recipes / RECIPE
    head = commit_on(repo, "1.2.0+1.2", path, replace_once(old, new), "break the recipe")
    platform.new_app(RECIPE, fresh, kind="cold", run=None)
    with pytest.raises(InvalidInput, match=expected.format(line=_line(repo, head, path, new))):
        platform.deploy(fresh, chaos_ref=Ref(head))
    _nothing_deployed(platform, fresh)
    _set_env(platform, fresh, COMPOSE_FILE="compose.yml:compose.db.yml:compose.smtp.yml")
    line = _line_of(platform.env_path(fresh), "COMPOSE_FILE=")
    with pytest.raises(InvalidInput, match=rf"the env file of {fresh}, line {line}: "
                                           r"compose\.smtp\.yml is not in the recipe"):
        platform.deploy(fresh)
    _nothing_deployed(platform, fresh)


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1)
                if text in line)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("SECRET_DB_PASSWORD_VERSION=v1 # length=40",
         "SECRET_DB_PASSWORD_VERSION=v1 # length=forty",
         r"'# length=N' needs a whole number from 1 to 4096, got 'forty'"),
        ('COMPOSE_FILE="compose.yml:compose.db.yml"',
         'COMPOSE_FILE="compose.yml:compose.db.yml:compose.smtp.yml"',
         r"COMPOSE_FILE names compose\.smtp\.yml, which the recipe does not have"),
        ("LETS_ENCRYPT_ENV=production", "LETS ENCRYPT production",
         r"not a KEY=VALUE line, a comment or blank"),
    ],
)
def test_new_app_refuses_a_malformed_env_sample(
    platform: SwarmPlatform, fresh: Domain, example_recipes: Path, tmp_path: Path, old: str,
    new: str, expected: str,
) -> None:
    """A malformed .env.sample line, or a COMPOSE_FILE naming a file the recipe lacks, is
    refused by new_app naming the version, the file and the line; no env file is written."""
    import subprocess

    clone = tmp_path / RECIPE
    subprocess.run(["git", "clone", "-q", str(example_recipes / RECIPE), str(clone)], check=True)
    head = commit_on(clone, "1.2.0+1.2", ".env.sample", replace_once(old, new), "break it")
    subprocess.run(["git", "-C", str(clone), "tag", "1.3.0+1.3", head], check=True)
    mine = SwarmPlatform(platform.settings.model_copy(update={"recipes_dir": tmp_path}),
                         client=platform.client)
    line = _line(clone, head, ".env.sample", new)
    with pytest.raises(InvalidInput, match=rf"^notes-pg 1\.3\.0\+1\.3: \.env\.sample line "
                                           rf"{line}: {expected}"):
        mine.new_app(RECIPE, fresh, "1.3.0+1.3", kind="cold", run=None)
    assert not mine.env_path(fresh).exists()
    _nothing_deployed(mine, fresh)
