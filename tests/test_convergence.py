"""Convergence without a fixed window: engine events, readiness, still_running, fast stops."""

from __future__ import annotations

import re
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import pytest
from conftest import TEST_BASE
from test_swarm_platform import commit_on, deploy_and_serve, replace_once

from ccci_tasks import constants
from ccci_tasks.config import Settings
from ccci_tasks.errors import DeployFailed, InvalidInput
from ccci_tasks.naming import Domain, Recipe, cold_domain, new_run_hex, stack_name
from ccci_tasks.platform.base import DeployedState, ServiceState, TaskRef
from ccci_tasks.platform.convergence import is_converged, startup_left_s, vanished_tasks
from ccci_tasks.platform.engine_events import StackEvents, concerns_stack
from ccci_tasks.platform.envfile import set_keys
from ccci_tasks.platform.stacks import ServiceDetail
from ccci_tasks.platform.swarm import UPDATE_MONITOR, SwarmPlatform, render_compose

if TYPE_CHECKING:
    from docker import DockerClient

STACK = "cust-1a2b3c_ci_localhost"
A, B, C = TaskRef("task-a", "cont-a"), TaskRef("task-b", "cont-b"), TaskRef("task-c", "cont-c")


def svc(name: str, desired: int = 1, running: int = 1, update: str | None = None,
        tasks: tuple[TaskRef, ...] = (A,)) -> ServiceState:
    return ServiceState(f"{STACK}_{name}", desired, running, "ccci/x:1", update, tasks=tasks)


def deployed(*services: ServiceState) -> DeployedState:
    return DeployedState(Domain("cust-1a2b3c.ci.localhost"), STACK, "1.0.0+1.0", None, services)


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        ((), False),  # nothing deployed
        ((svc("app"),), True),
        ((svc("app", update="completed"), svc("db", update="rollback_completed")), True),
        ((svc("app", running=0),), False),
        ((svc("app", update="updating"),), False),
        ((svc("app", update="paused"),), False),
        ((svc("app"), svc("db", desired=2, running=1)), False),
    ],
)
def test_is_converged(services: tuple[ServiceState, ...], expected: bool) -> None:
    """Converged = deployed, every service at its desired replicas, every update settled."""
    assert is_converged(deployed(*services)) is expected


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        ((svc("app", tasks=(A,)),), (svc("app", tasks=(A,)),), []),
        ((svc("app", tasks=(A,)),), (svc("app", tasks=(B,)),), ["app:task-a"]),  # replaced
        ((svc("app", tasks=(A,)),), (svc("app", running=0, tasks=()),), ["app:task-a"]),
        ((svc("app", tasks=(A,)),), (), ["app:task-a"]),  # service gone
        ((svc("app", tasks=(A,)),), (svc("app", tasks=(TaskRef("task-a", "other"),)),),
         ["app:task-a"]),  # same task, another container
        ((svc("app", tasks=(A,)), svc("db", tasks=(B, C))),
         (svc("app", tasks=(A,)), svc("db", tasks=(C,))), ["db:task-b"]),
        ((svc("app", tasks=(A,)),), (svc("app", tasks=(A, B)),), []),  # a new one is fine
    ],
)
def test_vanished_tasks(since: tuple[ServiceState, ...], now: tuple[ServiceState, ...],
                        expected: list[str]) -> None:
    """A task running at convergence that no longer runs in the same container is named."""
    found = vanished_tasks(deployed(*since), deployed(*now))
    assert [f"{name.rsplit('_', 1)[1]}:{ref.task_id}" for name, ref in found] == expected


def _detail(name: str, started_s_ago: float, now_ns: int) -> ServiceDetail:
    return ServiceDetail(svc(name.removesuffix("+hc")),
                         running_since_ns=now_ns - int(started_s_ago * 1e9),
                         healthchecked=name.endswith("+hc"))


@pytest.mark.parametrize(
    ("ages", "probed", "expected"),
    [
        ({"app": 0.1}, {"app"}, 0.0),  # the probe tells: no wait
        ({"app": 0.1, "worker": 0.2}, {"app"}, 0.8),  # a fresh unprobed task: its rest
        ({"app": 0.1, "worker": 3.0}, {"app"}, 0.0),  # it has been up long enough
        ({"app": 0.4}, set(), 0.6),  # nothing probed (abra)
        ({"app": 0.1, "worker": 0.2, "db": 0.5}, {"app"}, 0.8),  # the youngest counts
        ({"app": 0.1, "db+hc": 0.1}, {"app"}, 0.0),  # swarm's healthy is the db's readiness
        ({"app": 0.1, "db+hc": 0.1, "worker": 0.6}, {"app"}, 0.4),
    ],
)
def test_startup_left_s(ages: dict[str, float], probed: set[str], expected: float) -> None:
    """Services no probe and no healthcheck covers must have run UNPROBED_STARTUP_S; the rest
    is waited for."""
    now = time.time_ns()
    details = [_detail(name, age, now) for name, age in ages.items()]
    assert startup_left_s(details, frozenset(probed), STACK, now, 1.0) == pytest.approx(
        expected, abs=1e-6)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"Type": "container", "Actor": {"Attributes": {
            constants.STACK_NAMESPACE_LABEL: STACK}}}, True),
        ({"Type": "container", "Actor": {"Attributes": {
            constants.STACK_NAMESPACE_LABEL: STACK + "x"}}}, False),
        ({"Type": "service", "Actor": {"Attributes": {"name": f"{STACK}_app"}}}, True),
        ({"Type": "service", "Actor": {"Attributes": {"name": "other_app"}}}, False),
        ({"Type": "network", "Actor": {"Attributes": {"name": f"{STACK}_default"}}}, False),
        ({"Type": "container"}, False),
    ],
)
def test_concerns_stack(event: dict[str, Any], expected: bool) -> None:
    """Container events by their stack label, service events by their name's stack prefix."""
    assert concerns_stack(event, STACK) is expected


