"""Rate limits of the patient web chat: moving windows counted by the `limits` library.

The counts live in this process by default (`memory://`), which is exact for `clinicbot serve`: it
has one web process. App replicas behind a load balancer (`docker compose up --scale app=3`) share
one Redis instead (`CLINICBOT_RATE_LIMIT_STORAGE_URL=redis://…`), so a visitor's limit holds
whichever replica answers; counted per process, three replicas would let a flood through at three
times the rate.

When that Redis cannot be reached a request is let through, and a warning (at most one a minute)
says so: a cache outage must never lock patients out of their clinic's chat. The limits that guard
personal information do not depend on it: verification codes per phone and per session, and wrong
attempts per code, are counted in the database (bot.channels.verification).

Cost in memory: the library sweeps every key for expired hits each 10 ms while hits arrive, about
4 µs a key a second. Measured at 150 hits/s: 2.2% of a core with no other keys, 4.6% with 500 keys
counted in the last minute, 23% with 5,000. A clinic's chat has tens of visitors a minute. A
distributed flood of thousands of addresses belongs at the proxy, or in Redis, where nothing is swept
in-process.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

# A limiter answers every web chat request: a Redis that stops answering must cost a request at most
# this long (connecting, or waiting for a reply), not redis-py's default of waiting forever.
REDIS_TIMEOUT_SECONDS = 0.25
WARN_EVERY_SECONDS = 60.0
KEY_PREFIX = "clinicbot-ratelimit"


class RateLimiter:
    """Allow `per_minute` hits per scope and key in any 60 seconds; refused hits do not count.

    `storage_url` is a checked setting (CLINICBOT_RATE_LIMIT_STORAGE_URL): memory:// or a Redis URL.
    """

    def __init__(self, *, per_minute: int, storage_url: str = "memory://") -> None:
        self.item = RateLimitItemPerMinute(per_minute)
        self.local = storage_url.startswith("memory://")
        if self.local:
            self.storage = MemoryStorage()
        else:
            self.storage = storage_from_string(
                storage_url, wrap_exceptions=True, key_prefix=KEY_PREFIX,
                socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )  # fmt: skip
        self.strategy = MovingWindowRateLimiter(self.storage)
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def hit(self, scope: str, key: str, *, per_minute: int | None = None) -> int | None:
        """Count one hit; return None if it is allowed, else the whole seconds until one would be.

        `per_minute` overrides the limit for this scope (a scope must always be counted with the same one).
        """
        item = self.item if per_minute is None else RateLimitItemPerMinute(per_minute)
        try:
            if self.strategy.hit(item, scope, key):
                return None
            reset_at = self.strategy.get_window_stats(item, scope, key).reset_time
        except StorageError as error:
            self._storage_failed(error)
            return None
        return max(1, math.ceil(reset_at - time.time()))

    async def check(self, scope: str, key: str, *, per_minute: int | None = None) -> int | None:
        """`hit` from a request handler: a shared store's round trip runs off the event loop."""
        if self.local:
            return self.hit(scope, key, per_minute=per_minute)
        return await run_in_threadpool(self.hit, scope, key, per_minute=per_minute)

    def _storage_failed(self, error: StorageError) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_SECONDS:
                return
            self._warned_at = now
        # The storage error's text may carry the Redis URL; its class and the cause's class are enough.
        log.warning("web chat rate limit storage unreachable (%s): requests are let through",
                    type(error.storage_error).__name__)
