"""The heartbeat of a running step: its lease renewed from a daemon thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ccci_tasks.admission.slots import Slots
from ccci_tasks.errors import InvalidInput
from ccci_tasks.naming import RunId

log = logging.getLogger(__name__)


@contextmanager
def keep_alive(
    slots: Slots, run_id: RunId, token: int, interval_s: float | None = None,
    on_lost: Callable[[], None] | None = None,
) -> Iterator[threading.Event]:
    """Renew the run's lease from a daemon thread every ``interval_s`` (default ttl/3)
    while the block runs. Yields an event that is set once the lease is lost (then the
    thread stops renewing and calls ``on_lost``)."""
    ttl_s = slots.ttl_s
    interval = ttl_s / 3 if interval_s is None else interval_s
    if isinstance(interval, bool) or not isinstance(interval, int | float) \
            or not 0 < interval < ttl_s:
        raise InvalidInput(
            f"keep_alive interval_s {interval_s!r} is invalid: it must be > 0 and below "
            f"the lease ttl ({ttl_s:g} s), or the lease expires between renewals"
        )
    stop, lost = threading.Event(), threading.Event()

    def renew_loop() -> None:
        while not stop.wait(interval):
            try:
                if not slots.renew(run_id, token):
                    log.warning("run %s: lease lost (expired, released or flushed); "
                                "keep_alive stops renewing", run_id)
                    lost.set()
                    if on_lost is not None:
                        on_lost()
                    return
            except Exception as exc:  # keep trying: the lease may still be alive
                log.warning("run %s: lease renewal failed: %s", run_id, exc)

    thread = threading.Thread(target=renew_loop, name=f"ccci-lease-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=max(5.0, interval))
