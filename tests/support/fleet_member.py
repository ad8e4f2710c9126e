"""One process of a fleet sharing a breaker through Redis, driven line by line over stdin.

Run as ``python fleet_member.py <redis-url> <fail_max> <reset_timeout> <timeout>``. Each
command line gets one JSON reply line. The process's clock is time-machine's, frozen at
a fixed instant and moved by ``shift`` (the test moves every member's clock alike), so
no test waits for a breaker's timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from typing import Any

import time_machine
from prometheus_client import CollectorRegistry

from clarity_resilience import Breaker, CircuitOpenError, RedisStorage
from clarity_resilience._breaker_guard import BreakerGuard
from clarity_resilience._redis_mirror import SCRIPT

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("upstream failed")


def ok() -> str:
    return "ok"


def attempt(breaker: Breaker, fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn_result = breaker.call(fn)
    except Boom:
        outcome = "failed"
    except CircuitOpenError:
        outcome = "rejected"
    else:
        outcome = str(fn_result)
    return {"outcome": outcome, "seconds": time.perf_counter() - started}


async def probe_loop(breaker: Breaker, calls: int) -> dict[str, Any]:
    """Make ``calls`` call_async while a ticker measures the event loop's longest stall."""
    stalls: list[float] = []
    durations: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.002)  # sleep-ok: a heartbeat measuring event-loop stalls
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    async def fail_async() -> None:
        raise Boom("upstream failed")

    task = asyncio.create_task(ticker())
    outcomes: list[str] = []
    for _ in range(calls):
        started = time.perf_counter()
        try:
            await breaker.call_async(fail_async)
        except Boom:
            outcomes.append("failed")
        except CircuitOpenError:
            outcomes.append("rejected")
        durations.append(time.perf_counter() - started)
        await asyncio.sleep(0.01)  # sleep-ok: a heartbeat measuring event-loop stalls
    done.set()
    await task
    return {"outcomes": outcomes, "max_stall": max(stalls), "max_call": max(durations)}


def main() -> None:
    url, fail_max, reset_timeout, timeout = sys.argv[1:5]
    with time_machine.travel(T0, tick=False) as clock:
        storage = RedisStorage(url, namespace="fleet", timeout=float(timeout), max_staleness=0)
        # Connect and load the script before the breaker's first exchange, so a slow
        # process start is not mistaken for a Redis outage (the clock is frozen: the
        # storage would then be left alone until the test moves it).
        storage.client.ping()
        storage.client.script_load(SCRIPT)
        breaker = Breaker(
            "shared",
            fail_max=int(fail_max),
            reset_timeout=float(reset_timeout),
            storage=storage,
            registry=CollectorRegistry(),
        )
        guard: BreakerGuard | None = None
        for line in sys.stdin:
            command, *args = line.split()
            reply: dict[str, Any]
            if command == "fail":
                reply = attempt(breaker, boom)
            elif command == "call":
                reply = attempt(breaker, ok)
            elif command == "state":
                reply = {"state": breaker.state}
            elif command == "shift":
                clock.shift(float(args[0]))
                reply = {"shifted": float(args[0])}
            elif command == "trial_begin":
                guard = breaker.guard()
                try:
                    guard.__enter__()
                except CircuitOpenError:
                    guard = None
                    reply = {"outcome": "rejected"}
                else:
                    reply = {"outcome": "admitted"}
            elif command == "trial_end":
                assert guard is not None
                guard.__exit__(None, None, None)
                guard = None
                reply = {"outcome": "ended"}
            elif command == "probe_loop":
                reply = asyncio.run(probe_loop(breaker, int(args[0])))
            else:
                reply = {"error": f"unknown command {command!r}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
