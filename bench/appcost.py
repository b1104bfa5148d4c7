"""What an app itself costs, measured with plain ``docker service`` commands, not with ccci.

For a recipe's latest version, on a volume that already holds its data (a warm boot):

* ``warm_boot_s``: ``docker service create`` until the app's port accepts a connection;
* ``stop_s``: ``docker stop -t <stop grace>`` of its container until it exited: the stop
  signal and, for an app that ignores it, the whole stop grace period;
* for reference, what swarm alone adds: ``swarm_rm_s``, ``docker service rm`` until the
  container is gone (swarm's agent removes it several seconds after the stop);
  ``swarm_update_s``, a stop-first update to another image with the stock settings until the
  update is ``completed`` and the port accepts (a 2 s load-balancer delay before the stop, a
  5 s update monitor after the start); ``kill_s``, ``docker rm -f`` of the container.

The app's share of a quick run is then: a warm boot (the reattach), a stop and a warm boot
(the in-place upgrade), and, while the lane still stops gracefully at its end, one more stop.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.system import free_port, wait_port

REPEAT = 3
WAIT_S = 120


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True,
                          timeout=WAIT_S).stdout.strip()


def _duration_s(text: str) -> str:
    return text if text.endswith(("s", "m", "h")) else f"{text}s"


def recipe_app(recipes_dir: Path, recipe: str) -> dict[str, Any]:
    """The ``app`` service of the recipe's latest version: image, environment, stop grace."""
    from ccci_tasks.naming import Recipe
    from ccci_tasks.platform.envfile import parse_env
    from ccci_tasks.platform.recipes import RecipeRepo
    from ccci_tasks.platform.swarm import interpolate

    repo = RecipeRepo(recipes_dir / recipe, Recipe(recipe))
    latest = repo.latest()
    assert latest is not None
    sample = parse_env(repo.file_at(latest, ".env.sample") or "")
    compose = yaml.safe_load(repo.file_at(latest, "compose.yml") or "")
    app = compose["services"]["app"]
    env = {}
    for item in app.get("environment") or []:
        key, _, value = str(item).partition("=")
        env[key] = interpolate(value, sample)
    return {"version": latest, "image": app["image"], "env": env,
            "grace": _duration_s(str(app.get("stop_grace_period", "10s")))}


def _service_argv(name: str, app: dict[str, Any], volume: str, port: int,
                  labels: dict[str, str]) -> list[str]:
    argv = ["service", "create", "--detach", "--quiet", "--name", name, "--network", "host",
            "--restart-condition", "none", "--stop-grace-period", app["grace"],
            "--mount", f"type=volume,source={volume},target=/data"]
    for key, value in {**app["env"], "CCCI_HTTP_PORT": str(port)}.items():
        argv += ["--env", f"{key}={value}"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}", "--container-label", f"{key}={value}"]
    return [*argv, app["image"]]


def _containers(name: str) -> list[str]:
    out = _docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={name}")
    return out.split()


def _gone(name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while _containers(name) and time.monotonic() < deadline:
        time.sleep(0.01)


def _seconds(duration: str) -> int:
    """Whole seconds of a compose duration such as ``10s`` or ``1m``."""
    unit = {"s": 1, "m": 60, "h": 3600}[duration[-1]]
    return max(1, round(float(duration[:-1]) * unit))


def _remove(name: str) -> None:
    _docker("service", "rm", name)
    _gone(name)


def _up(name: str, app: dict[str, Any], volume: str, port: int,
        labels: dict[str, str]) -> float:
    started = time.monotonic()
    _docker(*_service_argv(name, app, volume, port, labels))
    if not wait_port(port, WAIT_S):
        raise SystemExit(f"bench: {app['image']} did not listen on {port}")
    return time.monotonic() - started


def measure(recipes_dir: Path, recipe: str, base: str) -> dict[str, Any]:
    """The app's own costs (see the module docstring), best and median of ``REPEAT``."""
    app = recipe_app(recipes_dir, recipe)
    labels = {"ccci.kind": "cold", "ccci.domain": f"appcost.{base}"}
    volume = f"appcost-{recipe}-{base.split('.')[0]}"
    _docker("volume", "create", *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")),
            volume)
    mount = Path(_docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume))
    (mount / ".initialised").write_text(f"{app['version']}\n")  # a warm volume
    name = f"appcost-{recipe}-{base.split('.')[0]}"
    figures: dict[str, list[float]] = {"warm_boot_s": [], "stop_s": [], "kill_s": [],
                                       "swarm_rm_s": [], "swarm_update_s": []}
    grace = _seconds(app["grace"])
    try:
        for _ in range(REPEAT):
            figures["warm_boot_s"].append(_up(name, app, volume, free_port(), labels))
            [container] = _containers(name)
            started = time.monotonic()
            _docker("stop", "-t", str(grace), container)
            figures["stop_s"].append(time.monotonic() - started)
            _remove(name)

            _up(name, app, volume, free_port(), labels)
            [container] = _containers(name)
            started = time.monotonic()
            _docker("rm", "-f", container)
            figures["kill_s"].append(time.monotonic() - started)
            _remove(name)

            _up(name, app, volume, free_port(), labels)
            started = time.monotonic()
            _remove(name)
            figures["swarm_rm_s"].append(time.monotonic() - started)

        port = free_port()
        _up(name, app, volume, port, labels)
        other = app["image"].rsplit(":", 1)[0] + ":1.0"
        started = time.monotonic()
        _docker("service", "update", "--detach", "--quiet", "--image", other, name)
        while _docker("service", "inspect", "-f", "{{if .UpdateStatus}}{{.UpdateStatus.State}}"
                      "{{end}}", name) != "completed":
            time.sleep(0.02)
            if time.monotonic() - started > WAIT_S:
                raise SystemExit(f"bench: the stock update of {name} did not complete")
        wait_port(port, WAIT_S)
        figures["swarm_update_s"].append(time.monotonic() - started)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _docker("service", "rm", name)
        _gone(name)
        with contextlib.suppress(subprocess.CalledProcessError):
            _docker("volume", "rm", "-f", volume)
    return {
        "recipe": recipe, "image": app["image"], "stop_grace": app["grace"],
        **{key: {"best": min(v), "median": statistics.median(v), "all": v}
           for key, v in figures.items() if v},
    }
