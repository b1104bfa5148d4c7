"""SwarmPlatform on the real swarm: deploy, chaos deploy, undeploy/remove, fail-fast deploys."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from conftest import TEST_BASE

from ccci_tasks import constants
from ccci_tasks.config import Settings
from ccci_tasks.errors import AppNotFound, DeployFailed
from ccci_tasks.naming import Domain, Recipe, Ref, RunHex, cold_domain, new_run_hex, stack_name
from ccci_tasks.platform.engine import parse_timestamp
from ccci_tasks.platform.envfile import parse_env, set_keys
from ccci_tasks.platform.recipes import RecipeRepo
from ccci_tasks.platform.swarm import (
    SwarmPlatform,
    declared_version,
    interpolate,
    render_compose,
)
from ccci_tasks.probes import reconverged, serving, version_moved

if TYPE_CHECKING:
    from docker import DockerClient

docker = pytest.mark.docker

RECIPE = Recipe("custom-html")
BASE = Domain(TEST_BASE)
CONVERGE_S = 60.0
# A failing deploy is named as soon as the engine shows it (a few seconds when idle), not when
# a deploy timeout runs out: the tests give a long timeout and bound the wait at about ten
# times the idle figure.
FAIL_FAST_TIMEOUT_S = 600.0
FAIL_FAST_BOUND_S = 80.0  # the slowest of them, a fresh crash loop, takes about 7.5 s


@pytest.fixture
def platform(settings: Settings, clean_swarm: DockerClient) -> SwarmPlatform:
    """A SwarmPlatform on the session swarm and the test state root."""
    return SwarmPlatform(settings, client=clean_swarm)


@pytest.fixture
def domain(platform: SwarmPlatform) -> Iterator[Domain]:
    """A fresh cold domain for this test, removed afterwards."""
    name = cold_domain(RECIPE, new_run_hex(), BASE)
    yield name
    platform.remove(name)


def git(repo: Path, *args: str, input_text: str | None = None, **env: str) -> str:
    """Run git in ``repo`` and return its stripped stdout."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], input=input_text, capture_output=True, text=True,
        check=True, timeout=30, env={**os.environ, **env},
    ).stdout.strip()


def commit_on(repo: Path, base: str, path: str, edit: Callable[[str], str], msg: str) -> Ref:
    """A detached commit on ``base`` with ``path`` edited; no branch or tag moves."""
    base = git(repo, "rev-parse", "--verify", f"{base}^{{commit}}")
    index = repo / ".git" / f"ccci-test-index-{os.getpid()}-{time.monotonic_ns()}"
    try:
        git(repo, "read-tree", base, GIT_INDEX_FILE=str(index))
        text = edit(git(repo, "show", f"{base}:{path}") + "\n")
        blob = git(repo, "hash-object", "-w", "--stdin", input_text=text)
        git(repo, "update-index", "--cacheinfo", f"100644,{blob},{path}",
            GIT_INDEX_FILE=str(index))
        tree = git(repo, "write-tree", GIT_INDEX_FILE=str(index))
    finally:
        index.unlink(missing_ok=True)
    ident = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@ccci.invalid",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@ccci.invalid"}
    return Ref(git(repo, "commit-tree", tree, "-p", base, "-m", msg, **ident))


def replace_once(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} not found exactly once"
        return text.replace(old, new)
    return edit


def page(platform: SwarmPlatform, domain: Domain, path: str = "/") -> str:
    response = httpx.get(platform.base_url(domain) + path, headers={"Host": domain},
                         timeout=5, trust_env=False)
    response.raise_for_status()
    return response.text