def test_deployed_state_json_round_trip() -> None:
    """A converged state survives to_json/from_json (to carry it from one step to another)."""
    import json

    state = deployed(svc("app", update="completed", tasks=(A, B)), svc("db", tasks=()))
    assert DeployedState.from_json(json.loads(json.dumps(state.to_json()))) == state
    with pytest.raises(InvalidInput, match="to_json"):
        DeployedState.from_json({"domain": "x", "services": [{"nope": 1}]})
    with pytest.raises(InvalidInput):
        DeployedState.from_json("not a dict")


def test_render_compose_sets_the_update_monitor_unless_the_recipe_does() -> None:
    """Every service gets update_config.monitor = UPDATE_MONITOR; a recipe's own value stays."""
    compose: dict[str, Any] = {"services": {
        "app": {"deploy": {"update_config": {"parallelism": 2}}},
        "db": {"deploy": {"update_config": {"monitor": "30s"}}},
        "worker": {},
    }}
    out = render_compose(compose, stack=STACK, env={}, ccci_labels={}, app_labels={})
    assert out["services"]["app"]["deploy"]["update_config"] == {
        "parallelism": 2, "monitor": UPDATE_MONITOR}
    assert out["services"]["db"]["deploy"]["update_config"] == {"monitor": "30s"}
    assert out["services"]["worker"]["deploy"]["update_config"] == {"monitor": UPDATE_MONITOR}
    assert compose["services"]["app"]["deploy"]["update_config"] == {"parallelism": 2}


# --------------------------------------------------------------------------- engine events


def _labelled_container(client: DockerClient, stack: str) -> Any:
    return client.containers.create(
        "ccci/custom-html:1.0", entrypoint=["/bin/true"],
        labels={constants.STACK_NAMESPACE_LABEL: stack, constants.LABEL_KIND: "cold",
                constants.LABEL_DOMAIN: f"events.{TEST_BASE}"},
    )


@pytest.mark.docker
def test_stack_events_wake_only_for_their_stack(swarm: DockerClient, example_recipes: Path) -> None:
    """A container event of the watched stack wakes the waiter; another stack's does not."""
    mine, other = f"evt-{new_run_hex()}_x", f"evt-{new_run_hex()}_x"
    created = []
    try:
        with StackEvents(swarm, mine, max_s=60) as events:
            assert events.streaming
            created.append(_labelled_container(swarm, other))
            assert not events.wait(1.0)
            created.append(_labelled_container(swarm, mine))
            assert events.wait(10.0)
            assert events.seen >= 1
    finally:
        for container in created:
            container.remove(force=True)


class _BrokenEngine(socketserver.ThreadingUnixStreamServer):
    """A UNIX socket that answers every request with HTTP 500: an engine that refuses events."""

    daemon_threads = True

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline().strip():
                pass  # the request line and headers
            self.wfile.write(b"HTTP/1.1 500 Internal Server Error\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 20\r\n"
                             b"Connection: close\r\n\r\n{\"message\": \"down\"}\n\n")


