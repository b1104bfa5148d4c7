"""What a PostgreSQL recipe itself costs, measured with plain Docker, not with ccci.

The recipe is deployed as its users would without ccci: ``docker stack deploy`` of its compose
files (interpolated by Docker from its env and the versions of its ``abra.sh``), its secret
created with ``docker secret create``, on a volume that already holds its cluster (a warm
boot; each round starts from the same copy). Per round:

* ``stack_boot_s``: ``docker stack deploy`` until the app's port accepts a connection and
  every service runs its task (a service with a healthcheck runs once the check passed): the
  database's start and the app's, including an app's wait for its database and its restarts
  (the recipe's own settings);
* ``app_stop_s``: ``docker stop`` of the app's container (its stop signal and grace);
* ``migrate_boot_s``: the PR head's app started with ``docker run`` (its configs and secret
  as bind mounts, the same environment) against the running database until its port
  accepts: its boot with the new migration;
* ``db_stop_s``: ``docker stop`` of the database (SIGINT, PostgreSQL's fast shutdown).

A quick run's share of the app's costs is then: a warm boot of the stack (the reattach), a stop
of the app and the PR head's boot with its migration (the in-place upgrade); its last stop is
a kill (the data is restored next) and costs the app nothing.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.system import free_port, wait_port

REPEAT = 5
WAIT_S = 180
APP = "app"


def _docker(*args: str, input_text: str | None = None) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True,
                          timeout=WAIT_S, input=input_text).stdout.strip()


def _export(repo: Path, ref: str, dest: Path) -> Path:
    from ccci_tasks.naming import Recipe
    from ccci_tasks.platform.recipes import RecipeRepo

    return RecipeRepo(repo, Recipe(repo.name)).checkout(ref, dest)


def _env(tree: Path, stack: str, ports: dict[str, str]) -> dict[str, str]:
    from ccci_tasks.platform.recipe_env import read_abra_sh, read_recipe_env

    env = read_recipe_env((tree / ".env.sample").read_text(), ".env.sample").values
    versions = read_abra_sh((tree / "abra.sh").read_text(), "abra.sh")
    return {**env, **versions, **ports, "STACK_NAME": stack, "DOMAIN": f"{stack}.localhost"}


def _compose_files(env: dict[str, str]) -> list[str]:
    return [n for n in env.get("COMPOSE_FILE", "compose.yml").split(":") if n]


def _containers(stack: str, service: str) -> list[str]:
    label = f"com.docker.swarm.service.name={stack}_{service}"
    return _docker("ps", "-q", "--filter", f"label={label}").split()


def _gone(stack: str) -> None:
    deadline = time.monotonic() + WAIT_S
    label = f"com.docker.stack.namespace={stack}"
    while _docker("ps", "-aq", "--filter", f"label={label}") and time.monotonic() < deadline:
        time.sleep(0.05)


def _running(stack: str) -> bool:
    """Every service of the stack runs its desired tasks (swarm's own count)."""
    import docker

    client = docker.from_env()
    try:
        services = client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"},
                                       status=True)
    finally:
        client.close()
    return bool(services) and all(
        (s.get("ServiceStatus") or {}).get("RunningTasks")
        == (s.get("ServiceStatus") or {}).get("DesiredTasks") for s in services)


def _boot(tree: Path, stack: str, env: dict[str, str], port: int) -> float:
    """``docker stack deploy`` until the app's port accepts and every service runs."""
    started = time.monotonic()
    _deploy(tree, stack, env)
    if not wait_port(port, WAIT_S):
        raise SystemExit(f"bench: {stack} did not come up (plain stack deploy)")
    while not _running(stack):
        if time.monotonic() - started > WAIT_S:
            raise SystemExit(f"bench: the services of {stack} did not all run")
        time.sleep(0.01)
    return time.monotonic() - started


def _deploy(tree: Path, stack: str, env: dict[str, str]) -> None:
    argv = ["docker", "stack", "deploy", "--resolve-image", "never"]
    for name in _compose_files(env):
        argv += ["-c", name]
    subprocess.run([*argv, stack], check=True, capture_output=True, text=True, cwd=tree,
                   env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                        **env}, timeout=WAIT_S)