def wait_page(platform: SwarmPlatform, domain: Domain, expect: str, timeout_s: float = 30) -> str:
    """The page once it contains ``expect`` (the old task may answer for a moment)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = page(platform, domain)
            if expect in text:
                return text
        except httpx.HTTPError as exc:
            text = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{domain} never showed {expect!r}; last: {text[:300]}")


def mine(platform: SwarmPlatform, domain: Domain) -> list[Any]:
    """live_apps() restricted to ``domain`` (other ccci systems may share the engine)."""
    return [a for a in platform.live_apps() if a.domain == domain]


def deploy_and_serve(platform: SwarmPlatform, domain: Domain, version: str | None = None,
                     chaos_ref: Ref | None = None) -> Any:
    platform.deploy(domain, version, chaos_ref=chaos_ref)
    state = platform.wait_converged(domain, CONVERGE_S)
    serving(platform.base_url(domain), domain, [200], 30)
    return state


# --------------------------------------------------------------------------- pure


def test_parse_env_and_render_env_round_trip() -> None:
    """Env files parse KEY=VALUE (quotes, export, comments) and keep the sample's other lines."""
    sample = "# comment\nTYPE=x\nexport DOMAIN='a.example.org'\n#GREETING=hi\nINIT_DELAY=\"3\"\n"
    assert parse_env(sample) == {"TYPE": "x", "DOMAIN": "a.example.org", "INIT_DELAY": "3"}
    text = set_keys(sample, {"DOMAIN": "b.ci.localhost", "CCCI_HTTP_PORT": "20001"})
    assert "# comment" in text and "#GREETING=hi" in text
    assert parse_env(text) == {"TYPE": "x", "DOMAIN": "b.ci.localhost", "INIT_DELAY": "3",
                               "CCCI_HTTP_PORT": "20001"}


def test_interpolate_compose_forms() -> None:
    """${VAR}, $VAR, ${VAR:-d}, ${VAR-d} and $$ interpolate like compose."""
    env = {"A": "1", "E": ""}
    assert interpolate("$A ${A} ${B:-d} ${E:-d} ${E-d} ${B-x} $$A", env) == "1 1 d d  x $A"


def test_render_compose_labels() -> None:
    """Every service and non-external volume gets ccci labels; app gets the version labels."""
    compose: dict[str, Any] = {
        "version": "3.8",
        "services": {
            "app": {"deploy": {"labels": ["coop-cloud.${STACK_NAME}.version=1.0.0+1.0",
                                          "keep=me"]}},
            "db": {"deploy": {"labels": {"x": "y"}}},
        },
        "volumes": {"data": None, "ext": {"external": True}},
    }
    env = {"STACK_NAME": "s_ci_localhost"}
    assert declared_version(compose, "s_ci_localhost", env) == "1.0.0+1.0"
    out = render_compose(compose, stack="s_ci_localhost", env=env,
                         ccci_labels={"ccci.kind": "cold"},
                         app_labels={"coop-cloud.s_ci_localhost.version": "2.0.0+2.0"})
    assert out["services"]["app"]["deploy"]["labels"] == [
        "keep=me", "ccci.kind=cold", "coop-cloud.s_ci_localhost.version=2.0.0+2.0"]
    assert out["services"]["db"]["deploy"]["labels"] == ["x=y", "ccci.kind=cold"]
    assert out["services"]["db"]["labels"] == ["ccci.kind=cold"]
    assert out["volumes"]["data"] == {"labels": ["ccci.kind=cold"]}
    assert out["volumes"]["ext"] == {"external": True}
    assert compose["volumes"]["data"] is None  # input untouched


def test_parse_timestamp_orders_trimmed_fractions() -> None:
    """Docker's trimmed nanosecond fractions compare numerically, not as text."""
    short, longer = "2026-01-01T00:00:52.4273Z", "2026-01-01T00:00:52.42733Z"
    assert short > longer  # as text: wrong
    assert parse_timestamp(short) < parse_timestamp(longer)
    assert parse_timestamp("2026-01-01T00:00:00Z") == 1_767_225_600 * 10**9
    assert parse_timestamp("0001-01-01T00:00:00Z") == 0
    assert parse_timestamp(None) == 0


# --------------------------------------------------------------------------- docker


@docker
def test_new_app_env_file_and_port_kept(platform: SwarmPlatform, domain: Domain) -> None:
    """new_app writes the env file from .env.sample plus ccci keys and keeps its port."""
    run = RunHex(domain.split(".")[0].rsplit("-", 1)[1])
    info = platform.new_app(RECIPE, domain, "1.0.0+1.0", kind="cold", run=run)
    assert (info.domain, info.recipe, info.kind, info.run, info.deployed) == (
        domain, RECIPE, "cold", run, False)
    env = parse_env(platform.env_path(domain).read_text())
    assert env["RECIPE"] == RECIPE and env["DOMAIN"] == domain
    assert env["STACK_NAME"] == stack_name(domain)
    assert env["INIT_DELAY"] == "3"  # from .env.sample
    assert env["CCCI_KIND"] == "cold" and env["CCCI_RUN"] == run
    port = env["CCCI_HTTP_PORT"]
    platform.new_app(RECIPE, domain, kind="cold", run=run)
    assert parse_env(platform.env_path(domain).read_text())["CCCI_HTTP_PORT"] == port
    assert platform.base_url(domain) == f"http://127.0.0.1:{port}"
    assert [a.domain for a in mine(platform, domain)] == [domain]
    other = cold_domain(RECIPE, new_run_hex(), BASE)
    platform.new_app(RECIPE, other, kind="cold", run=None)
    assert platform.base_url(other) != platform.base_url(domain)


