"""The disk prune on the real engine: what it removes, what it never touches, when it refuses.

The engine is shared with other test sessions and a real prune is engine-wide, so this module
never lets a real prune loose on the engine: a full ``run`` that removes is only ever run where
a gate refuses it (then it removes nothing). The engine-wide plan is checked with a dry run,
and removal is checked by ``act`` on that real plan cut down to this test's own objects.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from docker.errors import APIError, NotFound
from docker.types import Mount

from ccci_tasks.config import Settings
from ccci_tasks.diskprune import (
    IDLE_GRACE,
    STUCK_AFTER,
    Facts,
    PrunePlan,
    act,
    disk_used_pct,
    observe,
    plan,
    run,
)
from ccci_tasks.errors import PlatformError
from ccci_tasks.platform.base import ServiceState
from ccci_tasks.platform.swarm import SwarmPlatform

if TYPE_CHECKING:
    from docker import DockerClient

TEST_LABEL = "ccci.test-prune"  # marks the objects this module makes
ALLOWED_WAIT_S = 180.0  # other sessions' deploys may converge meanwhile
CONVERGE_S = 60.0
PruneEnv = Callable[..., Settings]  # settings from the environment plus CCCI_PRUNE_* values


def rootfs(marker: str, with_busybox: bool = False) -> bytes:
    """A tiny root file system tar: ``/id`` holds ``marker``; optionally a static busybox."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = marker.encode()
        info = tarfile.TarInfo("id")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        if with_busybox:
            busybox = shutil.which("busybox")
            assert busybox, "busybox-static is needed (apt-get install busybox-static)"
            tar.add(busybox, arcname="bin/busybox")
            for applet in ("true", "sleep", "sh"):
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
    return buf.getvalue()


def docker_import(tag: str, marker: str, hexid: str, with_busybox: bool = False) -> str:
    """``docker import`` a tiny image as ``tag``; return its id."""
    subprocess.run(
        ["docker", "import", "--change", f"LABEL {TEST_LABEL}={hexid}", "-", tag],
        input=rootfs(marker, with_busybox), check=True, capture_output=True, timeout=60,
    )
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def exists(client: DockerClient, kind: str, object_id: str) -> bool:
    getter = {"image": client.images.get, "container": client.containers.get,
              "volume": client.volumes.get, "service": client.services.get}[kind]
    try:
        getter(object_id)
    except NotFound:
        return False
    return True


@dataclass
class Made:
    """The objects one test made; ``gone`` are the ones a prune may take."""

    tagged: str  # image tagged <repo>:live: the live service and the exited container run it
    dangling: str  # image that lost its tag to a newer import: goes
    retagged: str  # the newer image holding that tag: stays
    dangling_used: str  # untagged image that a created container uses: stays
    used_retagged: str  # the newer image holding its tag: stays
    exited: str  # container that ran and exited: goes
    created: str  # container created from dangling_used, never started: goes
    volume: str  # named volume mounted in the exited container: stays
    anon_volume: str  # anonymous volume of the exited container: stays

    @property
    def gone_images(self) -> set[str]:
        return {self.dangling}

    @property
    def gone_containers(self) -> set[str]:
        return {self.exited, self.created}

    @property
    def images(self) -> set[str]:
        return {self.tagged, self.dangling, self.retagged, self.dangling_used,
                self.used_retagged}

    @property
    def containers(self) -> set[str]:
        return {self.exited, self.created}


@pytest.fixture(scope="module")
def live_service(swarm: DockerClient) -> Iterator[tuple[str, str, str]]:
    """A converged service running a tagged image only this module has: (hex, repo, name)."""
    hexid = os.urandom(3).hex()
    repo = f"ccci-prune-test/{hexid}"
    docker_import(f"{repo}:live", f"live {hexid}", hexid, with_busybox=True)
    name = f"ccci-prune-test-{hexid}"
    service = swarm.services.create(
        f"{repo}:live", command=["/bin/sleep", "3600"], name=name,
        labels={TEST_LABEL: hexid}, container_labels={TEST_LABEL: hexid},
    )
    try:
        deadline = time.monotonic() + CONVERGE_S
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            listed = swarm.api.services(filters={"name": name}, status=True)
            status = listed[0].get("ServiceStatus") or {} if listed else {}
            if status.get("RunningTasks") == 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"service {name} not running after {CONVERGE_S} s: {status}")
        yield hexid, repo, name
    finally:
        service.remove()
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline and swarm.containers.list(
                all=True, filters={"label": f"{TEST_LABEL}={hexid}"}):
            time.sleep(0.5)
        with contextlib.suppress(APIError):
            swarm.images.remove(f"{repo}:live", force=True)


