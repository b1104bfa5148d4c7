"""Health probes of a deployed app (SPEC R6.4): reconverged, version moved, serving.

``reconverged`` and ``version_moved`` are pure functions of observed ``DeployedState`` values;
``serving`` does HTTP GETs (httpx) until the app answers an accepted status or time runs out.
Each check returns or raises with a message that says what was expected and what was seen.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

import httpx

from ccci_tasks.errors import InvalidInput, WaitTimeout
from ccci_tasks.platform.base import DeployedState

__all__ = ["DEFAULT_OK", "reconverged", "serving", "version_moved", "wait_serving"]

DEFAULT_OK: Final = (200, 301, 302)
NEVER_OK: Final = frozenset({404})  # a proxy's fallback answer: never "serving"
_BACKOFF_START_S: Final = 0.2
_BACKOFF_MAX_S: Final = 2.0
_REQUEST_TIMEOUT_S: Final = 5.0


def reconverged(state: DeployedState) -> tuple[bool, str]:
    """Every service at its desired replicas, its update settled, no failure since the deploy."""
    if not state.is_deployed:
        return False, f"{state.domain} is not deployed (stack {state.stack} has no services)"
    problems = []
    for svc in state.services:
        if svc.running != svc.desired:
            problems.append(f"{svc.name} runs {svc.running}/{svc.desired} replicas")
        if not svc.settled:
            problems.append(f"{svc.name} update is {svc.update_state}, not settled")
        if svc.failed_tasks:
            problems.append(
                f"{svc.name} had {svc.failed_tasks} failed/rejected task(s) since the deploy"
                + (f" (last error: {svc.last_error})" if svc.last_error else "")
            )
    if problems:
        return False, f"{state.domain} has not reconverged: " + "; ".join(problems)
    names = ", ".join(f"{s.name} {s.running}/{s.desired}" for s in state.services)
    return True, f"{state.domain} reconverged: {names}, updates settled, no failed tasks"


def version_moved(
    before: DeployedState,
    after: DeployedState,
    short_sha: str | None,
    target_version: str | None,
) -> tuple[bool, str]:
    """True when the chaos-version label is ``short_sha`` or the version changed to the target.

    Without a target, any change of the version label counts as moved. A non-move says
    "did not move" and shows both states' labels.
    """
    seen = (
        f"before: version {before.version!r}, chaos-version {before.chaos_version!r}; "
        f"after: version {after.version!r}, chaos-version {after.chaos_version!r}"
    )
    if short_sha and after.chaos_version:
        # A short sha may come in another length than the label's; compare the common prefix.
        n = min(len(short_sha), len(after.chaos_version.removesuffix("+U")))
        if n >= 7 and after.chaos_version[:n].lower() == short_sha[:n].lower():
            return True, f"moved to commit {short_sha} ({seen})"
    changed = after.version is not None and after.version != before.version
    if changed and (target_version is None or after.version == target_version):
        return True, f"moved from version {before.version!r} to {after.version!r}"
    wanted = " or ".join(
        w
        for w in (
            f"chaos-version {short_sha!r}" if short_sha else "",
            f"version {target_version!r}" if target_version else "",
        )
        if w
    ) or "a new version"
    return False, f"{after.domain} did not move: expected {wanted}; {seen}"


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"probe URL {url!r} is invalid: it must start with http:// or https://")


def serving(
    url: str,
    host: str,
    ok_codes: Iterable[int] = DEFAULT_OK,
    timeout_s: float = 300.0,
    path: str = "/",
) -> int:
    """GET ``url`` + ``path`` with ``Host: host`` until the status is in ``ok_codes``.

    Retries with backoff (connection errors and other statuses) until ``timeout_s``; 404
    never counts even when listed. Returns the accepted status; on time-out raises
    ``WaitTimeout`` naming the last status or error seen.
    """
    _check_url(url)
    if not path.startswith("/"):
        path = "/" + path
    accepted = frozenset(ok_codes) - NEVER_OK
    target = url.rstrip("/") + path
    deadline = time.monotonic() + timeout_s
    delay = _BACKOFF_START_S
    last = "no answer yet"
    attempts = 0
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                response = client.get(
                    target,
                    headers={"Host": host},
                    timeout=max(0.1, min(_REQUEST_TIMEOUT_S, remaining)),
                )
            except httpx.HTTPError as exc:
                last = f"error {type(exc).__name__}: {exc}"
            else:
                if response.status_code in accepted:
                    return response.status_code
                last = f"HTTP {response.status_code}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(
                    f"{target} (Host: {host}) to answer one of {sorted(accepted)}",
                    timeout_s,
                    f"{last} after {attempts} attempt(s)",
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _BACKOFF_MAX_S)


wait_serving = serving