@docker
def test_unknown_version_is_app_not_found(platform: SwarmPlatform, domain: Domain) -> None:
    """Deploying an unknown version names it and lists the available ones."""
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    listed = r"1\.0\.0\+1\.0, 1\.1\.0\+1\.1, 2\.0\.0\+2\.0"
    with pytest.raises(AppNotFound, match=r"9\.9\.9\+9.*" + listed):
        platform.deploy(domain, "9.9.9+9")
    with pytest.raises(AppNotFound, match="no env file"):
        platform.deploy(cold_domain(RECIPE, new_run_hex(), BASE))


@docker
@pytest.mark.slow
def test_deploy_version_serves_it(platform: SwarmPlatform, domain: Domain) -> None:
    """Deploying 1.0.0+1.0 converges, serves its version and carries the labels."""
    platform.new_app(RECIPE, domain, "1.0.0+1.0", kind="cold", run=None)
    state = deploy_and_serve(platform, domain, "1.0.0+1.0")
    assert state.version == "1.0.0+1.0" and state.chaos_version is None
    assert reconverged(state)[0]
    assert "custom-html 1.0.0+1.0" in page(platform, domain)
    service = platform.client.services.get(f"{stack_name(domain)}_app")
    labels = service.attrs["Spec"]["Labels"]
    assert labels[constants.LABEL_KIND] == "cold"
    assert labels[constants.LABEL_DOMAIN] == domain
    assert labels[constants.LABEL_RECIPE] == RECIPE
    [volume] = platform.volumes(domain)
    assert volume.labels[constants.LABEL_DOMAIN] == domain
    assert [(a.domain, a.deployed) for a in mine(platform, domain)] == [(domain, True)]


