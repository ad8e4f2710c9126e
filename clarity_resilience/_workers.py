"""A small pool of daemon worker threads for calls that may never return.

``concurrent.futures.ThreadPoolExecutor`` joins its (non-daemon) workers when the
interpreter exits, so one prediction stuck for ever (a GPU deadlock, a remote call
without a timeout) would keep a serving process from exiting after SIGTERM until the
orchestrator kills it. The deadline pool runs exactly such calls, so its workers are
daemon threads: at exit, abandoned calls are dropped with the process.

Threads start on demand (importing starts none), up to ``max_workers``, and exit after
``idle_seconds`` without work.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DaemonPool"]

T = TypeVar("T")

_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None


class DaemonPool:
    """Run callables on at most ``max_workers`` daemon threads; return their futures.

    Args:
        max_workers: The most threads that run at once.
        name: Prefix of the threads' names.
        idle_seconds: A thread without work for this long exits.
    """

    def __init__(self, max_workers: int, *, name: str, idle_seconds: float = 30.0) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._name = name
        self._idle_seconds = idle_seconds
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0  # jobs put and not yet taken by a worker
        self._closed = False

    @property
    def threads(self) -> int:
        """Return how many worker threads exist now."""
        return self._threads

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn`` and return its future (cancellable until a worker takes it).

        Raises:
            RuntimeError: The pool was shut down.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._jobs.put((future, fn))
            self._queued += 1
            # A job nobody idle will take starts a thread (within the bound).
            if self._queued > self._idle and self._threads < self.max_workers:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._threads}", daemon=True
                ).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._queued:  # a job arrived as the wait ended: take it
                        continue
                    self._threads -= 1
                    return
            with self._lock:
                self._idle -= 1
                if job is not None:
                    self._queued -= 1
            if job is None:  # shut down
                with self._lock:
                    self._threads -= 1
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: never runs
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del job, future, fn  # drop references to the call's result early

    def shutdown(self) -> None:
        """Cancel queued jobs and let idle workers exit (never waits for running ones)."""
        with self._lock:
            self._closed = True
            threads = self._threads
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                with self._lock:
                    self._queued -= 1
                job[0].cancel()
        for _ in range(threads):
            self._jobs.put(None)