@pytest.fixture
def made(swarm: DockerClient, live_service: tuple[str, str, str]) -> Iterator[Made]:
    """A dangling image, a used dangling image, stopped containers and volumes of this test."""
    hexid, repo, _ = live_service
    tagged = swarm.images.get(f"{repo}:live").id
    dangling = docker_import(f"{repo}:gone", f"gone-1 {os.urandom(4).hex()}", hexid)
    retagged = docker_import(f"{repo}:gone", f"gone-2 {os.urandom(4).hex()}", hexid)
    dangling_used = docker_import(f"{repo}:used", f"used-1 {os.urandom(4).hex()}", hexid)
    volume = swarm.volumes.create(f"ccci-prune-test-{os.urandom(3).hex()}",
                                  labels={TEST_LABEL: hexid}).name
    labels = {TEST_LABEL: hexid}
    created = swarm.containers.create(dangling_used, ["/id"], labels=labels)
    used_retagged = docker_import(f"{repo}:used", f"used-2 {os.urandom(4).hex()}", hexid)
    exited = swarm.containers.run(
        f"{repo}:live", ["/bin/true"], detach=True, labels=labels,
        volumes={volume: {"bind": "/named", "mode": "rw"}},
        mounts=[Mount("/anon", None, type="volume")],
    )
    assert exited.wait(timeout=30)["StatusCode"] == 0
    exited.reload()
    anon = next(m["Name"] for m in exited.attrs["Mounts"] if m["Destination"] == "/anon")
    objects = Made(tagged=tagged, dangling=dangling, retagged=retagged,
                   dangling_used=dangling_used, used_retagged=used_retagged,
                   exited=exited.id, created=created.id, volume=volume, anon_volume=anon)
    try:
        yield objects
    finally:
        for cid in objects.containers:
            with contextlib.suppress(NotFound):
                swarm.api.remove_container(cid, force=True)
        for image_id in (dangling, retagged, dangling_used, used_retagged):
            with contextlib.suppress(NotFound):
                swarm.api.remove_image(image_id, force=True)
        for name in (volume, anon):
            with contextlib.suppress(NotFound):
                swarm.api.remove_volume(name)


@pytest.fixture
def prune_env(monkeypatch: pytest.MonkeyPatch) -> PruneEnv:
    """Settings from the test environment plus the given CCCI_PRUNE_* variables."""

    def make(**env: str) -> Settings:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return Settings()

    return make


def engine(swarm: DockerClient) -> SwarmPlatform:
    """The platform the prune reads and changes the engine through, on the shared client."""
    return SwarmPlatform(Settings(), client=swarm)


def below_use() -> str:
    """A threshold at or below the disk's current use (the disk gate is open)."""
    used = disk_used_pct(Settings().prune_path)
    assert used >= 1, f"the disk is only {used}% used; no threshold can be below it"
    return "1"


def above_use() -> str:
    """A threshold above the disk's current use (the disk gate is closed)."""
    used = disk_used_pct(Settings().prune_path)
    assert used < 99, f"the disk is {used}% used; no threshold can be above it"
    return str(math.floor(used) + 1)


def assert_all_stay(client: DockerClient, objects: Made, service: str) -> None:
    for image_id in objects.images:
        assert exists(client, "image", image_id), image_id
    for cid in objects.containers:
        assert exists(client, "container", cid), cid
    assert_kept(client, objects, service)


def assert_kept(client: DockerClient, objects: Made, service: str) -> None:
    """What no prune may take: tagged or used images, volumes, the live service."""
    for image_id in objects.images - objects.gone_images:
        assert exists(client, "image", image_id), f"image {image_id} was removed"
    for volume in (objects.volume, objects.anon_volume):
        assert exists(client, "volume", volume), f"volume {volume} was removed"
    status = client.api.services(filters={"name": service}, status=True)[0]["ServiceStatus"]
    assert status["RunningTasks"] == 1, status