@docker
@pytest.mark.slow
def test_chaos_deploy_moves_version(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """A chaos deploy of a commit changing GREETING moves the chaos-version to its short sha."""
    repo = example_recipes / RECIPE
    head = commit_on(repo, "2.0.0+2.0", "compose.yml",
                     replace_once("GREETING:-Hello from custom-html", "GREETING:-Hello from a PR"),
                     "change the greeting")
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    before = deploy_and_serve(platform, domain)  # latest
    assert before.version == "2.0.0+2.0"
    assert "Hello from custom-html" in page(platform, domain)

    platform.deploy(domain, chaos_ref=head)
    after = platform.wait_converged(domain, CONVERGE_S)
    short = RecipeRepo(repo, RECIPE).short_sha(head)
    moved, why = version_moved(before, after, short, None)
    assert moved, why
    assert after.chaos_version == short
    assert after.version == "2.0.0+2.0"  # the compose's declared version label
    assert "Hello from a PR" in wait_page(platform, domain, "Hello from a PR")
    assert not version_moved(after, after, "0000000", None)[0]
    assert git(repo, "rev-parse", "2.0.0+2.0^{commit}") != head  # no tag moved


@docker
def test_chaos_without_declared_version_uses_newest_reachable_tag(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """A chaos commit whose compose declares no version is labelled with its newest tag."""
    head = commit_on(example_recipes / RECIPE, "1.1.0+1.1", "compose.yml",
                     replace_once('        - "coop-cloud.${STACK_NAME}.version=1.1.0+1.1"\n', ""),
                     "drop the version label")
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    submitted = platform.deploy(domain, chaos_ref=head)
    assert submitted.version == "1.1.0+1.1"
    assert submitted.chaos_version == RecipeRepo(example_recipes / RECIPE, RECIPE).short_sha(head)


@docker
@pytest.mark.slow
def test_undeploy_keeps_volumes_remove_deletes_them(
    platform: SwarmPlatform, domain: Domain
) -> None:
    """undeploy keeps the data volume (a file written into it survives); remove deletes it."""
    platform.new_app(RECIPE, domain, "1.0.0+1.0", kind="warm", run=None)
    deploy_and_serve(platform, domain, "1.0.0+1.0")
    [volume] = platform.volumes(domain)
    kept = Path(volume.mountpoint, "www", "kept.txt")
    kept.write_text("written by the test\n")

    platform.undeploy(domain)
    assert not platform.deployed(domain).is_deployed
    assert [v.name for v in platform.volumes(domain)] == [volume.name]
    assert kept.read_text() == "written by the test\n"
    assert [(a.domain, a.kind, a.deployed) for a in mine(platform, domain)] == [
        (domain, "warm", False)]

    deploy_and_serve(platform, domain, "1.1.0+1.1")  # reattaches the kept volume
    assert page(platform, domain, "/kept.txt") == "written by the test\n"
    assert len(page(platform, domain, "/boots.txt").splitlines()) == 2

    platform.remove(domain)
    assert platform.volumes(domain) == []
    assert not platform.env_path(domain).exists()
    assert not platform.deploy_root(domain).exists()
    assert mine(platform, domain) == []


@docker
@pytest.mark.slow
def test_missing_image_fails_fast(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """A commit whose image tag does not exist fails with DeployFailed naming the image."""
    missing = "ccci/custom-html:0.0-missing"
    head = commit_on(example_recipes / RECIPE, "1.0.0+1.0", "compose.yml",
                     replace_once("image: ccci/custom-html:1.0", f"image: {missing}"),
                     "point at a missing image")
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    platform.deploy(domain, chaos_ref=head)
    started = time.monotonic()
    with pytest.raises(DeployFailed) as info:  # not WaitTimeout: the failure is seen
        platform.wait_converged(domain, FAIL_FAST_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(f"\na missing image failed the deploy after {elapsed:.1f} s")
    assert elapsed < FAIL_FAST_BOUND_S, f"took {elapsed:.1f} s"
    assert missing in str(info.value)
    assert "image tag" in str(info.value)


@docker
@pytest.mark.slow
def test_crash_loop_fails_fast(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """A head that crash-loops (FAIL_AFTER_WRITE=1) fails fast with the last task error."""
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    before = deploy_and_serve(platform, domain)
    head = commit_on(example_recipes / RECIPE, "2.0.0+2.0", "compose.yml",
                     replace_once("FAIL_AFTER_WRITE:-0", "FAIL_AFTER_WRITE:-1"), "break it")
    platform.deploy(domain, chaos_ref=head)
    started = time.monotonic()
    with pytest.raises(DeployFailed) as info:  # not WaitTimeout: the failure is seen
        platform.wait_converged(domain, FAIL_FAST_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(f"\na crash loop failed the deploy after {elapsed:.1f} s")
    assert elapsed < FAIL_FAST_BOUND_S, f"took {elapsed:.1f} s"
    message = str(info.value)
    assert "crash-looping" in message
    assert "non-zero exit (1)" in message
    [volume] = platform.volumes(domain)
    assert Path(volume.mountpoint, "www", "broken.txt").exists()
    after = platform.deployed(domain)
    assert not reconverged(after)[0]
    short = RecipeRepo(example_recipes / RECIPE, RECIPE).short_sha(head)
    assert version_moved(before, after, short, None)[0]  # moved, but broken


@docker
@pytest.mark.slow
def test_fresh_crash_loop_fails_fast(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """A first deploy whose task dies after its init delay is a crash loop, not converged."""
    head = commit_on(example_recipes / RECIPE, "2.0.0+2.0", "compose.yml",
                     replace_once("FAIL_AFTER_WRITE:-0", "FAIL_AFTER_WRITE:-1"), "break it")
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    platform.deploy(domain, chaos_ref=head)
    started = time.monotonic()
    with pytest.raises(DeployFailed, match=r"crash-looping.*FAIL_AFTER_WRITE=1"):
        platform.wait_converged(domain, FAIL_FAST_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(f"\na fresh crash loop failed the deploy after {elapsed:.1f} s")
    assert elapsed < FAIL_FAST_BOUND_S, f"took {elapsed:.1f} s"