def _app_service(tree: Path, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The app service merged over the compose files (environment lists joined), and the
    top-level configs."""
    service: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    for compose_name in _compose_files(env):
        data = yaml.safe_load((tree / compose_name).read_text()) or {}
        for key, value in ((data.get("services") or {}).get(APP) or {}).items():
            if key == "environment":
                service.setdefault("environment", []).extend(value)
            else:
                service[key] = value
        configs.update(data.get("configs") or {})
    return service, configs


def _app_run_argv(tree: Path, env: dict[str, str], password: Path, name: str,
                  port: str) -> list[str]:
    """``docker run`` of the tree's app service: its configs and secrets as bind mounts."""
    from ccci_tasks.platform.envfile import interpolate

    service, configs = _app_service(tree, env)
    argv = ["run", "-d", "--name", name, "--network", "host", "--user",
            str(service.get("user", "0"))]
    for item in service.get("environment") or []:
        key, _, value = str(item).partition("=")
        value = port if key == "CCCI_HTTP_PORT" else interpolate(value, env)
        argv += ["--env", f"{key}={value}"]
    for config in service.get("configs") or []:
        source = (tree / configs[config["source"]]["file"]).resolve()
        argv += ["--volume", f"{source}:{config['target']}:ro"]
    for secret in service.get("secrets") or []:
        argv += ["--volume", f"{password}:/run/secrets/{secret}:ro"]
    entrypoint = service["entrypoint"]
    return [*argv, "--entrypoint", entrypoint[0], service["image"], *entrypoint[1:]]


def measure(recipes_dir: Path, recipe: str, base: str, pr_sha: str) -> dict[str, Any]:
    """The recipe's own costs (see the module docstring), best and median of ``REPEAT``."""
    from ccci_tasks.naming import Recipe
    from ccci_tasks.platform.recipes import RecipeRepo

    repo = recipes_dir / recipe
    latest = RecipeRepo(repo, Recipe(recipe)).latest()
    assert latest is not None
    stack = f"pgcost{os.urandom(3).hex()}"
    labels = ["--label", "ccci.kind=cold", "--label", f"ccci.domain=appcost.{base}"]
    figures: dict[str, list[float]] = {"stack_boot_s": [], "app_stop_s": [],
                                       "migrate_boot_s": [], "db_stop_s": []}
    with tempfile.TemporaryDirectory(prefix="ccci-pgcost-") as tmp:
        ports = {"CCCI_HTTP_PORT": str(free_port()), "CCCI_DB_PORT": str(free_port())}
        known = _export(repo, latest, Path(tmp) / "known")
        head = _export(repo, pr_sha, Path(tmp) / "head")
        env, head_env = _env(known, stack, ports), _env(head, stack, ports)
        secret = f"{stack}_db_password_{env['SECRET_DB_PASSWORD_VERSION']}"
        password = Path(tmp) / "password"
        password.write_text(os.urandom(16).hex())
        password.chmod(0o644)
        volume, gold = f"{stack}_postgres", f"{stack}-gold"
        try:
            _docker("secret", "create", *labels, secret, str(password))
            for name in (volume, gold):
                _docker("volume", "create", *labels, name)
            _boot(known, stack, env, int(ports["CCCI_HTTP_PORT"]))  # the first: initdb
            _docker("stack", "rm", stack)
            _gone(stack)
            image = str(_app_service(known, env)[0]["image"])
            _docker("run", "--rm", "--network", "none", "-v", f"{volume}:/from", "-v",
                    f"{gold}:/to", image, "cp", "-a", "/from/.", "/to/")
            for _ in range(REPEAT):
                _docker("run", "--rm", "--network", "none", "-v", f"{gold}:/from", "-v",
                        f"{volume}:/to", image, "sh", "-c",
                        "rm -rf /to/* /to/.[!.]* && cp -a /from/. /to/")
                figures["stack_boot_s"].append(
                    _boot(known, stack, env, int(ports["CCCI_HTTP_PORT"])))
                [app] = _containers(stack, APP)
                started = time.monotonic()
                _docker("stop", "-t", "5", app)
                figures["app_stop_s"].append(time.monotonic() - started)
                upgraded, port = f"{stack}-head", str(free_port())
                started = time.monotonic()
                _docker(*_app_run_argv(head, head_env, password, upgraded, port))
                if not wait_port(int(port), WAIT_S):
                    logs = _docker("logs", upgraded)
                    raise SystemExit(f"bench: the PR head's app did not come up: {logs}")
                figures["migrate_boot_s"].append(time.monotonic() - started)
                _docker("rm", "-f", upgraded)
                [db] = _containers(stack, "db")
                started = time.monotonic()
                _docker("stop", "-t", "10", db)
                figures["db_stop_s"].append(time.monotonic() - started)
                _docker("stack", "rm", stack)
                _gone(stack)
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                _docker("rm", "-f", f"{stack}-head")
            with contextlib.suppress(subprocess.CalledProcessError):
                _docker("stack", "rm", stack)
            _gone(stack)
            for args in (("secret", "rm", secret), ("volume", "rm", "-f", volume),
                         ("volume", "rm", "-f", gold)):
                with contextlib.suppress(subprocess.CalledProcessError):
                    _docker(*args)
    return {
        "recipe": recipe, "pr": pr_sha,
        **{key: {"best": min(v), "median": statistics.median(v), "all": v}
           for key, v in figures.items() if v},
    }