def until_allowed(attempt: Callable[[], Any], allowed: Callable[[Any], bool]) -> Any:
    """``attempt()`` until its result is allowed; other sessions' deploys close the gate."""
    deadline = time.monotonic() + ALLOWED_WAIT_S
    while True:
        result = attempt()
        if allowed(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"the prune stayed refused for {ALLOWED_WAIT_S} s: {result}")
        time.sleep(2)


# --------------------------------------------------------------------------- tests


@pytest.mark.docker
def test_refused_while_a_run_is_in_flight(
    swarm: DockerClient, made: Made, live_service: tuple[str, str, str], prune_env: PruneEnv
) -> None:
    """A real prune with a run in flight removes nothing and names the run."""
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=below_use(), CCCI_PRUNE_MIN_AGE_H="0")
    result = run(settings, ["cold-1a2b3c"], dry_run=False, platform=engine(swarm))
    assert result["allowed"] is False
    assert "run(s) in flight: cold-1a2b3c" in result["why"]
    assert result["removed"] == {"images": [], "containers": [], "build_cache_bytes": 0,
                                 "build_cache_skipped": None}
    assert_all_stay(swarm, made, live_service[2])


@pytest.mark.docker
def test_refused_below_the_threshold(
    swarm: DockerClient, made: Made, live_service: tuple[str, str, str], prune_env: PruneEnv
) -> None:
    """A real prune with the disk below the threshold removes nothing and says so."""
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=above_use(), CCCI_PRUNE_MIN_AGE_H="0")
    result = run(settings, [], dry_run=False, platform=engine(swarm))
    assert result["allowed"] is False
    assert f"below the threshold of {settings.prune_threshold_pct}%" in result["why"]
    assert result["disk_used_pct"] < result["threshold_pct"] == settings.prune_threshold_pct
    assert result["removed"]["images"] == result["removed"]["containers"] == []
    assert_all_stay(swarm, made, live_service[2])


@pytest.mark.docker
def test_dry_run_lists_then_act_removes_exactly_those(
    swarm: DockerClient, made: Made, live_service: tuple[str, str, str], prune_env: PruneEnv
) -> None:
    """A dry run lists this test's dangling image and stopped containers and removes nothing;
    acting on the engine's plan (cut to this test's objects) removes exactly those, and keeps
    tagged and used images, volumes and the live service."""
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=below_use(), CCCI_PRUNE_MIN_AGE_H="0")
    hexid, _, service = live_service

    dry = until_allowed(lambda: run(settings, [], dry_run=True, platform=engine(swarm)),
                        lambda r: r["allowed"])
    assert "removed" not in dry
    listed_images = set(dry["would_remove"]["images"])
    listed_containers = set(dry["would_remove"]["containers"])
    assert made.gone_images <= listed_images
    assert made.gone_containers <= listed_containers
    assert not (made.images - made.gone_images) & listed_images
    live = {c.id for c in swarm.containers.list(filters={"label": f"{TEST_LABEL}={hexid}"})}
    assert live, "the live service has no running container"
    assert not live & listed_containers
    assert_all_stay(swarm, made, service)  # a dry run removes nothing

    # The same plan, from the same observation, acted on for this test's objects only.
    def our_plan() -> PrunePlan:
        full = plan(observe(settings, engine(swarm), []), settings.prune_min_age_h,
                    datetime.now(UTC))
        return replace(
            full,
            images=tuple(i for i in full.images if i in made.images),
            containers=tuple(c for c in full.containers if c in made.containers),
            build_cache_ids=(), build_cache_bytes=0,
        )

    ours = until_allowed(our_plan, lambda p: p.allowed)
    assert set(ours.images) == made.gone_images == listed_images & made.images
    assert set(ours.containers) == made.gone_containers == listed_containers & made.containers
    removal = act(engine(swarm), ours)
    assert set(removal.images) == made.gone_images
    assert set(removal.containers) == made.gone_containers
    assert removal.skipped == ()
    for image_id in made.gone_images:
        assert not exists(swarm, "image", image_id)
    for cid in made.gone_containers:
        assert not exists(swarm, "container", cid)
    assert_kept(swarm, made, service)
    # The dangling image the created container used stays: it was used when planned.
    assert exists(swarm, "image", made.dangling_used)


