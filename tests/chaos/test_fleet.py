"""A fleet of real processes sharing one breaker through a real redis-server that dies.

Four member processes (``tests/support/fleet_member.py``) each build
``Breaker("shared", storage=RedisStorage(url))`` with their own client. The Redis server
is a real process on a loopback port, SIGKILLed mid-run and restarted on the same port,
as a supervisor would. Members' clocks are time-machine's, moved alike by the test.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requirements

import clarity_resilience

pytestmark = pytest.mark.chaos

SUPPORT = pathlib.Path(__file__).resolve().parent.parent / "support"
FAIL_MAX = 5
RESET = 30.0
TIMEOUT = 0.5  # RedisStorage's timeout (its default is 0.1 s; a busy CI box needs more)
# Generous bounds for a busy 2-core machine; a call blocked on a dead Redis without
# the storage's bound would take the OS connect timeout (seconds to minutes).
CALL_BOUND = 2 * TIMEOUT + 1.0
STALL_BOUND = 0.25


class RedisProcess:
    """A redis-server on a fixed loopback port that the test can SIGKILL and restart."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.binary = requirements.require_binary("redis-server")
        self.dir = tmp_path
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([self.binary, *args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # bounded: a few dozen lines, then this one
            if "ready to accept connections" in line.lower():
                return
        pytest.fail("redis-server exited before accepting connections")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class Member:
    """One fleet process, driven over its stdin."""

    def __init__(self, url: str, log: pathlib.Path) -> None:
        source = pathlib.Path(clarity_resilience.__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=str(source))
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, str(SUPPORT / "fleet_member.py"), url),
                *(str(FAIL_MAX), str(RESET), str(TIMEOUT)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"member died on {command!r}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@pytest.fixture
def redis_process(tmp_path: pathlib.Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fleet(redis_process: RedisProcess, tmp_path: pathlib.Path) -> Iterator[list[Member]]:
    url = f"redis://127.0.0.1:{redis_process.port}"
    members = [Member(url, tmp_path / f"member-{i}.log") for i in range(4)]
    try:
        yield members
    finally:
        for member in members:
            member.close()


def shift_all(fleet: list[Member], seconds: float) -> None:
    for member in fleet:
        member.ask(f"shift {seconds}")


class TestFleetBreaker:
    def test_failures_spread_over_processes_open_it_for_all_and_one_trial_runs(
        self, fleet: list[Member]
    ) -> None:
        """5 failures over 4 processes open the breaker everywhere; one trial fleet-wide."""
        for member in (*fleet, fleet[0]):
            assert member.ask("fail")["outcome"] == "failed"
        assert [m.ask("call")["outcome"] for m in fleet] == ["rejected"] * 4
        shift_all(fleet, RESET + 1)
        assert fleet[2].ask("trial_begin")["outcome"] == "admitted"
        others = [fleet[0], fleet[1], fleet[3]]
        assert [m.ask("call")["outcome"] for m in others] == ["rejected"] * 3
        assert fleet[2].ask("trial_end")["outcome"] == "ended"
        assert [m.ask("call")["outcome"] for m in fleet] == ["ok"] * 4

    def test_redis_killed_then_restarted(
        self, fleet: list[Member], redis_process: RedisProcess, tmp_path: pathlib.Path
    ) -> None:
        """Redis SIGKILLed: bounded calls, a live event loop, local breakers; back: shared."""
        assert [m.ask("call")["outcome"] for m in fleet] == ["ok"] * 4
        redis_process.kill()
        for member in fleet:
            for _ in range(FAIL_MAX):
                reply = member.ask("fail")
                assert reply["outcome"] == "failed"
                assert reply["seconds"] < CALL_BOUND
                member.ask("shift 1.1")  # past the retry interval: Redis is tried again
            rejected = member.ask("call")
            assert rejected["outcome"] == "rejected"  # the local breaker, never always-closed
            assert rejected["seconds"] < CALL_BOUND
        shift_all(fleet, RESET + 1)
        probe = fleet[0].ask("probe_loop 5")
        assert probe["outcomes"][0] == "failed"  # the local trial ran, and failed again
        assert probe["max_call"] < CALL_BOUND
        assert probe["max_stall"] < STALL_BOUND
        redis_process.start()
        shift_all(fleet, 1.1)
        # The failures counted while Redis was away reach it: the fleet's breaker opens.
        assert {m.ask("state")["state"] for m in fleet} == {"open"}
        late = Member(f"redis://127.0.0.1:{redis_process.port}", tmp_path / "late.log")
        try:
            late.ask(f"shift {(RESET + 1) + 1.1 * (FAIL_MAX + 1)}")  # the fleet's clock
            assert late.ask("state")["state"] == "open"
        finally:
            late.close()