def test_stack_events_fall_back_to_polling_when_the_engine_refuses(tmp_path: Path) -> None:
    """An engine that refuses the event stream: wait() sleeps its timeout (polling fallback)."""
    path = tmp_path / "engine.sock"
    with _BrokenEngine(str(path), _BrokenEngine.Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = docker.DockerClient(base_url=f"unix://{path}", version="1.41")
        try:
            with StackEvents(client, STACK, max_s=10) as events:
                events.wait(5.0)  # the broken stream wakes the waiter once, to notice it
                assert not events.streaming
                started = time.monotonic()
                assert not events.wait(0.3)
                assert time.monotonic() - started >= 0.25
        finally:
            client.close()
            server.shutdown()


# --------------------------------------------------------------------------- real deploys

RECIPE = Recipe("custom-html")
BASE = Domain(TEST_BASE)
# The app serves at once, then dies 4 s later: converged and up, then gone.
SERVES_THEN_DIES = (
    "    image: ccci/custom-html:2.0\n",
    "    image: ccci/custom-html:2.0\n"
    '    entrypoint: ["/bin/sh", "-c", "httpd -p 127.0.0.1:$${CCCI_HTTP_PORT} -h /etc; '
    'sleep 4; echo dying now; exit 3"]\n',
)


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


@pytest.mark.docker
@pytest.mark.slow
def test_still_running_names_an_app_that_died_after_it_came_up(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """An app that is up at convergence and dies 4 s later passes still_running at first,
    then fails it with the service, the exit code and its last log lines."""
    head = commit_on(example_recipes / RECIPE, "2.0.0+2.0", "compose.yml",
                     replace_once(*SERVES_THEN_DIES), "serve, then die")
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    platform.deploy(domain, chaos_ref=head)
    state = platform.wait_converged(domain, 60)
    [service] = state.services
    assert len(service.tasks) == 1 and service.tasks[0].container_id
    platform.still_running(domain, state)  # up and running now
    deadline = time.monotonic() + 40
    while True:
        try:
            platform.still_running(domain, state)
        except DeployFailed as exc:
            message = str(exc)
            break
        assert time.monotonic() < deadline, "the dead task was never noticed"
        time.sleep(0.2)
    assert f"service {stack_name(domain)}_app" in message
    assert service.tasks[0].task_id[:12] in message
    assert "exit code 3" in message and "dying now" in message


@pytest.mark.docker
@pytest.mark.slow
def test_an_upgrade_stops_the_old_task_gracefully_and_returns_the_new_one(
    platform: SwarmPlatform, domain: Domain, example_recipes: Path
) -> None:
    """After an in-place upgrade the converged state names the new task; the old one got its
    stop signal (it logged its graceful stop and exited 0)."""
    platform.new_app(RECIPE, domain, kind="cold", run=None)
    before = deploy_and_serve(platform, domain)
    head = commit_on(example_recipes / RECIPE, "2.0.0+2.0", "compose.yml",
                     replace_once("GREETING:-Hello from custom-html", "GREETING:-Hello, PR"),
                     "change the greeting")
    platform.deploy(domain, chaos_ref=head)
    after = platform.wait_converged(domain, 60)
    assert after.services[0].update_state == "completed"
    assert after.services[0].tasks != before.services[0].tasks
    platform.still_running(domain, after)
    with pytest.raises(DeployFailed) as info:
        platform.still_running(domain, before)
    message = str(info.value)
    assert re.search(r"is now (complete|shutdown), exit code 0", message), message
    assert "custom-html: stopping" in message


def _stubborn(platform: SwarmPlatform, example_recipes: Path, grace: str) -> Domain:
    """A stubborn-html app that ignores SIGTERM, with a short first boot and ``grace``."""
    recipe = Recipe("stubborn-html")
    head = commit_on(example_recipes / recipe, "1.1.0+1.1", "compose.yml",
                     replace_once("stop_grace_period: 10s", f"stop_grace_period: {grace}"),
                     "shorter grace")
    domain = cold_domain(recipe, new_run_hex(), BASE)
    platform.new_app(recipe, domain, kind="cold", run=None)
    env = platform.env_path(domain)
    env.write_text(set_keys(env.read_text(), {"INIT_DELAY": "0", "IGNORE_SIGTERM": "1"}))
    platform.deploy(domain, chaos_ref=head)
    platform.wait_converged(domain, 60)
    return domain


@pytest.mark.docker
@pytest.mark.slow
def test_undeploy_waits_for_the_grace_only_when_graceful(
    platform: SwarmPlatform, example_recipes: Path
) -> None:
    """An app that ignores SIGTERM: a graceful undeploy lasts its stop grace period (4 s); a
    non-graceful one of the same app with a 300 s grace kills it at once (it takes 0.1 s on an
    idle machine; the bound is a tenth of the grace); both end with no service and no
    container left."""
    domain = _stubborn(platform, example_recipes, "4s")
    long_grace = commit_on(example_recipes / "stubborn-html", "1.1.0+1.1", "compose.yml",
                           replace_once("stop_grace_period: 10s", "stop_grace_period: 300s"),
                           "a grace no test waits for")
    label = f"{constants.STACK_NAMESPACE_LABEL}={stack_name(domain)}"
    try:
        started = time.monotonic()
        platform.undeploy(domain)
        graceful_s = time.monotonic() - started
        assert not platform.deployed(domain).is_deployed
        assert platform.client.containers.list(all=True, filters={"label": label}) == []

        platform.deploy(domain, chaos_ref=long_grace)
        platform.wait_converged(domain, 60)
        started = time.monotonic()
        platform.undeploy(domain, graceful=False)
        killed_s = time.monotonic() - started
        assert not platform.deployed(domain).is_deployed
        assert platform.client.containers.list(all=True, filters={"label": label}) == []
        assert platform.volumes(domain)  # volumes are kept either way
    finally:
        platform.remove(domain)
    assert graceful_s >= 3.5, f"graceful undeploy took {graceful_s:.1f} s, not the 4 s grace"
    print(f"\ngraceful undeploy {graceful_s:.1f} s (4 s grace), non-graceful {killed_s:.1f} s "
          "(300 s grace)")
    assert killed_s < 30.0, f"non-graceful undeploy took {killed_s:.1f} s (300 s grace)"
