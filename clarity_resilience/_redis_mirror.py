"""The engine of :class:`~clarity_resilience.RedisStorage`: one Lua script per exchange.

The breaker's pybreaker state machine runs on a local mirror (see ``_breaker_storage``);
the mirror's queued writes are translated into *intentions* and applied by one Lua
script, atomically, with the rules that make a fleet agree:

* ``f`` (a failure) counts only while the shared state is closed, and opens it when the
  shared count reaches ``fail_max`` (so failures spread over processes add up);
* ``s`` (a success while closed) resets the shared count;
* ``o:<t>`` (this process's breaker opened at ``t``) opens a closed breaker, or reopens
  it for a fresh timeout only from the holder of the trial lease (a failed trial);
  anyone else's opening of an open breaker is already counted;
* ``c`` (closed) applies only from the lease holder (a trial that succeeded);
* half-open is never written: it is a local consequence of "open and timed out";
* ``C`` and ``O:<t>`` (an operator's reset and forced opening, :meth:`RedisMirror.force`)
  apply unconditionally and drop any trial lease.

In the same script, a caller about to make a call while the shared breaker is open and
timed out takes the trial lease (``SET NX PX`` with the reset timeout as its lifetime)
if nobody holds it. The script returns the state, count, opening time and whether this
process holds the lease.
"""

from __future__ import annotations

import collections
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pybreaker

from ._breaker_storage import SharedStorage, StorageReport, _Op, _Snapshot

if TYPE_CHECKING:
    import redis

__all__ = ["SCRIPT", "RedisMirror"]

SCRIPT = """
local key, lease = KEYS[1], KEYS[2]
local token, fail_max = ARGV[1], tonumber(ARGV[2])
local reset_ms, now, trial = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local state = redis.call('HGET', key, 'state') or 'closed'
local holder = redis.call('GET', lease) == token
for i = 6, #ARGV do
  local op = ARGV[i]
  if op == 'f' then
    if state == 'closed' then
      if redis.call('HINCRBY', key, 'counter', 1) >= fail_max then
        state = 'open'
        redis.call('HSET', key, 'state', 'open', 'opened_at', ARGV[4])
      end
    end
  elseif op == 's' then
    if state == 'closed' then redis.call('HSET', key, 'counter', 0) end
  elseif op == 'c' then
    if holder then
      state = 'closed'
      redis.call('HSET', key, 'state', 'closed', 'counter', 0)
      redis.call('DEL', lease)
      holder = false
    end
  elseif op == 'C' then
    state = 'closed'
    redis.call('HSET', key, 'state', 'closed', 'counter', 0)
    redis.call('DEL', lease)
    holder = false
  elseif string.sub(op, 1, 2) == 'O:' then
    state = 'open'
    redis.call('HSET', key, 'state', 'open', 'opened_at', string.sub(op, 3))
    redis.call('DEL', lease)
    holder = false
  elseif string.sub(op, 1, 2) == 'o:' then
    if state == 'closed' or holder then
      state = 'open'
      redis.call('HSET', key, 'state', 'open', 'opened_at', string.sub(op, 3))
      if holder then
        redis.call('DEL', lease)
        holder = false
      end
    end
  end
end
if trial == '1' and state ~= 'closed' and not holder then
  local opened = tonumber(redis.call('HGET', key, 'opened_at') or '0') or 0
  if now * 1000 >= opened * 1000 + reset_ms then
    holder = redis.call('SET', lease, token, 'NX', 'PX', reset_ms) ~= false
  end
end
local h = redis.call('HMGET', key, 'state', 'counter', 'opened_at')
return {h[1] or 'closed', h[2] or '0', h[3] or '', holder and 1 or 0}
"""


