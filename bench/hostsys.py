"""The several-hosts bench system: the bench system (``bench/system.py``) and rig nodes.

The *host* is this machine's Docker engine with the bench's runs, side-queue, infra workers
and beat (``CCCI_NODE`` ``h1``). A *node* is a second swarm host of the rig
(``ccci_rig.running``: a Docker engine of its own in a network namespace of its own) with a
runs worker of its own started inside that namespace (``CCCI_NODE`` its name,
``CCCI_DOCKER_HOST`` its engine, its own state root, recipes and tests catalogue: nothing is
shared with the host but the broker, reached through the rig's relay at the same
``127.0.0.1:<port>``).

The catalogue is bench-only: ``count`` copies of the custom-html example recipe (``html-1``,
...), all enrolled, whose first boot on an empty volume takes ``init_delay_s`` (custom-html's
own is 3 s), so every cold run costs the same and the sweep splits evenly.

Each node's runs worker publishes the node in the node registry itself (its node beat, every
``CCCI_NODE_BEAT_S``); ``Watcher`` samples the live apps of this system on each engine every
100 ms.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from bench.system import REPO, BenchSystem, make_recipes

if TYPE_CHECKING:
    from ccci_rig import Node

EXAMPLES = REPO / "examples"
BASE_RECIPE = "custom-html"
HOST = "h1"
SAMPLE_S = 0.1
BENCH_NODE = re.compile(r"^ccci-(b[0-9a-f]{6})-n[0-9]+$")


def _make_recipes_module() -> ModuleType:
    module = sys.modules.get("ccci_make_recipes")
    if module is None:
        spec = importlib.util.spec_from_file_location("ccci_make_recipes",
                                                      EXAMPLES / "make_recipes.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["ccci_make_recipes"] = module
        spec.loader.exec_module(module)
    return module


def build_catalogue(root: Path, count: int, init_delay_s: int) -> list[str]:
    """``count`` enrolled copies of custom-html under ``root/recipes`` and
    ``root/tests-recipes``, on custom-html's images; returns their names."""
    make_recipes(root / "recipes", BASE_RECIPE)  # its images, which every copy runs
    builder = _make_recipes_module()
    source = EXAMPLES / "recipes" / BASE_RECIPE
    names = [f"html-{i}" for i in range(1, count + 1)]
    for name in names:
        src = root / "src" / name
        shutil.copytree(source / "files", src / "files")
        for file, was in (("compose.yml", "INIT_DELAY:-3}"), (".env.sample", "\nINIT_DELAY=3\n")):
            path = src / "files" / file
            text = path.read_text()
            if text.count(was) != 1:
                raise SystemExit(f"bench: {path} does not hold {was.strip()!r} exactly once")
            path.write_text(text.replace(was, was.replace("3", str(init_delay_s))))
        raw = json.loads((source / "recipe.json").read_text())
        raw["recipe"] = name
        raw["image"]["entrypoint"] = str(source / raw["image"]["entrypoint"])
        (src / "recipe.json").write_text(json.dumps(raw))
        builder.build_repo(builder.load_spec(src), root / "recipes")  # no images: custom-html's
        shutil.copytree(EXAMPLES / "tests-recipes" / BASE_RECIPE, root / "tests-recipes" / name)
    return names


@dataclass
class Host:
    """One node of the bench system: its settings and its runs worker."""

    name: str  # CCCI_NODE
    env: dict[str, str]  # what differs from the host's environment
    rig: Node | None = None  # None: this machine's engine
    worker: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return self.env.get("CCCI_DOCKER_HOST", "unix:///var/run/docker.sock")