@pytest.mark.docker
def test_act_checks_each_image_again(swarm: DockerClient, made: Made, prune_env: PruneEnv) -> None:
    """An image tagged or taken into use after the plan is kept, with the reason."""
    hexid = os.urandom(3).hex()
    swarm.images.get(made.dangling).tag(f"ccci-prune-test/{hexid}", "late")
    late_user = swarm.containers.create(made.dangling_used, ["/id"], labels={TEST_LABEL: hexid})
    try:
        swarm.api.remove_container(made.created)  # now only the late container uses it
        stale = PrunePlan(allowed=True, why="test", min_age_h=0.0,
                          images=(made.dangling, made.dangling_used))
        removal = act(engine(swarm), stale)
        assert removal.images == ()
        reasons = {s["id"]: s["reason"] for s in removal.skipped}
        assert reasons[made.dangling] == f"tagged ccci-prune-test/{hexid}:late since the plan"
        assert reasons[made.dangling_used] == (
            f"used by container {late_user.id[:12]} since the plan")
        assert exists(swarm, "image", made.dangling)
        assert exists(swarm, "image", made.dangling_used)
    finally:
        late_user.remove(force=True)
        with contextlib.suppress(NotFound):
            swarm.images.remove(f"ccci-prune-test/{hexid}:late")


@pytest.mark.docker
def test_the_abra_platform_prunes_the_same_engine(
    swarm: DockerClient, made: Made, live_service: tuple[str, str, str], prune_env: PruneEnv
) -> None:
    """On the abra backend the prune reads the engine through the docker SDK too: a dry run
    lists this test's dangling image and stopped containers, never what must stay, and a real
    run with a run in flight removes nothing."""
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=below_use(), CCCI_PRUNE_MIN_AGE_H="0",
                         CCCI_PLATFORM="abra")
    assert settings.platform == "abra"
    dry = until_allowed(lambda: run(settings, [], dry_run=True), lambda r: r["allowed"])
    assert made.gone_images <= set(dry["would_remove"]["images"])
    assert made.gone_containers <= set(dry["would_remove"]["containers"])
    assert not (made.images - made.gone_images) & set(dry["would_remove"]["images"])
    refused = run(settings, ["cold-1a2b3c"], dry_run=False)
    assert refused["allowed"] is False and "run(s) in flight: cold-1a2b3c" in refused["why"]
    assert_all_stay(swarm, made, live_service[2])


@pytest.mark.docker
def test_docker_unreachable_is_a_platform_error(settings: Settings) -> None:
    """A Docker engine that does not answer is a PlatformError (the CLI's exit 3)."""
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broken = settings.model_copy(update={"docker_host": f"tcp://127.0.0.1:{port}"})
    with pytest.raises(PlatformError, match=f"127.0.0.1:{port}"):
        run(broken, [], dry_run=True)


@pytest.mark.docker
def test_refused_while_a_service_converges(swarm: DockerClient, prune_env: PruneEnv) -> None:
    """A service that cannot reach its replicas closes the gate, named in ``why``."""
    hexid = os.urandom(3).hex()
    name = f"ccci-prune-test-{hexid}"
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=below_use(), CCCI_PRUNE_MIN_AGE_H="0")
    service = swarm.services.create(f"ccci-prune-test/{hexid}:missing", name=name,
                                    labels={TEST_LABEL: hexid})
    try:
        result = run(settings, [], dry_run=True, platform=engine(swarm))
        assert result["allowed"] is False
        assert f"{name} (0/1 running)" in result["why"]
        assert result["would_remove"]["images"] == result["would_remove"]["containers"] == []
        # The engine's own task states date its last change: the same service, left alone for
        # longer than STUCK_AFTER, is stuck and named, not waited for.
        facts = observe(settings, engine(swarm), [])
        changed = facts.service_changed[name]
        now = datetime.now(UTC)
        assert timedelta(0) <= now - changed < timedelta(minutes=2), changed
        later = plan(facts, 0, changed + STUCK_AFTER + timedelta(minutes=1))
        assert f"{name} (0/1 running, no change for 31 min)" in later.why
        assert name not in later.why.split("(stuck")[0]
    finally:
        service.remove()