def _intentions(ops: tuple[_Op, ...]) -> list[str]:
    """Translate pybreaker's storage writes into the script's operations."""
    out: list[str] = []
    for name, value in ops:
        if name == "increment_counter":
            out.append("f")
        elif name == "reset_counter":
            out.append("s")
        elif name == "opened_at" and isinstance(value, datetime):
            out.append(f"o:{value.timestamp():.6f}")
        elif name == "state" and value == "closed":
            out.append("c")
        elif name == "force" and value == "closed":
            out.append("C")
        elif name == "force" and isinstance(value, datetime):
            out.append(f"O:{value.timestamp():.6f}")
        # "state=open" comes with its opened_at; half-open and the success counter
        # stay local.
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisMirror(SharedStorage):
    """A breaker's local mirror, exchanged with Redis by one Lua script per sync.

    Args:
        client: The redis-py client.
        script: ``client.register_script(SCRIPT)``.
        key: The breaker's hash key; the lease is ``<key>:trial``.
        fail_max: Shared failures that open the breaker.
        reset_timeout: Seconds open before a trial; the lease's lifetime.
        max_staleness: Seconds the last read state is served without a new read.
        name, timeout, retry_interval, report: As for :class:`SharedStorage`.
        clock: Monotonic clock for the staleness bound (injectable for tests).
    """

    def __init__(
        self,
        client: redis.Redis,
        script: Any,
        *,
        key: str,
        fail_max: int,
        reset_timeout: float,
        max_staleness: float,
        name: str,
        timeout: float,
        retry_interval: float,
        report: StorageReport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The base class's remote storage is never called: _exchange is replaced.
        super().__init__(
            pybreaker.CircuitMemoryStorage("closed"),
            name=name,
            timeout=timeout,
            retry_interval=retry_interval,
            report=report,
        )
        self.client = client
        self._script = script
        self._keys = [key, f"{key}:trial"]
        self._fail_max = str(fail_max)
        self._reset_ms = str(max(1, round(reset_timeout * 1000)))
        self.max_staleness = max_staleness
        self._clock = clock
        self._read_at = float("-inf")
        self._pid = -1
        self._token = ""
        # Written by the worker (a bool: atomic), read lock-free by admission.
        self._lease = False
        self._available = True

    @property
    def token(self) -> str:
        """Return this process's lease token (a new one after a fork)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._token = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex}"
        return self._token

    @property
    def holds_lease(self) -> bool:
        """Return whether this process held the fleet's trial lease at its last read."""
        return self._lease

    def may_trial(self) -> bool:
        """Return whether this process may run the half-open trial.

        Only the lease holder may, while Redis answers; without Redis each process
        is a local breaker and runs its own trials.
        """
        return self._lease or not self._available

    def force(self, state: str, at: datetime | None = None) -> None:
        """Queue an unconditional ``"closed"`` or ``"open"`` for the whole fleet.

        For an operator's reset or forced opening: unlike the breaker's own writes, it
        applies whoever holds the trial lease (and drops the lease). Sent by the next
        exchange.

        Args:
            state: ``"closed"`` or ``"open"``.
            at: The opening time for ``"open"`` (default: now).

        Raises:
            ValueError: Any other state.
        """
        if state == "closed":
            op: _Op = ("force", "closed")
        elif state == "open":
            op = ("force", at if at is not None else datetime.now(UTC))
        else:
            raise ValueError(f"state must be 'closed' or 'open', got {state!r}")
        with self._lock:
            self._pending.append(op)

    def _after_fork(self) -> None:
        super()._after_fork()
        self._read_at = float("-inf")  # read the shared state at the child's first call
        self._lease = False  # the parent's lease, under the parent's token

    def _fresh(self) -> bool:
        return not self._pending and self._clock() - self._read_at < self.max_staleness

    def _exchange(self, ops: tuple[_Op, ...], trial: bool = True) -> _Snapshot:
        args = [self.token, self._fail_max, self._reset_ms, f"{time.time():.6f}"]
        args.append("1" if trial else "0")
        args.extend(_intentions(ops))
        try:
            reply = self._script(keys=self._keys, args=args, client=self.client)
        except BaseException:
            # Kept for the next exchange (bounded, oldest dropped): failures counted
            # while Redis was away reach the fleet when it returns. (A reply lost after
            # the script ran can count them twice: an earlier opening, never a missed one.)
            with self._lock:
                self._pending = collections.deque(
                    (*ops, *self._pending), maxlen=self._pending.maxlen
                )
            raise
        state, counter, opened_at, holder = reply
        self._lease = bool(int(holder))
        self._available = True
        opened_text = _text(opened_at)
        opened = datetime.fromtimestamp(float(opened_text), UTC) if opened_text else None
        return _text(state), int(_text(counter)), opened

    def _accept(self, snapshot: _Snapshot) -> None:
        super()._accept(snapshot)
        self._read_at = self._clock()

    def _failed(self, problem: str, error_type: str, detail: str) -> None:
        self._available = False
        self._lease = False
        super()._failed(problem, error_type, detail)