class HostsSystem(BenchSystem):
    """The bench system with ``h1`` on this machine's engine and rig nodes added to it."""

    def __init__(self, recipes: int, init_delay_s: int, **env: str) -> None:
        super().__init__()
        self.count, self.init_delay_s = recipes, init_delay_s
        self.recipes: list[str] = []
        self.env.update({"CCCI_NODE": HOST, "CCCI_PRUNE_THRESHOLD_PCT": "100",
                         "CCCI_NIGHTLY_AT": time.strftime("%H:00", time.gmtime(
                             time.time() + 12 * 3600)), **env})
        self.label = self.base.split(".")[0]
        self.hosts: dict[str, Host] = {}

    def build_catalogue(self) -> None:
        (self.root / "bench.pid").write_text(f"{os.getpid()}\n")
        self.recipes = build_catalogue(self.root, self.count, self.init_delay_s)

    def __enter__(self) -> HostsSystem:
        reap_left_nodes()
        super().__enter__()
        self.hosts = {HOST: Host(HOST, {"CCCI_STATE_DIR": self.env["CCCI_STATE_DIR"]})}
        return self

    # --- the host ------------------------------------------------------------------------

    def start_host(self, **extra: str) -> None:
        """The host's runs, side-queue and infra workers and beat (the janitor), with
        ``extra`` env (the lease TTL, the janitor interval)."""
        self.stop_workers()
        self.env.update(extra)
        os.environ.update(self.env)
        from ccci_tasks.config import get_settings

        get_settings.cache_clear()
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        for role in ("runs", "alerts", "infra"):
            self._start(role, env, HOST)
        self.hosts[HOST].worker = self._workers["runs"]
        with open(self.root / "logs" / "beat.log", "ab") as log:
            self._workers["beat"] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "ccci_tasks.celery_app", "beat",
                 "--loglevel=INFO", "-s", str(self.root / "beat-schedule")],
                cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)

    def _start(self, role: str, env: dict[str, str], node: str,
               inside: Node | None = None) -> str:
        """A worker of ``role`` for ``node`` (inside a rig node's namespace); its name."""
        name = f"{role}-{node}-bench{os.getpid()}"
        argv = [sys.executable, "-m", f"workers.{role}", f"--hostname={name}@%h"]
        with open(self.root / "logs" / f"{role}-{node}.log", "ab") as log:
            self._workers[f"{role}-{node}" if node != HOST else role] = subprocess.Popen(
                inside.argv(argv) if inside is not None else argv, cwd=REPO, env=env,
                stdout=log, stderr=log, start_new_session=True)
        self._wait_ready(f"{name}@{socket.gethostname()}")
        return name

    # --- rig nodes -----------------------------------------------------------------------

    @contextlib.contextmanager
    def node(self, short: str) -> Iterator[Host]:
        """A rig node ``short`` (e.g. ``n2``) with the catalogue's images, its own (empty)
        state root, recipes and tests, for the block; stopped after it."""
        from ccci_rig import recipe_images, running

        own = self.root / short
        for what in ("recipes", "tests-recipes"):
            if not (own / what).exists():
                shutil.copytree(self.root / what, own / what, symlinks=True)
        shutil.rmtree(own / "state", ignore_errors=True)  # a node starts empty
        (own / "state").mkdir(parents=True)
        images = recipe_images(self.root / "recipes" / BASE_RECIPE)
        with running(f"{self.label}-{short}", self.root / "nodes" / short,
                     [self.redis_port]) as rig:
            rig.copy_images(images)
            host = Host(short, {"CCCI_NODE": short, "CCCI_DOCKER_HOST": rig.docker_host,
                                "CCCI_STATE_DIR": str(own / "state"),
                                "CCCI_RECIPES_DIR": str(own / "recipes"),
                                "CCCI_TESTS_DIR": str(own / "tests-recipes")}, rig)
            self.hosts[short] = host
            try:
                yield host
            finally:
                self.stop_node_worker(host)
                del self.hosts[short]

    def start_node_worker(self, host: Host) -> None:
        """The node's runs worker, inside its namespace, with the host's settings but its
        own node, engine, state root, recipes and tests."""
        assert host.rig is not None
        env = {**os.environ, **self.env, **host.env, "PYTHONPATH": str(REPO)}
        self._start("runs", env, host.name, inside=host.rig)
        host.worker = self._workers[f"runs-{host.name}"]

    def kill_node_worker(self, host: Host) -> None:
        """SIGKILL the node's runs worker (its process group: the pool's children too)."""
        if host.worker is not None and host.worker.poll() is None:
            os.killpg(host.worker.pid, signal.SIGKILL)
            host.worker.wait(timeout=30)

    def stop_node_worker(self, host: Host) -> None:
        proc = self._workers.pop(f"runs-{host.name}", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        host.worker = None

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        (self.root / "bench.pid").unlink(missing_ok=True)


def reap_left_nodes() -> list[str]:
    """Stop the rig nodes of bench runs that are gone (killed before they stopped them): a
    node's run dir is ``<bench root>/nodes/<node>``, and a live bench run keeps its pid in
    ``<bench root>/bench.pid``."""
    from ccci_rig import netns
    from ccci_rig.node import _run_dir_of, reap
    from ccci_rig.proc import cmdline, read_pid

    reaped = []
    for name in netns.names():
        if not BENCH_NODE.match(name):
            continue
        roots = {run_dir.parent.parent for pid in netns.pids(name)
                 if (run_dir := _run_dir_of(cmdline(pid))) is not None}
        if any(read_pid(root / "bench.pid") is not None for root in roots):
            continue  # its bench run is alive
        reap(name)
        reaped.append(name)
    return reaped


# --- observing ------------------------------------------------------------------------


@dataclass
class EngineSamples:
    samples: int = 0
    most: int = 0
    violations: int = 0
    errors: int = 0
    seen: set[str] = field(default_factory=set)


class Watcher:
    """Samples the live apps of this system (cold apps, canonicals) on each engine every
    100 ms, one thread per engine; counts samples above ``max_tests``."""

    def __init__(self, system: HostsSystem, max_tests: int) -> None:
        self.system, self.max_tests = system, max_tests
        self.engines = {h.name: EngineSamples() for h in system.hosts.values()}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(h.name, h.docker_host),
                                          daemon=True) for h in system.hosts.values()]

    def _loop(self, name: str, docker_host: str) -> None:
        import docker

        client = docker.DockerClient(base_url=docker_host, version="auto", timeout=30)
        counts = self.engines[name]
        try:
            while not self._stop.is_set():
                try:
                    live = set()
                    for service in client.services.list(filters={"label": "ccci.kind"}):
                        labels = service.attrs["Spec"].get("Labels") or {}
                        if self.system.ours(labels) and labels.get("ccci.kind") in ("cold",
                                                                                     "warm"):
                            live.add(str(labels.get("com.docker.stack.namespace")))
                except Exception:  # the engine busy or going away: sample again
                    counts.errors += 1
                else:
                    counts.samples += 1
                    counts.most = max(counts.most, len(live))
                    counts.violations += len(live) > self.max_tests
                    counts.seen |= live
                self._stop.wait(SAMPLE_S)
        finally:
            client.close()

    def to_json(self) -> dict[str, Any]:
        return {name: {"samples": c.samples, "max_live": c.most, "violations": c.violations,
                       "errors": c.errors, "apps_seen": len(c.seen)}
                for name, c in self.engines.items()}

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
