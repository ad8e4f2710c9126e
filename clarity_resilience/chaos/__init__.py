"""Fault-injection tools for testing services that use clarity-resilience.

Three kinds of chaos, each restoring what it broke:

- **file corruptors** (:mod:`~clarity_resilience.chaos.corruptors`): flip a bit,
  truncate, swap in a symlink, rewrite a file while it is being read, ...;
- **a fault proxy** (:mod:`~clarity_resilience.chaos.proxy`): a loopback TCP proxy with
  Toxiproxy's toxics (latency, bandwidth, timeout, reset_peer, slicer, limit_data);
- **load drivers** (:mod:`~clarity_resilience.chaos.load`): threads or tasks that call
  your code concurrently and record every outcome.

For example, prove that a corrupted model is refused with a typed error under load::

    from clarity_resilience.chaos import bit_flip, run_threads

    with bit_flip(model_path, seed=1):
        result = run_threads(lambda call: guard.reload(), workers=8, iterations=20)
    assert result.errors and not result.untyped_errors

The pytest fixtures live in :mod:`clarity_resilience.chaos.pytest_plugin`; enable them
with ``pytest_plugins = ["clarity_resilience.chaos.pytest_plugin"]``. This package is
never imported by ``import clarity_resilience``.
"""

from __future__ import annotations

from .corruptors import (
    CORRUPTORS,
    Corruption,
    CorruptorFactory,
    append,
    bit_flip,
    delete,
    permissions_enforced,
    random_corruption,
    remove_permissions,
    replace_by_rename,
    rewrite_while_reading,
    symlink_swap,
    truncate,
    zero_fill,
)
from .load import Call, LoadResult, Outcome, run_tasks, run_threads
from .proxy import (
    Bandwidth,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    ThreadedFaultProxy,
    Timeout,
    Toxic,
)

__all__ = [
    "Bandwidth",
    "CORRUPTORS",
    "Call",
    "Corruption",
    "CorruptorFactory",
    "FaultProxy",
    "Latency",
    "LimitData",
    "LoadResult",
    "Outcome",
    "ResetPeer",
    "Slicer",
    "ThreadedFaultProxy",
    "Timeout",
    "Toxic",
    "append",
    "bit_flip",
    "delete",
    "permissions_enforced",
    "random_corruption",
    "remove_permissions",
    "replace_by_rename",
    "rewrite_while_reading",
    "run_tasks",
    "run_threads",
    "symlink_swap",
    "truncate",
    "zero_fill",
]
