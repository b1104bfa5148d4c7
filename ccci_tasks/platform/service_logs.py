"""The last log lines of every service of a stack, read through the Docker engine API.

Both platforms read them here: the swarm platform owns the engine, and the abra platform
reads the server's state through Docker anyway (``abra app logs`` follows the log stream and
has no bounded tail we could rely on; see docs/decisions.md). ``GET /services/{id}/logs``
is what ``docker service logs --tail N --timestamps`` asks for.
"""

from __future__ import annotations

from typing import Any, Final, cast

import docker

from ccci_tasks import constants
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import Domain, stack_name
from ccci_tasks.platform.engine import docker_errors, parse_timestamp

MAX_TAIL_LINES: Final = 10_000


def _text(chunks: Any) -> str:
    if isinstance(chunks, bytes | str):
        chunks = [chunks]
    parts = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in chunks]
    return "".join(parts)


def _in_time_order(lines: list[str]) -> list[str]:
    keyed, last = [], 0
    for line in lines:
        last = parse_timestamp(line.split(" ", 1)[0]) or last
        keyed.append((last, line))
    return [line for _, line in sorted(keyed, key=lambda pair: pair[0])]


def stack_logs(client: docker.DockerClient, domain: Domain, tail: int) -> dict[str, str]:
    """``{service name: its last tail lines}`` of ``domain``'s stack (oldest line first,
    with the engine's timestamps); ``{}`` when nothing is deployed.

    Raises ``PlatformError`` when the engine does not answer.
    """
    if isinstance(tail, bool) or not isinstance(tail, int) or not 0 < tail <= MAX_TAIL_LINES:
        raise InvalidInput(f"log tail {tail!r} is invalid: 1 to {MAX_TAIL_LINES} lines")
    stack = stack_name(domain)
    label = f"{constants.STACK_NAMESPACE_LABEL}={stack}"
    with docker_errors(f"listing the services of stack {stack}"):
        services = cast(list[dict[str, Any]],
                        client.api.services(filters={"label": label}))
    found: dict[str, str] = {}
    for service in sorted(services, key=lambda s: str(s["Spec"]["Name"])):
        name = str(service["Spec"]["Name"])
        with docker_errors(f"reading the logs of service {name}"):
            raw = client.api.service_logs(service["ID"], stdout=True, stderr=True,
                                          timestamps=True, tail=tail)
            text = _text(raw)
        # A service's tasks are read one after the other: in time order again (stable for
        # lines without a timestamp, which keep their place after the line before).
        lines = _in_time_order(text.splitlines())
        found[name] = "\n".join(lines[-tail:])
    return found
