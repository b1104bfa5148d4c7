"""The abra platform against a recording stand-in abra (tests/fake_abra/abra).

The real abra cannot run here, so these tests check the exact argument lists it would get,
the ABRA_DIR layout, the chaos checkout and the translation of failures. Docker state comes
from a small in-memory ``DockerState`` stand-in, or from the real engine where marked.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ccci_tasks.config import Settings
from ccci_tasks.errors import (
    AppNotFound,
    CommandFailed,
    InvalidInput,
    PlatformError,
    WaitTimeout,
)
from ccci_tasks.naming import Domain, Recipe, Ref, RunHex, RunId, stack_name
from ccci_tasks.platform.abra import AbraPlatform, run_command
from ccci_tasks.platform.abra_plan import (
    chaos_checkout_plan,
    deploy_argv,
    env_file_recipe,
    new_app_argv,
    subprocess_env,
    undeploy_argv,
)
from ccci_tasks.platform.base import AppInfo, DeployedState, ServiceState
from ccci_tasks.platform.envfile import parse_env, set_keys

if TYPE_CHECKING:
    from docker import DockerClient

FAKE_DIR = Path(__file__).resolve().parent / "fake_abra"
FAKE = str(FAKE_DIR / "abra")
RECIPE = Recipe("custom-html")
DOMAIN = Domain("cust-1a2b3c.ci.localhost")
RUN = RunHex("1a2b3c")
RUN_A = RunId("aaaaaaaa-1111-4222-8333-444455556666")
RUN_B = RunId("bbbbbbbb-1111-4222-8333-444455556666")
VERSION = "1.0.0+1.0"
SECRET = "hunter2-do-not-leak"
GIT_ID = ["-c", "user.name=ccci", "-c", "user.email=ccci@example.org"]


class InMemoryDockerState:
    """A stand-in for ``DockerState``: deployed stacks are a set; calls are recorded.

    ``AbraPlatform`` is typed to take the ``DockerState`` class, hence the
    ``type: ignore[arg-type]`` where this stand-in is handed to it."""

    def __init__(self, deployed: set[str] | None = None) -> None:
        self.deployed_domains = set(deployed or ())
        self.calls: list[tuple[str, str]] = []
        self.labelled: list[AppInfo] = []

    def deployed(self, domain: Domain) -> DeployedState:
        services: tuple[ServiceState, ...] = ()
        if domain in self.deployed_domains:
            services = (ServiceState(f"{stack_name(domain)}_app", 1, 1, "ccci/x:1"),)
        return DeployedState(domain=domain, stack=stack_name(domain), services=services)

    def wait_undeployed(self, domain: str, timeout_s: float) -> None:
        self.calls.append(("wait_undeployed", domain))
        self.deployed_domains.discard(domain)

    class client:  # the engine's event stream is not there: a stop is unwatched
        class api:
            @staticmethod
            def events(**kwargs: Any) -> Any:
                import docker

                raise docker.errors.DockerException("no engine in this test")

    def stop_graces(self, domain: str) -> dict[str, float]:
        return {}

    def running_containers(self, domain: str) -> list[tuple[str, str, tuple[str, ...]]]:
        return []

    def stop_orphan_containers(self, domain: str, stop_timeout_s: int | None = None,
                               graces: Any = None) -> list[str]:
        self.calls.append(("stop_orphan_containers", domain))
        return []

    def kill_containers(self, domain: str) -> list[str]:
        self.calls.append(("kill_containers", domain))
        return []

    def remove_volumes(self, domain: str) -> list[str]:
        self.calls.append(("remove_volumes", domain))
        return []

    def remove_secrets(self, domain: str) -> list[str]:
        self.calls.append(("remove_secrets", domain))
        return []

    def labelled_apps(self) -> list[AppInfo]:
        return list(self.labelled)


def git(*args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def make_recipe(recipes_dir: Path) -> dict[str, str]:
    """A recipe repository with tag 1.0.0+1.0 on main and a PR branch ``pr/12`` after it."""
    repo = recipes_dir / RECIPE
    repo.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", str(repo))
    (repo / "compose.yml").write_text("version: '3.8'\n")
    git("-C", str(repo), "add", "compose.yml")
    git("-C", str(repo), "commit", "--quiet", "-m", "one")
    git("-C", str(repo), "tag", VERSION)
    tag_sha = git("-C", str(repo), "rev-parse", "HEAD")
    git("-C", str(repo), "switch", "--quiet", "-c", "pr/12")
    (repo / "compose.yml").write_text("version: '3.8'\n# pr 12\n")
    git("-C", str(repo), "commit", "--quiet", "-am", "two")
    pr_sha = git("-C", str(repo), "rev-parse", "HEAD")
    git("-C", str(repo), "switch", "--quiet", "main")
    return {"tag": tag_sha, "pr": pr_sha}


class Env:
    """One test's abra root, fake-abra log and settings."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "abra"
        self.recipes = tmp_path / "recipes"
        self.log = tmp_path / "fake-abra.jsonl"
        self.extra = {"FAKE_ABRA_LOG": str(self.log), "FAKE_ABRA_RECIPES": str(self.recipes)}
        self.settings = Settings(abra_bin=FAKE, abra_dir=self.root, recipes_dir=self.recipes,
                                 abra_server="default")
        self.state = InMemoryDockerState()

    def platform(self, run_id: RunId | None = RUN_A, **extra: str) -> AbraPlatform:
        return AbraPlatform(self.settings, run_id=run_id, docker_state=self.state,  # type: ignore[arg-type]
                            extra_env={**self.extra, **extra})

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def env_file(self, domain: str = DOMAIN) -> Path:
        return self.root / "servers" / "default" / f"{domain}.env"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def shas(env: Env) -> dict[str, str]:
    return make_recipe(env.recipes)


