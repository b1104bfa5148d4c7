"""celery beat's scheduler: RedBeat (the schedule and a lock in the broker), kept alive when
the broker loses its data.

Beat may run on several hosts. The one holding the lock (``KEY_BEAT_LOCK``, renewed every tick,
``CCCI_BEAT_LOCK_TIMEOUT_S``) fires; the others poll for it every ``CCCI_BEAT_MAX_INTERVAL_S``
and take over within the lock timeout when it dies. Each entry's last run lives in Redis
(``KEY_BEAT_PREFIX + <entry>``), so a night missed while every beat was down is caught up once
by whichever beat comes back, and a beat that takes over fires nothing the other one fired.

RedBeat alone stops for good when the broker loses its data (restarted without persistence,
FLUSHALL): renewing the lock raises, and the schedule it reads each tick is gone. Here, each
tick first holds the lock (renewed; else taken again when nobody holds it; else this beat stands
by) and installs the static schedule again when it is missing; a broker that does not answer
skips the tick instead of ending beat.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import LockError

log = logging.getLogger("celery.beat")


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat that survives a broker that lost its data or does not answer (see above)."""

    _active = True
    lock: Any = None  # RedBeat's: a redis-py Lock, set when beat starts

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        try:
            if not self._hold_lock():
                return float(self.max_interval)
            client = get_redis(self.app)
            if not client.exists(self.app.redbeat_conf.statics_key):
                log.warning("beat: the schedule is gone from the broker (restarted without "
                            "its data?); installing it again")
                self.setup_schedule()
            return float(super().tick(min=min, **kwargs))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: the broker does not answer (%s); next try in %s s", exc,
                        self.max_interval)
        except LockError as exc:  # lost between our renewal and RedBeat's own
            log.warning("beat: lost the lock %s mid-tick (%s)", self.lock_key, exc)
        return float(self.max_interval)

    def _hold_lock(self) -> bool:
        """Renew the lock; else take it when nobody holds it; False: another beat fires."""
        if self.lock is None:  # not taken at start (the broker was down then)
            client = get_redis(self.app)
            lock = client.lock(self.lock_key, timeout=self.lock_timeout,
                               sleep=self.max_interval)
            lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
            self.lock = lock
        try:
            self.lock.extend(int(self.lock_timeout))
        except LockError:
            if not self.lock.acquire(blocking=False):
                if self._active:
                    log.warning("beat: another beat holds the lock %s; standing by",
                                self.lock_key)
                self._active = False
                return False
            log.warning("beat: took the lock %s (it had expired, or the broker lost it)",
                        self.lock_key)
        self._active = True
        return True
