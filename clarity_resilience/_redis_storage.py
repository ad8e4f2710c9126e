"""A breaker state shared by every process and replica, in Redis (``cr.RedisStorage``).

This module is light on purpose: it is re-exported by the package root, so it imports
neither redis nor pybreaker until a storage is built. The engine (the Lua script, the
lease, the local fallback) is in ``_redis_mirror.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import redis

    from ._breaker_storage import StorageReport
    from ._redis_mirror import RedisMirror

__all__ = ["RedisStorage"]

#: The most a process's cached view of the shared state may lag behind Redis.
MAX_STALENESS_LIMIT = 1.0


class RedisStorage:
    """Share a breaker's state, failure count, opening time and trial through Redis.

    Pass it as ``Breaker(name, storage=RedisStorage(...))``. Every process (and
    replica) using the same Redis, ``namespace`` and breaker name shares one breaker:
    failures anywhere count towards ``fail_max`` (counted and opened atomically, in one
    Lua script), an opening is seen everywhere within ``max_staleness`` seconds, and
    exactly one trial runs fleet-wide while half-open (a lease, ``SET NX PX``, lasting
    the reset timeout, released with the trial's outcome or expired if its process
    dies).

    Redis is never called under a lock nor on an event loop (a worker thread does it,
    and callers wait at most ``timeout``). When Redis cannot be reached, each process
    goes on with a local breaker of the same thresholds, from the state last read (never
    "always closed"): ``BreakerStorageFailed`` is emitted and
    ``circuit_breaker_storage_failures_total`` counted, at most once a second per
    breaker and process, and the shared state is resumed when Redis answers again.

    Args:
        url_or_client: A ``redis://`` / ``unix://`` URL (a client is built with
            ``socket_timeout`` and ``socket_connect_timeout`` set to ``timeout`` and no
            retries), or a ``redis.Redis`` client, used as given: configure its
            timeouts yourself (callers still wait at most ``timeout``; a client without
            a socket timeout can keep the worker thread blocked).
        namespace: Prefix of the Redis keys (``<namespace>:{<breaker>}``).
        timeout: Seconds a call waits for one exchange with Redis.
        max_staleness: Seconds a process may serve the state it last read before
            reading it again (0 reads it on every call; at most 1).
        clock: The monotonic clock measuring that staleness (for tests).

    Raises:
        ValueError: A bad timeout, staleness or namespace.
        TypeError: ``url_or_client`` is neither a string nor a ``redis.Redis``.
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        namespace: str = "clarity-breaker",
        timeout: float = 0.1,
        max_staleness: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not _is_seconds(timeout) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not _is_seconds(max_staleness) or not 0 <= max_staleness <= MAX_STALENESS_LIMIT:
            raise ValueError(f"max_staleness must be between 0 and 1 s, got {max_staleness!r}")
        if not namespace or not isinstance(namespace, str):
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        client: redis.Redis
        if isinstance(url_or_client, str):
            # No retries: a failed exchange is retried by the next call, a second later.
            client = redis.Redis.from_url(
                url_or_client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        elif isinstance(url_or_client, redis.Redis):
            client = url_or_client
        else:
            raise TypeError(
                f"url_or_client must be a URL or a redis.Redis client, got {url_or_client!r}"
            )
        self.client = client
        self.namespace = namespace
        self.timeout = float(timeout)
        self.max_staleness = float(max_staleness)
        self.clock = clock
        self._script: Any = None

    def __repr__(self) -> str:
        return f"<RedisStorage namespace={self.namespace!r} timeout={self.timeout:g}>"

    def attach(
        self,
        *,
        name: str,
        fail_max: int,
        reset_timeout: float,
        retry_interval: float,
        report: StorageReport,
    ) -> RedisMirror:
        """Return the local mirror one breaker runs on (called by ``Breaker``)."""
        from ._redis_mirror import SCRIPT, RedisMirror

        if self._script is None:
            self._script = self.client.register_script(SCRIPT)
        return RedisMirror(
            self.client,
            self._script,
            key=f"{self.namespace}:{{{name}}}",
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            max_staleness=self.max_staleness,
            name=name,
            timeout=self.timeout,
            retry_interval=retry_interval,
            report=report,
            clock=self.clock,
        )


def _is_seconds(value: object) -> TypeGuard[float]:
    """Return whether ``value`` is a finite real number of seconds (bools are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