# --------------------------------------------------------------------------- new_app


def test_new_app_runs_abra_app_new_with_exact_argv(env: Env) -> None:
    """new_app runs `abra app new <recipe> <version> --server --domain --secrets --no-input`."""
    info = env.platform().new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    assert env.argvs() == [[FAKE, "app", "new", RECIPE, VERSION, "--server", "default",
                            "--domain", DOMAIN, "--secrets", "--no-input"]]
    assert info == AppInfo(domain=DOMAIN, stack="cust-1a2b3c_ci_localhost", recipe=RECIPE,
                           kind="cold", run=RUN, deployed=False)


def test_new_app_records_kind_run_and_recipe_in_the_env_file(env: Env) -> None:
    """The env file abra wrote gains CCCI_KIND, CCCI_RUN and CCCI_RECIPE lines."""
    env.platform().new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    values = parse_env(env.env_file().read_text())
    assert values["TYPE"] == RECIPE  # written by (fake) abra
    assert values["CCCI_KIND"] == "cold"
    assert values["CCCI_RUN"] == RUN
    assert values["CCCI_RECIPE"] == RECIPE


def test_new_app_without_version_omits_it(env: Env) -> None:
    """Without a version abra gets no version positional (it picks the latest)."""
    env.platform().new_app(RECIPE, DOMAIN, kind="warm", run=None)
    assert env.argvs() == [[FAKE, "app", "new", RECIPE, "--server", "default", "--domain",
                            DOMAIN, "--secrets", "--no-input"]]
    assert "CCCI_RUN" not in parse_env(env.env_file().read_text())