def observed_until(settings: Settings, swarm: DockerClient, name: str, what: str,
                   done: Callable[[ServiceState], bool]) -> tuple[Facts, ServiceState]:
    """The prune's facts once service ``name`` is ``done`` (polled every 0.5 s); the timeout
    says what it waited for and the service's last state."""
    deadline = time.monotonic() + CONVERGE_S
    state = None
    while time.monotonic() < deadline:
        facts = observe(settings, engine(swarm), [])
        state = next((s for s in facts.services if s.name == name), None)
        if state is not None and done(state):
            return facts, state
        time.sleep(0.5)
    raise AssertionError(f"{name}: not {what} after {CONVERGE_S} s; last seen: {state}")


@pytest.mark.docker
def test_a_crash_looping_service_does_not_hold_the_prune(
    swarm: DockerClient, live_service: tuple[str, str, str], prune_env: PruneEnv
) -> None:
    """A service whose task exits non-zero and is restarted at once changes all the time, yet
    converges to nothing: once the engine shows CRASH_LOOP_FAILURES failed tasks since its
    spec, the plan names it crash-looping and it no longer closes the gate."""
    from docker.types import RestartPolicy

    from ccci_tasks.platform.docker_state import CRASH_LOOP_FAILURES

    hexid, repo, _ = live_service
    name = f"ccci-prune-loop-{hexid}"
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=below_use(), CCCI_PRUNE_MIN_AGE_H="0")
    service = swarm.services.create(
        f"{repo}:live", command=["/bin/sh", "-c", "exit 3"], name=name,
        labels={TEST_LABEL: hexid}, container_labels={TEST_LABEL: hexid},
        restart_policy=RestartPolicy(condition="any", delay=100_000_000),
    )
    try:
        facts, _ = observed_until(
            settings, swarm, name, "crash-looping",
            lambda s: s.failed_tasks >= CRASH_LOOP_FAILURES and s.running == 0)
        # Its restarts are recent changes: without the failure count it would be converging.
        assert datetime.now(UTC) - facts.service_changed[name] < STUCK_AFTER
        result = plan(facts, 0, datetime.now(UTC))
        converging, _, stuck = result.why.partition("(stuck, not waited for:")
        assert name not in converging, result.why
        assert f"{name} (0/1 running, crash-looping: " in stuck, result.why
    finally:
        service.remove()


@pytest.mark.docker
def test_a_service_whose_task_ended_under_on_failure_does_not_hold_the_prune(
    swarm: DockerClient, live_service: tuple[str, str, str], prune_env: PruneEnv
) -> None:
    """A task that exits 0 under an on-failure restart policy is never started again (as after
    an engine restart stopped it): the engine shows no task wanted up, and a minute after its
    last change the plan names it stuck instead of waiting half an hour for it."""
    from docker.types import RestartPolicy

    hexid, repo, _ = live_service
    name = f"ccci-prune-done-{hexid}"
    settings = prune_env(CCCI_PRUNE_THRESHOLD_PCT=below_use(), CCCI_PRUNE_MIN_AGE_H="0")
    service = swarm.services.create(
        f"{repo}:live", command=["/bin/sh", "-c", "exit 0"], name=name,
        labels={TEST_LABEL: hexid}, container_labels={TEST_LABEL: hexid},
        restart_policy=RestartPolicy(condition="on-failure", delay=100_000_000),
    )
    try:
        facts, state = observed_until(settings, swarm, name, "no task wanted up",
                                      lambda s: s.wanted == 0)
        assert (state.running, state.desired, state.failed_tasks) == (0, 1, 0), state
        changed = facts.service_changed[name]
        assert plan(facts, 0, changed + timedelta(seconds=5)).why.count(f"{name} (0/1 running)")
        later = plan(facts, 0, changed + IDLE_GRACE + timedelta(seconds=1))
        converging, _, stuck = later.why.partition("(stuck, not waited for:")
        assert name not in converging, later.why
        assert f"{name} (0/1 running, nothing will start it" in stuck, later.why
    finally:
        service.remove()


@pytest.mark.docker
def test_task_count_fallback_agrees_with_the_engine(
    swarm: DockerClient, live_service: tuple[str, str, str]
) -> None:
    """On engines without service status, counting tasks gives the engine's own figures."""
    from ccci_tasks.platform import engine_objects

    name = live_service[2]
    by_status = {s.name: s for s in engine_objects._services(swarm, with_status=True)[0]}
    by_tasks = {s.name: s for s in engine_objects._services(swarm, with_status=False)[0]}
    assert by_status[name] == by_tasks[name]
    assert (by_tasks[name].running, by_tasks[name].desired) == (1, 1)
