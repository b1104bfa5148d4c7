"""The disk prune's decision (R9.2) as a pure function: its gates and what it may remove."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ccci_tasks.diskprune import (
    IDLE_GRACE,
    STUCK_AFTER,
    BuildCacheFact,
    ContainerFact,
    Facts,
    ImageFact,
    PrunePlan,
    Removal,
    act,
    disk_used_pct,
    plan,
    render_text,
)
from ccci_tasks.errors import ConfigError
from ccci_tasks.platform.base import ServiceState
from ccci_tasks.platform.docker_state import CRASH_LOOP_FAILURES

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
DAY_H = 24.0


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def image(iid: str, *tags: str, age_h: float = 48, used: bool = False) -> ImageFact:
    return ImageFact(id=iid, tags=tags, created=ago(age_h), used=used)


def container(cid: str, state: str = "exited", created_h: float = 48,
              finished_h: float | None = 48, image_id: str = "sha256:img") -> ContainerFact:
    finished = ago(finished_h) if finished_h is not None else None
    return ContainerFact(id=cid, state=state, created=ago(created_h), finished_at=finished,
                         image=image_id)


def cache(cid: str, *, last_used_h: float | None = 48, created_h: float = 48, size: int = 100,
          in_use: bool = False, shared: bool = False, kind: str = "regular") -> BuildCacheFact:
    return BuildCacheFact(id=cid, kind=kind, created=ago(created_h),
                          last_used=ago(last_used_h) if last_used_h is not None else None,
                          size_bytes=size, in_use=in_use, shared=shared)


def svc(name: str, running: int = 1, desired: int = 1, update: str | None = None,
        failed: int = 0, wanted: int | None = None) -> ServiceState:
    return ServiceState(name=name, desired=desired, running=running, image="x:1",
                        update_state=update, failed_tasks=failed, wanted=wanted)


def facts(**changes: object) -> Facts:
    """Facts with every gate open and one candidate of each kind, changed by ``changes``."""
    base = Facts(
        disk_used_pct=85.0,
        threshold_pct=80,
        in_flight=(),
        services=(svc("warm-a_app"),),
        images=(image("sha256:dangling"),),
        containers=(container("c-exited"),),
        build_cache=(cache("bc-old"),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    ("changes", "allowed", "why_has"),
    [
        ({}, True, "disk 85% used, at or above the threshold of 80%; no run in flight"),
        ({"disk_used_pct": 80.0}, True, "at or above the threshold"),
        ({"disk_used_pct": 79.9}, False, "disk 79.9% used, below the threshold of 80%"),
        ({"in_flight": ("cold-1a2b3c", "quick-4d5e6f")}, False,
         "run(s) in flight: cold-1a2b3c, quick-4d5e6f"),
        ({"services": (svc("a_app"), svc("b_db", running=0))}, False,
         "service(s) converging: b_db (0/1 running)"),
        ({"services": (svc("b_app", running=2),)}, False, "b_app (2/1 running)"),
        ({"services": (svc("c_app", update="updating"),)}, False, "c_app (update updating)"),
        ({"services": (svc("c_app", update="paused"),)}, False, "c_app (update paused)"),
        ({"services": (svc("c_app", update="rollback_started"),)}, False, "update rollback"),
        ({"services": (svc("d", update="completed"), svc("e", update="rollback_completed"),
                       svc("f", running=0, desired=0))}, True, "no service converging"),
    ],
)
def test_gates(changes: dict[str, object], allowed: bool, why_has: str) -> None:
    """Each gate (disk threshold, runs in flight, converging services) refuses and says why."""
    result = plan(facts(**changes), DAY_H, NOW)
    assert result.allowed is allowed
    assert why_has in result.why


def test_refused_plan_lists_nothing_and_names_every_closed_gate() -> None:
    """A refused plan removes nothing, even with candidates, and names every gate that refused."""
    result = plan(facts(disk_used_pct=50.0, in_flight=("cold-1a2b3c",),
                        services=(svc("x_app", running=0),)), DAY_H, NOW)
    assert result == PrunePlan(allowed=False, why=result.why, min_age_h=DAY_H)
    assert result.why == ("disk 50% used, below the threshold of 80%; run(s) in flight: "
                          "cold-1a2b3c; service(s) converging: x_app (0/1 running)")


def test_a_stuck_service_is_named_and_does_not_hold_the_prune() -> None:
    """A service off its desired state with no change for longer than STUCK_AFTER (a task that
    exited 0 under on-failure when the engine restarted) is stuck: the prune goes ahead and
    names it. One that changed within STUCK_AFTER, or whose changes are unknown, still
    holds the prune back."""
    dead, booting = svc("old_app", running=0), svc("new_app", running=0)
    stuck_for = STUCK_AFTER + timedelta(minutes=12)
    result = plan(facts(services=(dead,), service_changed={"old_app": NOW - stuck_for}),
                  DAY_H, NOW)
    assert result.allowed
    assert f"stuck, not waited for: old_app (0/1 running, no change for " \
        f"{int(stuck_for.total_seconds() // 60)} min)" in result.why
    assert result.images == ("sha256:dangling",)
    for changed in ({"old_app": NOW - stuck_for, "new_app": NOW - STUCK_AFTER},
                    {"old_app": NOW - stuck_for}):
        held = plan(facts(services=(dead, booting), service_changed=changed), DAY_H, NOW)
        assert not held.allowed
        assert held.why == ("service(s) converging: new_app (0/1 running) (stuck, not waited "
                            "for: old_app (0/1 running, no change for 42 min))")
    paused = svc("p_app", update="paused")
    assert plan(facts(services=(paused,), service_changed={"p_app": NOW - stuck_for}),
                DAY_H, NOW).allowed


def test_a_service_nothing_will_start_does_not_hold_the_prune_after_a_minute() -> None:
    """A settled service off its desired state with no task wanted up (its task exited 0 under
    on-failure, then the engine restarted and touched the service) will never converge: a
    minute after its last change it is named as stuck and the prune goes ahead. Within that
    minute, with a task still wanted (a restart waiting out its delay), with the count
    unknown, or with an update in progress, it holds the prune back."""
    dead = svc("infra_app", running=0, wanted=0)
    later = NOW - IDLE_GRACE - timedelta(seconds=1)
    result = plan(facts(services=(dead,), service_changed={"infra_app": later}), DAY_H, NOW)
    assert result.allowed, result.why
    assert ("stuck, not waited for: infra_app (0/1 running, nothing will start it: no task is "
            "wanted running)") in result.why
    assert result.images == ("sha256:dangling",)
    for held_by, changed in ((dead, NOW - timedelta(seconds=5)),
                             (svc("infra_app", running=0, wanted=1), later),
                             (svc("infra_app", running=0), later),
                             (svc("infra_app", running=0, wanted=0, update="updating"), later)):
        held = plan(facts(services=(held_by,), service_changed={"infra_app": changed}),
                    DAY_H, NOW)
        assert not held.allowed, held_by
        assert "service(s) converging: infra_app" in held.why


def test_a_crash_looping_service_is_named_and_does_not_hold_the_prune() -> None:
    """A service whose tasks keep failing changes all the time, yet converges to nothing: from
    CRASH_LOOP_FAILURES failed tasks since its spec last changed it is named as crash-looping
    and does not hold the prune back; with fewer it is still converging."""
    looping = svc("loop_app", running=0, failed=CRASH_LOOP_FAILURES)
    just_now = {"loop_app": NOW - timedelta(seconds=5)}
    result = plan(facts(services=(looping,), service_changed=just_now), DAY_H, NOW)
    assert result.allowed
    assert (f"stuck, not waited for: loop_app (0/1 running, crash-looping: "
            f"{CRASH_LOOP_FAILURES} tasks failed since its last update)") in result.why
    assert result.images == ("sha256:dangling",)
    held = plan(facts(services=(replace(looping, failed_tasks=CRASH_LOOP_FAILURES - 1),),
                      service_changed=just_now), DAY_H, NOW)
    assert not held.allowed
    assert held.why == "service(s) converging: loop_app (0/1 running)"
    settled = plan(facts(services=(svc("ok_app", failed=CRASH_LOOP_FAILURES + 4),)), DAY_H,
                   NOW)
    assert settled.allowed and "stuck" not in settled.why


def test_allowed_plan_lists_one_of_each() -> None:
    """With every gate open, old dangling images, stopped containers and cache are planned."""
    result = plan(facts(), DAY_H, NOW)
    assert (result.images, result.containers) == (("sha256:dangling",), ("c-exited",))
    assert (result.build_cache_ids, result.build_cache_bytes) == (("bc-old",), 100)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("fact", "min_age_h", "planned"),
    [
        (image("i", age_h=24 + 1 / 3600), DAY_H, True),  # one second past the age
        (image("i", age_h=24), DAY_H, False),  # exactly the age: not *more* than it
        (image("i", age_h=23), DAY_H, False),
        (image("i", age_h=1e-6), 0.0, True),  # min age 0: anything made before now
        (image("i", age_h=0), 0.0, False),
        (image("i", "ccci/app:1.0", age_h=1000), 0.0, False),  # tagged: never
        (image("i", age_h=1000, used=True), 0.0, False),  # used by a container: never
        (image("i", "a:1", "b:2", age_h=1000, used=True), 0.0, False),
    ],
)
def test_images(fact: ImageFact, min_age_h: float, planned: bool) -> None:
    """Only dangling images no container uses, created more than the minimum age ago, go."""
    result = plan(facts(images=(fact,)), min_age_h, NOW)
    assert result.images == (("i",) if planned else ())


def test_dangling_means_untagged() -> None:
    """An image is dangling exactly when it has no tag."""
    assert image("i").dangling
    assert not image("i", "ccci/app:1.0").dangling


# --------------------------------------------------------------------------- containers


@pytest.mark.parametrize(
    ("fact", "planned"),
    [
        (container("c", "exited"), True),
        (container("c", "dead"), True),
        (container("c", "created", created_h=25, finished_h=None), True),  # never started
        (container("c", "created", created_h=23, finished_h=None), False),
        (container("c", "running"), False),
        (container("c", "paused"), False),
        (container("c", "restarting"), False),
        (container("c", "removing"), False),
        (container("c", "exited", created_h=500, finished_h=23), False),  # age from finish
        (container("c", "exited", created_h=500, finished_h=25), True),
        (container("c", "exited", created_h=25, finished_h=None), True),  # finish unknown
    ],
)
def test_containers(fact: ContainerFact, planned: bool) -> None:
    """Only stopped containers finished (or, never started, created) over the age ago go."""
    result = plan(facts(containers=(fact,)), DAY_H, NOW)
    assert result.containers == (("c",) if planned else ())


# --------------------------------------------------------------------------- build cache


@pytest.mark.parametrize(
    ("fact", "planned"),
    [
        (cache("b"), True),
        (cache("b", in_use=True), False),
        (cache("b", shared=True), False),  # shared with an image: frees nothing
        (cache("b", kind="internal"), False),
        (cache("b", kind="frontend"), False),
        (cache("b", kind="source.local"), True),
        (cache("b", created_h=500, last_used_h=23), False),  # age from last use
        (cache("b", created_h=25, last_used_h=None), True),  # never used: from creation
        (cache("b", created_h=23, last_used_h=None), False),
    ],
)
def test_build_cache(fact: BuildCacheFact, planned: bool) -> None:
    """Build cache not in use, not shared, not internal and unused over the age goes."""
    result = plan(facts(build_cache=(fact,)), DAY_H, NOW)
    assert result.build_cache_ids == (("b",) if planned else ())
    assert result.build_cache_bytes == (100 if planned else 0)


def test_build_cache_bytes_add_up_and_unsupported_engine_skips() -> None:
    """The planned bytes are the sum of the planned records; an engine that cannot prune by
    age plans none and says why."""
    records = (cache("a", size=10), cache("b", size=32), cache("c", size=7, in_use=True))
    assert plan(facts(build_cache=records), DAY_H, NOW).build_cache_bytes == 42
    result = plan(facts(build_cache=records, build_cache_unsupported="API 1.38"), DAY_H, NOW)
    assert (result.build_cache_ids, result.build_cache_bytes) == ((), 0)
    assert result.build_cache_skipped == "API 1.38"


# --------------------------------------------------------------------------- act and render


def test_act_on_a_refused_plan_touches_nothing() -> None:
    """act on a refused plan returns an empty removal without calling the engine."""
    refused = PrunePlan(allowed=False, why="disk 10% used", min_age_h=DAY_H,
                        images=("sha256:x",), containers=("c",))
    assert act(None, refused) == Removal()  # type: ignore[arg-type]  # no engine to call


def test_render_text() -> None:
    """The text rendering says the verdict and why, then counts and ids of what goes."""
    result = {
        "allowed": True, "why": "disk 85% used, at or above the threshold of 80%",
        "disk_used_pct": 85.0, "threshold_pct": 80,
        "would_remove": {"images": ["sha256:" + "ab" * 32], "containers": ["cd" * 32],
                         "build_cache_bytes": 0, "build_cache_skipped": "API 1.38"},
        "skipped": [],
    }
    assert render_text(result) == (
        "prune allowed: disk 85% used, at or above the threshold of 80%\n"
        "would remove 1 image(s), 1 container(s), 0 bytes of build cache\n"
        "  image abababababab\n  container cdcdcdcdcdcd\n  build cache skipped: API 1.38"
    )
    refused = {"allowed": False, "why": "run(s) in flight: cold-1a2b3c", "disk_used_pct": 90.0,
               "threshold_pct": 80, "skipped": [],
               "removed": {"images": [], "containers": [], "build_cache_bytes": 0,
                           "build_cache_skipped": None}}
    assert render_text(refused) == "prune refused: run(s) in flight: cold-1a2b3c"


def test_disk_used_pct(tmp_path: Path) -> None:
    """Disk use is a percentage of the disk holding the path; a missing path is a ConfigError."""
    assert 0.0 < disk_used_pct(tmp_path) <= 100.0
    with pytest.raises(ConfigError, match=r"CCCI_PRUNE_PATH=.*cannot be measured"):
        disk_used_pct(tmp_path / "no-such-dir")