def test_new_app_is_idempotent(env: Env) -> None:
    """A second new_app for an existing env file runs no abra and keeps the file's keys."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    text = env.env_file().read_text()
    again = platform.new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    assert len(env.argvs()) == 1
    assert env.env_file().read_text() == text
    assert again.kind == "cold" and again.run == RUN


def test_new_app_refuses_an_env_file_of_another_recipe(env: Env) -> None:
    """An existing app of another recipe is an error, not silently relabelled."""
    env.platform().new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    with pytest.raises(PlatformError, match="already exists for recipe 'custom-html'"):
        env.platform().new_app(Recipe("keycloak"), DOMAIN, kind="cold", run=RUN)


def test_subprocess_gets_a_minimal_environment_and_runs_in_abra_dir(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """abra sees ABRA_DIR/PATH/HOME/DOCKER_HOST (+extra) only, never the worker's settings;
    logs hold no env."""
    monkeypatch.setenv("CCCI_KEYCLOAK_ADMIN_PASSWORD", SECRET)
    caplog.set_level(logging.INFO, logger="ccci_tasks.platform.abra")
    platform = env.platform(TOKEN=SECRET)
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    (call,) = env.calls()
    assert call["ABRA_DIR"] == str(env.root / "runs" / RUN_A)
    assert call["cwd"] == call["ABRA_DIR"]
    # The interpreter launcher (e.g. a pyenv shim) may add its own variables, so check
    # that ours arrived and none of the worker's CCCI_* settings did.
    keys = set(call["env_keys"])
    assert {"ABRA_DIR", "PATH", "HOME", "GIT_TERMINAL_PROMPT", "DOCKER_HOST", "TOKEN"} <= keys
    assert not any(key.startswith("CCCI_") for key in keys)
    assert "app new custom-html" in caplog.text
    assert SECRET not in caplog.text


# --------------------------------------------------------------------------- ABRA_DIR


def test_each_run_has_its_own_abra_dir_sharing_servers(env: Env) -> None:
    """Two run ids get two ABRA_DIRs whose servers/ and catalogue/ are one shared directory."""
    first, second = env.platform(RUN_A), env.platform(RUN_B)
    first.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    second.new_app(RECIPE, Domain("cust-4d5e6f.ci.localhost"), kind="cold", run=RunHex("4d5e6f"))
    dirs = [call["ABRA_DIR"] for call in env.calls()]
    assert dirs == [str(env.root / "runs" / RUN_A), str(env.root / "runs" / RUN_B)]
    for name in ("servers", "catalogue"):
        links = [Path(d) / name for d in dirs]
        assert all(link.is_symlink() for link in links)
        assert {link.resolve() for link in links} == {(env.root / name).resolve()}
    assert (Path(dirs[1]) / "servers" / "default" / f"{DOMAIN}.env").is_file()
    recipes = [Path(d) / "recipes" for d in dirs]
    assert not any(r.is_symlink() for r in recipes) and recipes[0] != recipes[1]


def test_no_run_id_uses_the_shared_abra_dir(env: Env) -> None:
    """Without a run id ABRA_DIR is <abra_root>/shared."""
    env.platform(run_id=None).new_app(RECIPE, DOMAIN, kind="warm", run=None)
    assert env.calls()[0]["ABRA_DIR"] == str(env.root / "shared")


@pytest.mark.parametrize("run_id", ["../x", "-rf", "a/b", "", "x" * 65])
def test_unsafe_run_ids_are_rejected(env: Env, run_id: str) -> None:
    """A run id that is no plain directory name is InvalidInput (the platform takes a RunId,
    made only by parsing)."""
    with pytest.raises(InvalidInput):
        env.platform(run_id=RunId(run_id))


def test_discard_run_dir_keeps_the_shared_servers(env: Env) -> None:
    """discard_run_dir removes the run's ABRA_DIR but not the shared env files."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    platform.discard_run_dir()
    assert not platform.abra_dir.exists()
    assert env.env_file().is_file()


def test_a_run_directory_goes_when_its_run_ends(env: Env, tmp_path: Path,
                                                shas: dict[str, str], redis_url: str) -> None:
    """The run-finished hook (what end_run and the janitor call once a verdict is written)
    deletes <abra root>/runs/<run id>/ with its recipe checkout; the shared servers/ and
    catalogue/, and another run's directory, stay."""
    from pydantic import SecretStr

    from ccci_tasks import hooks
    from ccci_tasks.state import reports
    from ccci_tasks.tasks import wiring

    wiring.wire()  # what loading ccci_tasks.tasks does in every worker

    # No forge and no notification targets: only the platform's hook has work here.
    settings = env.settings.model_copy(update={"platform": "abra", "forge_url": None,
                                               "notify_urls": SecretStr(""),
                                               "state_dir": tmp_path / "state"})
    run_id, other = RunId("0b6f1d5e-3c1a-4e0a-9a55-0d5c1b2f7e3a"), RUN_B
    ended = AbraPlatform(settings, run_id=run_id, docker_state=env.state,  # type: ignore[arg-type]
                         extra_env=env.extra)
    ended.new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    ended.deploy(DOMAIN, chaos_ref=Ref("pr/12"))
    running = env.platform(other)
    running.new_app(RECIPE, Domain("cust-4d5e6f.ci.localhost"), kind="cold", run=RunHex("4d5e6f"))
    checkout = ended.abra_dir / "recipes" / RECIPE
    assert git("-C", str(checkout), "rev-parse", "HEAD") == shas["pr"]
    store = reports.at(settings)
    store.create(run_id, "cold", RECIPE)
    report = store.end(run_id, "pass")
    assert report is not None
    hooks.run_finished(settings, report)
    assert not ended.abra_dir.exists()
    assert running.abra_dir.is_dir() and (running.abra_dir / "servers").is_symlink()
    assert env.env_file().is_file() and (env.root / "catalogue").is_dir()


# --------------------------------------------------------------------------- deploy


def test_deploy_at_version_argv(env: Env) -> None:
    """A tag deploy is `abra app deploy <domain> <version> --no-input --no-domain-checks ...`."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    platform.deploy(DOMAIN, VERSION)
    assert env.argvs()[1:] == [[FAKE, "app", "deploy", DOMAIN, VERSION, "--no-input",
                                "--no-domain-checks", "--no-converge-checks"]]


def test_deploy_latest_argv(env: Env) -> None:
    """Without a version abra deploys the latest tag: no version positional."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    platform.deploy(DOMAIN)
    assert env.argvs()[1:] == [[FAKE, "app", "deploy", DOMAIN, "--no-input",
                                "--no-domain-checks", "--no-converge-checks"]]


def test_deploy_over_a_deployed_app_adds_force(env: Env) -> None:
    """Redeploying a deployed app at a version passes --force (abra refuses otherwise)."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    env.state.deployed_domains.add(DOMAIN)
    state = platform.deploy(DOMAIN, VERSION)
    assert env.argvs()[1:] == [[FAKE, "app", "deploy", DOMAIN, VERSION, "--force",
                                "--no-input", "--no-domain-checks", "--no-converge-checks"]]
    assert state.is_deployed


def test_deploy_of_an_unknown_app_is_app_not_found(env: Env) -> None:
    """Deploying a domain without an env file runs nothing and raises AppNotFound."""
    with pytest.raises(AppNotFound, match="no env file"):
        env.platform().deploy(DOMAIN, VERSION)
    assert env.calls() == []


def test_chaos_deploy_checks_the_ref_out_before_deploying(
    env: Env, shas: dict[str, str]
) -> None:
    """A chaos deploy detaches the run's checkout at the ref's sha, then runs --chaos."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    platform.deploy(DOMAIN, chaos_ref=Ref("pr/12"))
    _new, deploy = env.calls()
    assert deploy["argv"] == [FAKE, "app", "deploy", DOMAIN, "--chaos", "--no-input",
                              "--no-domain-checks", "--no-converge-checks"]
    assert deploy["recipe_head"] == shas["pr"]  # HEAD as abra saw it when deploying
    checkout = platform.abra_dir / "recipes" / RECIPE
    assert git("-C", str(checkout), "rev-parse", "HEAD") == shas["pr"]
    assert git("-C", str(checkout), "status", "--porcelain") == ""


def test_chaos_deploy_in_a_new_run_clones_its_own_checkout(
    env: Env, shas: dict[str, str]
) -> None:
    """A later run (own ABRA_DIR, no checkout yet) clones the recipe before a chaos deploy."""
    env.platform(RUN_A).new_app(RECIPE, DOMAIN, VERSION, kind="warm", run=None)
    later = env.platform(RUN_B)
    later.deploy(DOMAIN, chaos_ref=Ref(shas["pr"][:12]))
    deploy = env.calls()[-1]
    assert deploy["ABRA_DIR"] == str(env.root / "runs" / RUN_B)
    assert deploy["recipe_head"] == shas["pr"]
    first = env.root / "runs" / RUN_A / "recipes" / RECIPE
    assert git("-C", str(first), "rev-parse", "HEAD") == shas["tag"]  # untouched


def test_chaos_deploy_fetches_a_commit_the_checkout_lacks(
    env: Env, shas: dict[str, str]
) -> None:
    """A PR head pushed to the mirror after `app new` is fetched into the checkout."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, VERSION, kind="cold", run=RUN)
    mirror = env.recipes / RECIPE
    git("-C", str(mirror), "switch", "--quiet", "-c", "pr/13")
    (mirror / "README.md").write_text("late\n")
    git("-C", str(mirror), "add", "README.md")
    git("-C", str(mirror), "commit", "--quiet", "-m", "three")
    late = git("-C", str(mirror), "rev-parse", "HEAD")
    platform.deploy(DOMAIN, chaos_ref=Ref("pr/13"))
    assert env.calls()[-1]["recipe_head"] == late


def test_chaos_deploy_of_an_unknown_ref_runs_no_abra(env: Env, shas: dict[str, str]) -> None:
    """A ref the recipe does not have is AppNotFound and abra never deploys."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    with pytest.raises(AppNotFound):
        platform.deploy(DOMAIN, chaos_ref=Ref("no-such-branch"))
    assert len(env.calls()) == 1


# --------------------------------------------------------------------------- undeploy/remove


def test_undeploy_argv_then_waits(env: Env) -> None:
    """undeploy runs `abra app undeploy <domain> --no-input`, then waits for the stack to go."""
    env.state.deployed_domains.add(DOMAIN)
    report = env.platform().undeploy(DOMAIN)
    assert env.argvs() == [[FAKE, "app", "undeploy", DOMAIN, "--no-input"]]
    assert env.state.calls == [("stop_orphan_containers", DOMAIN), ("wait_undeployed", DOMAIN)]
    assert report.graceful and not report.watched  # no engine events here


def test_undeploy_of_an_undeployed_app_runs_no_abra(env: Env) -> None:
    """Nothing deployed: abra is not called (it would fail), the wait returns at once."""
    env.platform().undeploy(DOMAIN)
    assert env.calls() == []
    assert env.state.calls == [("stop_orphan_containers", DOMAIN), ("wait_undeployed", DOMAIN)]


def test_non_graceful_undeploy_kills_the_containers(env: Env) -> None:
    """undeploy(graceful=False) runs the same abra command, then kills the stack's containers
    (services gone) before it waits for them to be gone."""
    env.state.deployed_domains.add(DOMAIN)
    env.platform().undeploy(DOMAIN, graceful=False)
    assert env.argvs() == [[FAKE, "app", "undeploy", DOMAIN, "--no-input"]]
    assert env.state.calls == [("kill_containers", DOMAIN), ("wait_undeployed", DOMAIN)]


def test_remove_undeploys_then_deletes_volumes_secrets_and_env_file(env: Env) -> None:
    """remove = abra undeploy, kill the containers (no graceful stop), wait, remove volumes and
    secrets, delete the env file."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    env.state.deployed_domains.add(DOMAIN)
    platform.remove(DOMAIN)
    assert env.argvs()[1:] == [[FAKE, "app", "undeploy", DOMAIN, "--no-input"]]
    assert env.state.calls == [("kill_containers", DOMAIN), ("wait_undeployed", DOMAIN),
                               ("remove_volumes", DOMAIN), ("remove_secrets", DOMAIN)]
    assert not env.env_file().exists()


# --------------------------------------------------------------------------- validation


BAD_REFS = ["--upload-pack=x", "$(id)", "a..b", "-rf", "main;id", "ref with space"]
BAD_RECIPES = ["../x", "-rf", "a/b", "$(id)", "Recipe", ""]


@pytest.mark.parametrize("ref", BAD_REFS)
def test_bad_chaos_refs_are_rejected_before_any_process(env: Env, ref: str) -> None:
    """An option- or shell-like ref is InvalidInput and no process starts."""
    with pytest.raises(InvalidInput):
        env.platform().deploy(DOMAIN, chaos_ref=Ref(ref))
    assert not env.log.exists()


@pytest.mark.parametrize("version", ["--force", "$(id)", "1.0", "latest"])
def test_bad_versions_are_rejected_before_any_process(env: Env, version: str) -> None:
    """A version that is no Co-op Cloud version is InvalidInput for new_app and deploy."""
    with pytest.raises(InvalidInput):
        env.platform().new_app(RECIPE, DOMAIN, version, kind="cold", run=RUN)
    with pytest.raises(InvalidInput):
        env.platform().deploy(DOMAIN, version)
    assert not env.log.exists()


@pytest.mark.parametrize("recipe", BAD_RECIPES)
def test_bad_recipes_are_rejected_before_any_process(env: Env, recipe: str) -> None:
    """A recipe such as ../x or -rf is InvalidInput; nothing runs and nothing is created."""
    with pytest.raises(InvalidInput):
        env.platform().new_app(Recipe(recipe), DOMAIN, kind="cold", run=RUN)
    assert not env.log.exists()
    assert not env.root.exists()


def test_a_bad_recipe_in_the_env_file_is_rejected_before_any_process(env: Env) -> None:
    """An env file naming ../x as recipe stops a chaos deploy before git or abra run."""
    env.env_file().parent.mkdir(parents=True)
    env.env_file().write_text("TYPE=../x\nCCCI_KIND=cold\n")
    with pytest.raises(InvalidInput):
        env.platform().deploy(DOMAIN, chaos_ref=Ref("main"))
    assert not env.log.exists()


@pytest.mark.parametrize("domain", ["-rf.ci.localhost", "../x", "a b.ci", "$(id).ci.localhost",
                                    "localhost", "CAPS.ci.localhost"])
def test_bad_domains_are_rejected_before_any_process(env: Env, domain: str) -> None:
    """Every operation takes a parsed domain: a bad one is refused before any process."""
    platform = env.platform()
    for call in (lambda: platform.new_app(RECIPE, Domain(domain), kind="cold", run=RUN),
                 lambda: platform.deploy(Domain(domain)),
                 lambda: platform.undeploy(Domain(domain)),
                 lambda: platform.remove(Domain(domain)),
                 lambda: platform.base_url(Domain(domain))):
        with pytest.raises(InvalidInput):
            call()
    assert not env.log.exists()
    assert env.state.calls == []


def test_bad_kind_and_run_are_rejected(env: Env) -> None:
    """kind must be cold/warm/infra and run 6 hex digits."""
    with pytest.raises(InvalidInput):
        env.platform().new_app(RECIPE, DOMAIN, kind="hot", run=RUN)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        env.platform().new_app(RECIPE, DOMAIN, kind="cold", run=RunHex("../x"))
    assert not env.log.exists()


def test_version_and_chaos_ref_together_are_rejected(env: Env) -> None:
    """deploy takes a version or a chaos ref, not both."""
    with pytest.raises(InvalidInput, match="not both"):
        env.platform().deploy(DOMAIN, VERSION, chaos_ref=Ref("main"))
    assert not env.log.exists()


# --------------------------------------------------------------------------- failures


def test_non_zero_exit_is_command_failed_without_env_secrets(env: Env) -> None:
    """A failing abra is CommandFailed with argv, exit code and stderr, never env values."""
    platform = env.platform(FAKE_ABRA_EXIT="3", FAKE_ABRA_STDERR="FATA no such server",
                            TOKEN=SECRET)
    with pytest.raises(CommandFailed) as caught:
        platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    exc = caught.value
    argv = [FAKE, "app", "new", RECIPE, "--server", "default", "--domain", DOMAIN, "--secrets",
            "--no-input"]
    assert exc.argv == argv
    assert exc.returncode == 3
    assert " ".join(argv) in str(exc)
    assert "FATA no such server" in str(exc)
    assert SECRET not in str(exc) and SECRET not in repr(exc.args)
    assert str(env.log) not in str(exc)


def test_subprocess_env_is_exactly_the_minimal_set() -> None:
    """The environment built for abra/git holds ABRA_DIR, PATH, HOME, the git switch,
    DOCKER_HOST from the settings, the worker's DOCKER_CONTEXT and SSH_AUTH_SOCK, extras."""
    parent = {"PATH": "/bin", "HOME": "/home/ci", "CCCI_BROKER_URL": SECRET, "AWS_KEY": SECRET,
              "DOCKER_HOST": "unix:///elsewhere.sock", "DOCKER_CONTEXT": "srv",
              "SSH_AUTH_SOCK": "/run/agent.sock"}
    env = subprocess_env(Path("/x/abra"), {"ABRA_DIR": "/evil", "DOCKER_HOST": "tcp://evil",
                                           "EXTRA": "1"},
                         parent=parent, docker_host="ssh://ci@swarm.example.org")
    assert env == {"ABRA_DIR": "/x/abra", "PATH": "/bin", "HOME": "/home/ci",
                   "GIT_TERMINAL_PROMPT": "0", "DOCKER_HOST": "ssh://ci@swarm.example.org",
                   "DOCKER_CONTEXT": "srv", "SSH_AUTH_SOCK": "/run/agent.sock", "EXTRA": "1"}
    bare = subprocess_env(Path("/x/abra"), parent={"PATH": "/bin", "HOME": "/h",
                                                   "SSH_AUTH_SOCK": ""})
    assert bare == {"ABRA_DIR": "/x/abra", "PATH": "/bin", "HOME": "/h",
                    "GIT_TERMINAL_PROMPT": "0"}


def test_abra_talks_to_the_engine_the_system_watches(env: Env,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """abra gets DOCKER_HOST = CCCI_DOCKER_HOST (not the worker's DOCKER_HOST), and the
    worker's DOCKER_CONTEXT and SSH_AUTH_SOCK, for every command it runs."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///not/this.sock")
    monkeypatch.setenv("DOCKER_CONTEXT", "coop-server")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/user/1000/agent.sock")
    settings = env.settings.model_copy(update={"docker_host": "ssh://ci@swarm.example.org"})
    platform = AbraPlatform(settings, run_id=RUN_A, docker_state=env.state,  # type: ignore[arg-type]
                            extra_env=env.extra)
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    platform.deploy(DOMAIN, VERSION)
    env.state.deployed_domains.add(DOMAIN)
    platform.undeploy(DOMAIN)
    calls = env.calls()
    assert [c["argv"][1:3] for c in calls] == [["app", "new"], ["app", "deploy"],
                                               ["app", "undeploy"]]
    for call in calls:
        assert call["env"]["DOCKER_HOST"] == "ssh://ci@swarm.example.org"
        assert call["env"]["DOCKER_CONTEXT"] == "coop-server"
        assert call["env"]["SSH_AUTH_SOCK"] == "/run/user/1000/agent.sock"


def test_stdout_never_reaches_the_error(tmp_path: Path) -> None:
    """abra prints generated secrets on stdout; a failure carries stderr only."""
    argv = [sys.executable, "-c", "import os, sys; print(os.environ['X']); sys.exit(2)"]
    with pytest.raises(CommandFailed) as caught:
        run_command(argv, env=subprocess_env(tmp_path, {"X": SECRET}), timeout_s=30)
    assert SECRET not in str(caught.value) and caught.value.returncode == 2


def test_timeout_is_wait_timeout(tmp_path: Path) -> None:
    """A command that outlives its timeout is killed and becomes WaitTimeout."""
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(WaitTimeout, match="to finish"):
        run_command(argv, env=subprocess_env(tmp_path), timeout_s=0.5)


def test_missing_binary_is_platform_error(env: Env) -> None:
    """An abra that cannot be started is a PlatformError naming CCCI_ABRA_BIN."""
    settings = env.settings.model_copy(update={"abra_bin": str(env.tmp / "no-abra")})
    platform = AbraPlatform(settings, run_id=RUN_A, docker_state=env.state)  # type: ignore[arg-type]
    with pytest.raises(PlatformError, match="CCCI_ABRA_BIN"):
        platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)


def test_abra_is_found_on_path(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """With abra_bin 'abra' the fake first on PATH is the one that runs."""
    monkeypatch.setenv("PATH", f"{FAKE_DIR}:{os.environ['PATH']}")
    settings = env.settings.model_copy(update={"abra_bin": "abra"})
    platform = AbraPlatform(settings, run_id=RUN_A, docker_state=env.state,  # type: ignore[arg-type]
                            extra_env=env.extra)
    env.state.deployed_domains.add(DOMAIN)
    platform.undeploy(DOMAIN)
    (argv,) = env.argvs()
    assert argv[0] == FAKE  # the shebang script as PATH resolved it
    assert argv[1:] == ["app", "undeploy", DOMAIN, "--no-input"]


# --------------------------------------------------------------------------- state, plans


def test_live_apps_come_from_env_files_and_labels(env: Env) -> None:
    """live_apps lists apps with a CCCI_KIND env file plus ccci-labelled ones; others not."""
    platform = env.platform()
    platform.new_app(RECIPE, DOMAIN, kind="cold", run=RUN)
    (env.root / "servers" / "default" / "other.example.org.env").write_text("TYPE=x\n")
    labelled = AppInfo(Domain("warm-keycloak.ci.localhost"), "warm-keycloak_ci_localhost",
                       "keycloak", "warm", None, deployed=True)
    env.state.labelled.append(labelled)
    env.state.deployed_domains.add(DOMAIN)
    assert platform.live_apps() == [
        AppInfo(DOMAIN, "cust-1a2b3c_ci_localhost", RECIPE, "cold", RUN, deployed=True),
        labelled,
    ]


def test_base_url_is_https_on_the_domain(env: Env) -> None:
    """Probes go to https://<domain> through Traefik."""
    assert env.platform().base_url(DOMAIN) == f"https://{DOMAIN}"


def test_argv_builders_are_pure() -> None:
    """The plan functions return exact argument lists."""
    assert new_app_argv("abra", Recipe("r"), Domain("d.ci.localhost"), "srv", "1.0.0+1") == [
        "abra", "app", "new", "r", "1.0.0+1", "--server", "srv", "--domain", "d.ci.localhost",
        "--secrets", "--no-input"]
    assert deploy_argv("abra", Domain("d.ci.localhost"), chaos=True) == [
        "abra", "app", "deploy", "d.ci.localhost", "--chaos", "--no-input",
        "--no-domain-checks", "--no-converge-checks"]
    assert undeploy_argv("abra", Domain("d.ci.localhost")) == [
        "abra", "app", "undeploy", "d.ci.localhost", "--no-input"]
    with pytest.raises(InvalidInput):
        deploy_argv("abra", Domain("d.ci.localhost"), "1.0.0+1", chaos=True)


def test_chaos_checkout_plan_steps() -> None:
    """Clone only without a checkout, fetch only a missing commit, always switch detached."""
    sha = "a" * 40
    src, co = Path("/m/r"), Path("/a/recipes/r")
    switch = ["git", "-C", str(co), "switch", "--quiet", "--detach", "--end-of-options", sha]
    assert chaos_checkout_plan(src, co, sha, have_checkout=True, have_commit=True) == [switch]
    assert chaos_checkout_plan(src, co, sha, have_checkout=True, have_commit=False) == [
        ["git", "-C", str(co), "fetch", "--quiet", "--no-tags", "--", str(src), sha], switch]
    assert chaos_checkout_plan(src, co, sha, have_checkout=False, have_commit=False) == [
        ["git", "clone", "--quiet", "--no-checkout", "--", str(src), str(co)], switch]
    with pytest.raises(InvalidInput):
        chaos_checkout_plan(src, co, "--upload-pack=x", have_checkout=True, have_commit=True)


def test_env_file_helpers() -> None:
    """Env files are parsed, ccci keys replaced in place or appended, the recipe found."""
    text = "# c\nTYPE=keycloak:1.0.0+1\nCCCI_KIND=warm\nDOMAIN='x.example.org'\n"
    values = parse_env(text)
    assert values == {"TYPE": "keycloak:1.0.0+1", "CCCI_KIND": "warm", "DOMAIN": "x.example.org"}
    assert env_file_recipe(values) == "keycloak"
    updated = set_keys(text, {"CCCI_KIND": "cold", "CCCI_RUN": RUN})
    assert updated == ("# c\nTYPE=keycloak:1.0.0+1\nCCCI_KIND=cold\nDOMAIN='x.example.org'\n"
                       f"CCCI_RUN={RUN}\n")


@pytest.mark.docker
def test_deployed_and_volumes_read_the_real_engine(env: Env, swarm: DockerClient) -> None:
    """With a real engine, an app never deployed has no services and no volumes."""
    from ccci_tasks.platform.docker_state import DockerState

    platform = AbraPlatform(env.settings, run_id=RUN_A, docker_state=DockerState(swarm))
    domain = Domain("abra-9f8e7d.ci.localhost")
    state = platform.deployed(domain)
    assert state.stack == "abra-9f8e7d_ci_localhost" and not state.is_deployed
    assert platform.volumes(domain) == []
